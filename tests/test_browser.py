"""What a user sees: headless Chromium against a real `mlflow ui` on a loopback port, over the smoke grid run as
`mlflow run . -e experiment -P name=smoke` (the MLproject entry point: one parent, the cells nested under it).

The Model-training URL the README gives lists the experiment's parent run; the parent's report figure shows
in the Artifacts tab (a screenshot with the figure's line colours in it); a cell's run page shows its logged
model. Skipped without a `chromium` binary unless EDITHARM_REQUIRE_BROWSER=1 (CI sets it and installs one).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from editharm import tracking
from tests.conftest import client

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browse(url: str, *flags: str, budget: int = 20000) -> str:
    """Chromium's output for `url` after `budget` ms of virtual time (the metric charts need about a minute)."""
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                           f"--virtual-time-budget={budget}", *flags, url], capture_output=True, text=True, timeout=180)
    return proc.stdout


@pytest.fixture
def ui(env, tracking, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("EDITHARM_REQUIRE_BROWSER") == "1":
            pytest.fail("EDITHARM_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH")
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    parent = _smoke_grid_through_mlflow_run(mlflow_bin, tmp_path)
    port = _free_port()
    server = subprocess.Popen([str(mlflow_bin), "ui", "--backend-store-uri", tracking, "--host", "127.0.0.1",
                               "--port", str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow ui did not answer /health within 180 s")
        yield base, parent
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _smoke_grid_through_mlflow_run(mlflow_bin: Path, cwd: Path) -> str:
    """`mlflow run . -e experiment -P name=smoke`: the project's run is the grid's parent, every cell nested under
    it, all FINISHED, the report in the parent; returns the parent's id."""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([str(mlflow_bin), "run", str(repo), "-e", "experiment", "-P", "name=smoke", "--env-manager",
                           "local"], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": f"{mlflow_bin.parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = client()
    found = c.search_runs([e.experiment_id for e in c.search_experiments()])
    (parent,) = [r for r in found if r.data.tags.get("kind") == "experiment"]
    cells = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(found) == 3 and sorted(r.info.run_name for r in cells) == ["ft·smoke", "rome·smoke"]
    assert parent.data.tags["mlflow.source.type"] == "PROJECT" and parent.info.status == "FINISHED"
    assert all(r.info.status == "FINISHED" for r in cells)
    return parent.info.run_id


def _coloured(png: Path, rgb: tuple[int, int, int], tol: int = 40) -> int:
    """Pixels of the screenshot within `tol` of `rgb` (matplotlib's C0/C1 line colours)."""
    from matplotlib.image import imread

    img = (imread(str(png))[..., :3] * 255).astype(int)
    return int((abs(img - rgb).max(-1) <= tol).sum())


@pytest.mark.slow
def test_the_ui_shows_the_grid_its_report_figure_and_the_logged_model(ui, tmp_path):
    base, parent_id = ui
    c = client()
    parent = c.get_run(parent_id)
    experiment = parent.info.experiment_id
    page, listing = tracking.ui_urls(base, experiment, parent_id)
    assert listing == f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning"  # the README's URL
    listed = _browse(listing, "--dump-dom")
    assert parent.info.run_name in listed and "Evaluation runs" not in listed  # the model-training view, not GenAI

    figure = f"{base}/#/experiments/{experiment}/runs/{parent_id}/artifacts/report/abilities.png"
    assert 'alt="report/abilities.png"' in _browse(figure, "--dump-dom")
    shots = {}
    for name in ("abilities.png", "lines.json"):  # the figure, and a page of the same view without one
        shots[name] = tmp_path / f"{name}.png"
        _browse(figure.replace("abilities.png", name), f"--screenshot={shots[name]}")
    lines = {n: _coloured(p, (31, 119, 180)) + _coloured(p, (255, 127, 14)) for n, p in shots.items()}
    assert lines["abilities.png"] > lines["lines.json"] + 150, f"no figure lines in the screenshot: {lines}, {shots}"

    (cell,) = c.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.cell = 'ft·smoke'")
    model_id = cell.data.tags["model_uri"].removeprefix("models:/")
    dom = _browse(f"{base}/#/experiments/{experiment}/runs/{cell.info.run_id}?workflowType=machine_learning",
                  "--dump-dom")
    assert "Logged models" in dom and model_id in dom

    # the run's charts: four per task (headline score, gold log-probability, their paired differences), and they
    # render: the charts' line blue in a screenshot, against the same view's empty System-metrics tab
    run_page = f"{base}/#/experiments/{experiment}/runs/{cell.info.run_id}"
    charts = _browse(f"{run_page}/model-metrics?workflowType=machine_learning", "--dump-dom", budget=60000)
    import re

    groups = dict(re.findall(r">(ability/[a-z0-9_]+)</div>(?:<div[^>]*>)?\((\d+)\)<", charts))
    assert groups == {"ability/sst2": "4", "ability/samsum": "4"}, groups
    # Chromium's virtual-time budget does not wait for the chart bundle over a slow loopback (a loaded machine shows
    # spinners), so the screenshot is retaken, with one browser profile whose cache keeps what the last try fetched
    profile = f"--user-data-dir={tmp_path / 'chromium-profile'}"
    blue = {}
    for tab in ("system-metrics", "model-metrics"):
        shots[tab] = tmp_path / f"{tab}.png"
        for _ in range(4):
            _browse(f"{run_page}/{tab}?workflowType=machine_learning", f"--screenshot={shots[tab]}", profile,
                    budget=60000)
            blue[tab] = _coloured(shots[tab], (33, 114, 180), tol=20)
            if tab == "system-metrics" or blue[tab] > blue["system-metrics"] + 500:
                break
    assert blue["model-metrics"] > blue["system-metrics"] + 500, f"the charts did not render: {blue}, {shots}"
