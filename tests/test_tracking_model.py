"""The edited model as an MLflow Model (transformers flavour) beside `checkpoint/`, and the UI links a run prints."""
import contextlib
import io
import os

import mlflow
import pytest
import torch
from transformers import AutoModelForCausalLM

from mlflow.entities import LoggedModelStatus

from editharm import config, models, tracking
from editharm.errors import ConfigError
from editharm.runs import edit, evaluate
from tests.conftest import TINY, client, read_artifact

FAST = [*TINY, "edits.n=2", "edits.eval_every=2", "probe.perplexity=false"]
EDITED = {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}  # TINY's FT layers


def _fluent():
    """Point MLflow's fluent API (load_model, register_model) at the test's store: Lightning's logger moves
    the global URI to the store of whichever run it opened last."""
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


def _edit(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_id = edit(argv)
    return run_id, out.getvalue()


@pytest.fixture(scope="module")
def logged(tmp_path_factory, data_dir):
    """One tiny edit run with the defaults (checkpoint and MLflow Model), artifacts under a private folder."""
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("model")
    mp.chdir(tmp)  # the sqlite store's default artifact root is ./mlruns
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    mp.setenv("EDITHARM_DATA_DIR", str(data_dir))
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    run_id, printed = _edit(FAST)
    yield run_id, printed, tmp
    mp.undo()


def test_the_run_logs_a_model_and_stays_finished(logged):
    run_id, _, _ = logged
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED"
    uri = run.data.tags["model_uri"]
    model_id = uri.removeprefix("models:/")
    assert uri.startswith("models:/m-") and [o.model_id for o in run.outputs.model_outputs] == [model_id]
    model = client().get_logged_model(model_id)
    assert model.source_run_id == run_id and model.experiment_id == run.info.experiment_id  # not experiment 0
    assert model.status == LoggedModelStatus.READY and model.name == run.info.run_name
    assert {m.key for m in model.metrics} >= {"edit/zsre/efficacy_token_acc"}  # the metrics at step = 2 edits
    assert {m.step for m in model.metrics} == {2}
    assert model.params["edits.n"] == "2" and model.tags["method"] == "ft"
    assert mlflow.active_run() is None
    assert "time/log_model_s" in run.data.metrics
    _fluent()
    mlmodel = mlflow.models.get_model_info(uri)
    assert mlmodel.flavors["transformers"]["task"] == "text-generation"


def test_the_model_loads_and_equals_the_checkpoint_and_the_edit(logged, tmp_path):
    run_id, _, _ = logged
    uri = client().get_run(run_id).data.tags["model_uri"]
    _fluent()
    loaded = mlflow.transformers.load_model(uri).model.state_dict()
    checkpoint = AutoModelForCausalLM.from_pretrained(read_artifact(run_id, "checkpoint", tmp_path)).state_dict()
    base = models.load(config.load(TINY).model, models.cache_root())[0].state_dict()
    assert loaded.keys() == checkpoint.keys()
    for name, value in checkpoint.items():
        assert torch.equal(loaded[name], value), name
        assert torch.equal(value, base[name]) != (name in EDITED), name  # the edit, and nothing else


def test_the_model_registers(logged):
    run_id, _, _ = logged
    uri = client().get_run(run_id).data.tags["model_uri"]
    _fluent()
    version = mlflow.register_model(uri, "tiny-edited")
    assert str(version.version) == "1" and version.run_id == run_id
    got = client().get_model_version("tiny-edited", "1")
    assert got.source == uri
    assert set(mlflow.transformers.load_model("models:/tiny-edited/1", return_type="components")) >= {"model", "tokenizer"}


def test_the_run_prints_where_to_open_it(logged):
    run_id, printed, _ = logged
    run = client().get_run(run_id)
    eid = run.info.experiment_id
    assert f"http://127.0.0.1:5000/#/experiments/{eid}/runs/{run_id}" in printed
    assert f"http://127.0.0.1:5000/#/experiments/{eid}/runs?workflowType=machine_learning" in printed
    assert f"mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}" in printed
    assert run.data.tags["model_uri"] in printed


def test_log_model_false_logs_none(env, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_id = edit([*FAST, "tracking.log_model=false", "tracking.log_checkpoint=false"])
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and "model_uri" not in run.data.tags
    assert not run.outputs.model_outputs
    assert not client().search_logged_models([run.info.experiment_id])
    printed = capsys.readouterr().out
    assert f"/#/experiments/{run.info.experiment_id}/runs/{run_id}" in printed and "models:/" not in printed


def test_an_evaluate_run_prints_its_address(env, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_id = evaluate(["model=tiny-llama", "tasks.names=[]", "probe.n_tokens=256", "probe.chunk_tokens=128"])
    eid = client().get_run(run_id).info.experiment_id
    assert f"/#/experiments/{eid}/runs/{run_id}/model-metrics?workflowType=machine_learning" in capsys.readouterr().out


@pytest.mark.usefixtures("tracking")
def test_log_model_leaves_the_run_and_the_global_uri_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.to_object(config.compose(["model=tiny-llama", "tasks.names=[]"]))
    model, tok = models.load(cfg.model, models.cache_root())
    store, elsewhere = os.environ["MLFLOW_TRACKING_URI"], f"sqlite:///{tmp_path / 'other.db'}"
    with contextlib.redirect_stdout(io.StringIO()), tracking.start(cfg, "log-model") as logger:
        mlflow.set_tracking_uri(elsewhere)  # e.g. another logger in this process moved the global URI
        try:
            uri = tracking.log_model(logger, model, tok)
            assert mlflow.get_tracking_uri() == elsewhere == os.environ["MLFLOW_TRACKING_URI"]
        finally:
            mlflow.set_tracking_uri(store)
        run = client().get_run(logger.run_id)
        assert run.info.status == "RUNNING" and run.info.end_time is None and mlflow.active_run() is None
    assert client().get_run(logger.run_id).info.status == "FINISHED"
    assert client().get_logged_model(uri.removeprefix("models:/")).source_run_id == logger.run_id


def test_ui_urls_use_the_tracking_server():
    run, runs = tracking.ui_urls("https://mlflow.example.org:8443/", "7", "abc")
    assert run == "https://mlflow.example.org:8443/#/experiments/7/runs/abc/model-metrics?workflowType=machine_learning"
    assert runs == "https://mlflow.example.org:8443/#/experiments/7/runs?workflowType=machine_learning"
    assert tracking.ui_urls("sqlite:///mlflow.db", "1", "r")[0].startswith("http://127.0.0.1:5000/#/experiments/1/")


def test_log_model_is_a_checked_bool():
    assert config.load(["tracking.log_model=false"]).tracking.log_model is False
    with pytest.raises(ConfigError, match="tracking.log_model"):
        config.load(["tracking.log_model=maybe"])


@pytest.mark.parametrize("run_name, name", [("ft-tiny-llama-batch-n2-magnitude0.4", "ft-tiny-llama-batch-n2-magnitude0-4"),
                                            ("rome·seq·n20", "rome-seq-n20"), (None, "edited-model")])
def test_a_logged_model_name_is_one_mlflow_accepts(run_name, name):
    from mlflow.utils.validation import _validate_logged_model_name

    from editharm.tracking import _model_name

    assert _model_name(run_name) == name
    _validate_logged_model_name(name)
