"""A team tracking server: scripts/server.sh starts PostgreSQL + `mlflow server` on loopback ports; four edit
runs log to it at once; checkpoints, `runs:/` URIs and reports work through it; `stop` leaves nothing."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "server.sh"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _have_postgres() -> bool:
    return shutil.which("pg_config") is not None or any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@pytest.fixture
def server():
    """`(uri, dir)` of a running server; stopped (and checked stopped) afterwards."""
    if not _have_postgres() and not os.environ.get("EDITHARM_REQUIRE_SERVER"):
        pytest.skip("PostgreSQL is not installed (CI installs it; EDITHARM_REQUIRE_SERVER=1 makes this a failure)")
    root = Path(tempfile.mkdtemp(prefix="editharm-server-", dir="/tmp"))
    root.chmod(0o755)  # as root the cluster runs as `postgres`, which must reach it
    port, pg_port = _free_port(), _free_port()
    started = subprocess.run(["bash", str(SCRIPT), "start", str(root), "--port", str(port), "--pg-port", str(pg_port),
                              "--workers", "1"],
                             capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in started.stdout
        yield f"http://127.0.0.1:{port}", root, (port, pg_port)
    finally:
        group = _pid(root / "run" / "mlflow.pid")  # mlflow's process group: its uvicorn workers too
        postmaster = _pid(root / "pg" / "postmaster.pid")
        stopped = subprocess.run(["bash", str(SCRIPT), "stop", str(root)], capture_output=True, text=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not _listening(port) and not _listening(pg_port)
    left = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout.split()
    if group:
        left += subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout.split()
    if postmaster:
        left += subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes left behind: {left}"


def _pid(path: Path) -> int | None:
    """The pid on a pid file's first line (mlflow's, or PostgreSQL's postmaster.pid), if the file is there."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def test_four_concurrent_runs_checkpoints_and_reports_through_the_server(server, data_dir, tmp_path):
    uri, root, _ = server
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "EDITHARM_DATA_DIR": str(data_dir),
           "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    args = [*TINY, "tasks.names=[sst2]", "edits.n=4", "edits.eval_every=2", "tracking.log_model=false",
            "tracking.log_report=false"]
    procs = [subprocess.Popen([sys.executable, "-m", "editharm", "edit", *args, f"seed={i}",
                               f"tracking.run_name=concurrent-{i}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-2000:] for o in outs)

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.run_name for r in runs) == [f"concurrent-{i}" for i in range(4)]
    for r in runs:
        assert r.info.status == "FINISHED"
        for key in ("edit/zsre/efficacy_token_acc", "ability/sst2/accuracy", "probe/perplexity"):
            assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [0, 2, 4], key
        assert [m.step for m in client.get_metric_history(r.info.run_id, "time/edit_s")] == [1, 2, 3, 4]
    assert not list(Path(tmp_path).glob("mlruns")) and not list(Path(tmp_path).glob("*.db"))  # all on the server
    assert any((root / "artifacts").rglob("config.json"))  # served artifacts land in the server's store

    run_id = runs[0].info.run_id  # what `editharm checkpoint|report` and `checkpoint=runs:/` call, in this process
    from transformers import AutoModelForCausalLM

    from editharm import runs as commands
    from editharm import tracking

    model = AutoModelForCausalLM.from_pretrained(commands.checkpoint(run_id, str(tmp_path / "ckpt"), uri))
    assert sum(p.numel() for p in model.parameters()) > 0
    got = tracking.resolve_checkpoint(f"runs:/{run_id}", tmp_path / "cache", uri)  # what `checkpoint=runs:/` calls
    assert got == tmp_path / "cache" / "checkpoints" / run_id and (got / "config.json").exists()
    holder = commands.report([run_id], uri)
    assert "report/abilities.png" in [a.path for a in client.list_artifacts(holder, "report")]


def test_bad_input_is_one_clear_error(tmp_path):
    got = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True)
    assert got.returncode == 2 and got.stderr.startswith("server.sh: error: usage:")
    got = subprocess.run(["bash", str(SCRIPT), "start", str(tmp_path), "--port", "http"], capture_output=True, text=True)
    assert got.returncode == 2 and "not a port: http" in got.stderr
    with socket.socket() as s:  # a port already taken
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        got = subprocess.run(["bash", str(SCRIPT), "start", str(tmp_path), "--port", str(taken)],
                             capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and f"port {taken} is in use" in got.stderr
    assert not (tmp_path / "pg").exists()
