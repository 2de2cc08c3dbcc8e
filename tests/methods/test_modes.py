"""ROME, MEMIT, AlphaEdit, KN and MEND (both tiny architectures) through the whole edit run, in every mode; the
collapse guard; `editharm stats`."""
import pytest

from editharm.__main__ import main
from editharm.runs import edit
from tests.conftest import client

BASE = ["tasks.names=[]", "probe.n_tokens=512", "probe.chunk_tokens=128", "tracking.log_checkpoint=false",
        "tracking.log_model=false"]
VALUE = ["model=tiny-llama", "method.v_num_grad_steps=5", "method.context_template_length_params=[[3,5]]",
         "method.mom2_max_len=32"]
MEND = ["method.train.max_iters=4", "method.train.val_every=4"]  # `auto`: a nested training run first
METHOD = {"rome": ["method=rome", "method.layer=0", *VALUE], "memit": ["method=memit", "method.layers=[0]", *VALUE],
          "alphaedit": ["method=memit", "method.layers=[0]", "method.nullspace=true", *VALUE],
          "kn": ["model=tiny-llama", "method=kn", "method.steps=3"],
          "kn-gpt2": ["model=tiny-gpt2", "method=kn", "method.steps=3", "method.variant=corrected", "method.neuron=post"],
          "mend": ["model=tiny-llama", "method=mend", *MEND], "mend-gpt2": ["model=tiny-gpt2", "method=mend", *MEND]}
MODES = {
    "single": (["edits.mode=single", "edits.n=2", "edits.eval_every=1"], [0, 1, 2]),
    "instance-sequential": (["edits.n=2", "edits.eval_every=1"], [0, 1, 2]),
    "batch": (["edits=zsre-batch", "edits.n=3"], [0, 3]),
    "batch-sequential": (["edits.mode=batch-sequential", "edits.n=4", "edits.batch_size=2", "edits.eval_every=2"], [0, 2, 4]),
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("method", sorted(METHOD))
def test_every_mode_runs(env, method, mode):
    args, steps = MODES[mode]
    run_id = edit([*BASE, *METHOD[method], *args])
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mode"] == mode
    label = {"alphaedit": "alphaedit", "kn": "kn-paper-pre", "kn-gpt2": "kn-corrected-post",
             "mend-gpt2": "mend"}.get(method, method)
    assert run.info.run_name.startswith(f"{label}-tiny-")  # the run name says which method and variant
    assert [m.step for m in client().get_metric_history(run_id, "edit/zsre/efficacy_token_acc")] == steps
    if method.startswith("kn"):
        neurons = [m.value for m in client().get_metric_history(run_id, "kn/neurons")]
        assert len(neurons) == len(steps) - 1 and all(n > 0 for n in neurons)  # one figure per edit step
        return
    if method.startswith("mend"):
        assert run.data.tags["mend.hypernetwork"].startswith("runs:/")
        assert [m.step for m in client().get_metric_history(run_id, "time/edit_s")] == steps[1:]
        return
    evals = [m.value for m in client().get_metric_history(run_id, "value/loss_evals")]
    assert evals and all(1 <= e <= 5 for e in evals)  # the value step's trace, per edit step (5 evaluations at most)
    if method != "rome":
        assert [a.path for a in client().list_artifacts(run_id, "stats")], "statistics logged to the run"


def test_collapse_guard_reports_and_skips(env):
    run_id = edit([*BASE, *METHOD["rome"], "edits.n=2", "edits.eval_every=1", "edits.max_rel_fro=1e-12"])
    run = client().get_run(run_id)
    assert run.data.metrics["edit/skipped"] == 2
    assert any(k.startswith("skipped_edit.") and "max_rel_fro" in v for k, v in run.data.tags.items())
    assert not client().list_artifacts(run_id, "deltas")  # nothing was applied


def test_stats_command_caches_and_logs(env, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITHARM_CACHE_DIR", str(tmp_path / "cache"))
    args = ["stats", "method=memit", "model=tiny-llama", "method.layers=[0,1]", "method.mom2_max_len=32"]
    assert main(args) == 0
    files = sorted((tmp_path / "cache" / "stats").glob("*.safetensors"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert main(args) == 0
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # reused, not recomputed
    assert main(["stats", "method=ft", "model=tiny-llama"]) == 2
    assert "uses no key statistics" in capsys.readouterr().err
