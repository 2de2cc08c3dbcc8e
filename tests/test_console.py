"""What a run shows on the console: progress lines through `logging`, the results table read back from the run, and
none of Lightning's banners; `--quiet` keeps the table alone."""
import pytest

from editharm.__main__ import main
from tests.conftest import client

ARGV = ["edit", "method=rome", "model=tiny-llama", "edits.n=2", "edits.eval_every=2", "tasks.names=[sst2,samsum]",
        "tasks.limit=3", "method.v_num_grad_steps=5", "method.context_template_length_params=[[3,5]]",
        "tracking.log_model=false", "tracking.log_checkpoint=false"]
BANNERS = ("GPU available", "TPU available", "litlogger", "Validation", "val_check_interval", "Loading weights",
           "Downloading artifacts", "INFO mlflow")


def _last_run() -> str:
    c = client()
    return c.search_runs([c.get_experiment_by_name("editharm").experiment_id], order_by=["start_time DESC"])[0].info.run_id


@pytest.fixture
def console_env(env, monkeypatch):
    for var in ("TQDM_DISABLE", "MLFLOW_LOGGING_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "TRANSFORMERS_VERBOSITY",
                "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(var, raising=False)  # console.setup sets them; restored after the test
    return env


def test_a_run_shows_its_progress_and_ends_with_its_results(capfd, console_env):
    assert main(ARGV) == 0
    out, err = capfd.readouterr()
    for banner in BANNERS:
        assert banner not in out + err, banner
    for said in ("evaluation after 0 edits: edit, sst2, samsum, perplexity", "  2/4 sst2: 2 items",
                 "edit 1 of 2 (rome): ", "  value step and rank-one update at model.layers.0.mlp.down_proj",
                 "evaluation after 2 edits done in"):
        assert f"editharm: {said}" in err, said
    run = client().search_runs([client().get_experiment_by_name("editharm").experiment_id])[0]
    m = run.data.metrics
    lines = out[out.index("results of"):].splitlines()
    sst2 = next(line.split() for line in lines if line.startswith("sst2"))
    assert sst2[2] == f"{m['ability/sst2/accuracy']:.3f}" and sst2[-2:] in (["not", "detected"], ["harm", "detected"],
                                                                            ["gain", "detected"])
    edits = lines[lines.index(next(x for x in lines if x.startswith("edits"))) + 1].split()
    assert edits[:4] == ["2", f"{m['edit/zsre/efficacy_token_acc']:.3f}", f"{m['edit/zsre/generalization_token_acc']:.3f}",
                         f"{m['edit/zsre/locality_unchanged']:.3f}"]
    assert f"runs/{run.info.run_id}" in out  # where to open it in the UI


def test_quiet_keeps_the_table_alone(capfd, console_env):
    assert main(["--quiet", *ARGV]) == 0
    out, err = capfd.readouterr()
    assert "results of" in out and f"runs/{_last_run()}" in out and "editharm: edit 1 of 2" not in out + err
    assert err == ""  # no progress, no banner, no warning
