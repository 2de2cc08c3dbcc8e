"""Launchers: the smoke grid gives the same child metrics in this process, in two local worker processes and as
Ray tasks on a local instance; bad launcher options fail before any run is created."""
import importlib.util
import os

import mlflow
import pytest

from editharm import experiments, launchers, runs
from editharm.errors import ConfigError

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY and not os.environ.get("EDITHARM_REQUIRE_RAY"),
                               reason="ray is not installed (pip install 'editharm[ray]'); EDITHARM_REQUIRE_RAY unset")


def grid_metrics(root, data_dir, argv: list[str]) -> tuple[dict, mlflow.entities.Run]:
    """Run the smoke grid with `argv` in a private store under `root`, without its report (launcher-independent,
    tests/test_experiments.py); `({cell: {metric: [(step, value)]}}, parent)`, less the `time/` metrics."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("EDITHARM_DATA_DIR", str(data_dir))
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        parent_id = experiments.run("smoke", argv, edit=runs.edit, setup=lambda cell: runs._setup(cell, edits=True)[0])
    c = mlflow.MlflowClient(uri)
    parent = c.get_run(parent_id)
    out = {}
    for r in c.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"):
        assert r.info.status == "FINISHED", r.data.tags.get("error")
        out[r.data.tags["cell"]] = {k: sorted((m.step, m.value) for m in c.get_metric_history(r.info.run_id, k))
                                    for k in r.data.metrics if not k.startswith("time/")}
    return out, parent


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, data_dir):
    return grid_metrics(tmp_path_factory.mktemp("in_process"), data_dir, [])[0]


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want) == ["ft·smoke", "rome·smoke"]
    for cell in want:
        assert sorted(got[cell]) == sorted(want[cell]), cell
        for key, history in want[cell].items():
            assert [s for s, _ in got[cell][key]] == [s for s, _ in history], (cell, key)
            values = [v for _, v in history]
            assert [v for _, v in got[cell][key]] == pytest.approx(values, rel=1e-6, abs=1e-6), (cell, key)


@pytest.mark.slow
def test_local_workers_match_in_process(in_process, tmp_path, data_dir):
    got, parent = grid_metrics(tmp_path, data_dir, ["experiment.workers=2"])
    assert_same(got, in_process)
    assert parent.data.params["experiment.launcher"] == "local" and parent.data.params["experiment.workers"] == "2"
    assert parent.data.params["experiment.overrides"] == ""  # launcher options are not cell overrides


@pytest.mark.slow
@needs_ray
def test_ray_tasks_match_in_process(in_process, tmp_path, data_dir):
    got, parent = grid_metrics(tmp_path, data_dir, ["experiment.launcher=ray", "experiment.workers=2",
                                                     "experiment.ray.num_cpus=1", "experiment.ray.num_cpus_total=2"])
    assert_same(got, in_process)
    assert parent.info.status == "FINISHED" and parent.data.tags["launcher"] == "ray"
    assert parent.data.params["experiment.ray.num_cpus"] == "1.0"


@pytest.mark.parametrize("argv, said", [
    (["experiment.launcher=slurm"], r"experiment.launcher='slurm'; valid: local, ray"),
    (["experiment.worker=2"], r"unknown experiment option experiment.worker; valid: experiment.launcher, "
                              r"experiment.workers, experiment.ray.address"),
    (["experiment.workers=0"], r"experiment.workers=0; it must be at least 1"),
    (["experiment.ray.num_gpus=1"], r"experiment.ray.num_gpus apply to experiment.launcher=ray, not local"),
    (["experiment.launcher=ray", "experiment.ray.num_cpus=x"], r"experiment.ray.num_cpus='x' is not a number"),
])
def test_bad_launcher_options_fail_before_any_run(env, tmp_path, argv, said):
    (tmp_path / "mlflow.db").unlink()  # the fixture's copied empty store: this test checks that none is created
    with pytest.raises(ConfigError, match=said):
        runs.experiment("smoke", ["tasks.limit=2", *argv])
    assert not (tmp_path / "mlflow.db").exists()  # the store was not even opened


def test_a_missing_ray_names_the_extra(env, tmp_path, monkeypatch):
    (tmp_path / "mlflow.db").unlink()  # the fixture's copied empty store: this test checks that none is created
    monkeypatch.setattr(launchers.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"pip install 'editharm\[ray\]'"):
        runs.experiment("smoke", ["experiment.launcher=ray"])
    assert not (tmp_path / "mlflow.db").exists()
