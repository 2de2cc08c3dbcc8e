"""`mlflow run` on the MLproject itself: exactly one run, and it finishes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_readmes_mlflow_run_creates_exactly_one_finished_run(env, tracking, tmp_path):
    """The README's `mlflow run` command as written, with a guard and the test data's small tasks added."""
    import re
    import shlex

    mlflow_bin = Path(sys.executable).with_name("mlflow")
    (line,) = [x for x in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)[0:99]
               for x in x.splitlines() if x.startswith("mlflow run .")]
    cmd = [str(mlflow_bin), *[str(REPO) if a == "." else a for a in shlex.split(line)[1:]], "-P", "guard=rect"]
    at = cmd.index(next(a for a in cmd if a.startswith("overrides=")))
    cmd[at] += " edits.n=2 edits.eval_every=1 probe.n_tokens=512 probe.chunk_tokens=128"
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": f"{mlflow_bin.parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    from tests.conftest import client as store

    client = store()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.source.type"] == "PROJECT"
    assert run.data.params["edits.n"] == "2" and run.data.tags["model"] == "tiny-llama"
    assert run.data.tags["guard"] == "rect" and run.data.params["guard.k"] == "0.4"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "edit/zsre/efficacy_token_acc")] == [0, 1, 2]


def _mlflow_run(tmp_path, *args):
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.run([str(mlflow_bin), "run", str(REPO), *args, "--env-manager", "local"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": f"{mlflow_bin.parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    from tests.conftest import client as store

    client = store()
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
def test_train_mend_entry_point_creates_exactly_one_run_with_the_network(env, tracking, tmp_path):
    client, runs = _mlflow_run(tmp_path, "-e", "train_mend", "-P", "model=tiny-llama",
                               "-P", "overrides=method.train.max_iters=4 method.train.val_every=2")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "train-mend"
    assert {"mend/mend.json", "mend/mend.safetensors"} <= {a.path for a in client.list_artifacts(run.info.run_id, "mend")}


@pytest.mark.slow
def test_mend_on_a_fresh_store_trains_first_then_edits(env, tracking, tmp_path):
    client, runs = _mlflow_run(tmp_path, "-P", "method=mend", "-P", "model=tiny-llama", "-P",
                               "overrides=edits.n=2 tasks.names=[] probe.perplexity=false method.train.max_iters=4 "
                               "method.train.val_every=2")
    (edit,) = [r for r in runs if r.data.tags.get("kind") == "edit"]
    (trained,) = [r for r in runs if r.data.tags.get("kind") == "train-mend"]
    assert len(runs) == 2 and trained.data.tags["mlflow.parentRunId"] == edit.info.run_id
    assert edit.info.status == trained.info.status == "FINISHED"
    assert edit.data.tags["mend.hypernetwork"] == f"runs:/{trained.info.run_id}/mend"

