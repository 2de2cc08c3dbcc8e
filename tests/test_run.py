"""End to end on tiny-llama: one run, metrics at step = edits, artifacts, checkpoint retrieval."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from editharm import config, deltas as D, models, scoring
from editharm.__main__ import main
from editharm.runs import edit
from tests.conftest import TINY, client, read_artifact


def _history(run_id, key):
    return [(m.step, m.value) for m in client().get_metric_history(run_id, key)]


def _artifacts(run_id, path=None):
    out = []
    for a in client().list_artifacts(run_id, path):
        out += _artifacts(run_id, a.path) if a.is_dir else [a.path]
    return out


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, data_dir):
    """One instance-sequential run of 4 ZsRE edits, evaluated every 2 (shared by the tests below)."""
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("seq")
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    mp.setenv("EDITHARM_DATA_DIR", str(data_dir))
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    run_id = edit([*TINY, "edits.n=4", "edits.eval_every=2"])
    yield run_id, tmp
    mp.undo()


def test_one_finished_run_with_metrics_at_edit_steps(sequential):
    run_id, _ = sequential
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("method", "model", "mode", "eval_every")} == {
        "method": "ft", "model": "tiny-llama", "mode": "instance-sequential", "eval_every": "2"}
    assert run.data.params["edits.n"] == "4" and run.data.params["method.lr"] == "0.01"
    for key in ("edit/zsre/efficacy_token_acc", "edit/zsre/generalization_token_acc",
                "edit/zsre/locality_unchanged", "probe/perplexity"):
        assert [s for s, _ in _history(run_id, key)] == [0, 2, 4], key
    assert [s for s, _ in _history(run_id, "time/edit_s")] == [1, 2, 3, 4]
    eff = dict(_history(run_id, "edit/zsre/efficacy_token_acc"))
    assert eff[4] > eff[0]  # the edits took
    assert dict(_history(run_id, "edit/zsre/locality_unchanged"))[0] == 1.0


def test_artifacts(sequential, tmp_path):
    run_id, _ = sequential
    arts = set(_artifacts(run_id))
    for a in ("config/resolved.yaml", "deltas/deltas.safetensors", "deltas/summary.json",
              "checkpoint/config.json", "checkpoint/model.safetensors", "checkpoint/tokenizer.json",
              "predictions/edit/edits_0.jsonl", "predictions/edit/edits_2.jsonl", "predictions/edit/edits_4.jsonl"):
        assert a in arts, a
    resolved = read_artifact(run_id, "config/resolved.yaml", tmp_path).read_text()
    assert config.load([*TINY, "edits.n=4", "edits.eval_every=2"]).method.lr == 0.01 and "lr: 0.01" in resolved


def test_retrieved_checkpoint_holds_the_edit_and_equals_base_plus_deltas(sequential, tmp_path):
    run_id, _ = sequential
    out = tmp_path / "ckpt"
    assert main(["checkpoint", run_id, "--out", str(out)]) == 0
    edited = AutoModelForCausalLM.from_pretrained(out)
    base, tok = models.load(config.load(TINY).model, models.cache_root())
    prompts = ["What is the mother tongue of Danielle Darrieux?", "Which religion did Edwin of Northumbria follow?"]
    targets = ["English", "Islam"]
    nll_base = [s.nll for s in scoring.score(base, tok, prompts, targets)]
    nll_edit = [s.nll for s in scoring.score(edited, tok, prompts, targets)]
    assert all(e < b for e, b in zip(nll_edit, nll_base))  # P(target) up for every edited fact
    deltas = D.load(read_artifact(run_id, "deltas/deltas.safetensors", tmp_path))
    assert set(deltas) == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    D.apply_(base, deltas)
    edited_state = edited.state_dict()
    for name, value in base.state_dict().items():
        torch.testing.assert_close(edited_state[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_same_seed_same_metrics(env):
    runs = [edit([*TINY, "edits.n=2", "edits.eval_every=1", "tracking.log_checkpoint=false"]) for _ in range(2)]
    keys = [k for k in client().get_run(runs[0]).data.metrics if not k.startswith("time/")]
    assert any(k.startswith("edit/") for k in keys)
    for key in keys:
        assert _history(runs[0], key) == _history(runs[1], key), key


def test_single_mode_reverts_each_edit(env, tmp_path):
    run_id = edit([*TINY, "edits=zsre-single", "edits.n=3", "tracking.log_checkpoint=false"])
    assert [s for s, _ in _history(run_id, "edit/zsre/efficacy_token_acc")] == [0, 1, 2, 3]
    arts = set(_artifacts(run_id))
    assert "deltas/deltas.safetensors" not in arts  # nothing accumulates
    assert "predictions/edit/edits_3.jsonl" in arts and "predictions/edit/edits_1.jsonl" not in arts
    rows = read_artifact(run_id, "predictions/edit/edits_3.jsonl", tmp_path).read_text().splitlines()
    assert len(rows) == 3  # every edit's own evaluation, pooled


def test_batch_mode_and_a_final_evaluation_off_schedule(env):
    run_id = edit([*TINY, "edits=zsre-batch", "edits.n=3", "tracking.log_checkpoint=false"])
    assert [s for s, _ in _history(run_id, "edit/zsre/efficacy_token_acc")] == [0, 3]
    assert [s for s, _ in _history(run_id, "time/edit_s")] == [3]
    run_id = edit([*TINY, "edits.n=5", "edits.eval_every=2", "tracking.log_checkpoint=false"])
    assert [s for s, _ in _history(run_id, "edit/zsre/efficacy_token_acc")] == [0, 2, 4, 5]


def test_counterfact_reports_success_and_token_accuracy(env):
    run_id = edit([*TINY, "edits=counterfact", "edits.n=2", "edits.eval_every=2", "tracking.log_checkpoint=false"])
    metrics = client().get_run(run_id).data.metrics
    for kind in ("efficacy", "generalization", "locality"):
        assert f"edit/counterfact/{kind}_success" in metrics
    assert "edit/counterfact/efficacy_token_acc" in metrics and "edit/counterfact/locality_unchanged" in metrics


@pytest.mark.slow
def test_embedded_model_edit_run(env):
    """The CLI on the embedded model with its own ROME file (five loss evaluations per edit, no logged model); two
    tasks (a one-token answer, a summary) stand for the eight, which the README's Python example and the tiny
    models' full-task test cover apart."""
    run_id = edit(["model=smollm2-135m", "edits.n=2", "edits.eval_every=2", "probe.n_tokens=512",
                   "tasks.names=[rte,samsum]", "method.v_num_grad_steps=5", "tracking.log_checkpoint=false",
                   "tracking.log_model=false"])
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in _history(run_id, "edit/zsre/efficacy_token_acc")] == [0, 2]
    assert 1.0 < run.data.metrics["probe/perplexity"] < 1000.0


def test_memory_estimate_by_hand(env):
    """tiny-llama under ROME with key statistics: float32 weights, a bfloat16 scoring copy, the value step's
    bfloat16 copy, E[k kᵀ] of layer 0's down_proj (input width 128): 4 · 128² bytes, and Σ ΔW of that 64 × 128
    weight; under AlphaEdit (layer 0) and the null-space guard, 3 and 2 such matrices."""
    from editharm import config, memory, models
    from editharm.building import build

    cfg = config.load(["model=tiny-llama", "method=rome", "method.mom2_adjustment=true", "method.v_autocast=bfloat16",
                       "tasks.dtype=bfloat16"])
    model, tok = models.load(cfg.model, models.cache_root())
    n = sum(p.numel() for p in model.parameters())
    held = memory.estimate(cfg, model, build(cfg, model, tok, [], 0))
    assert held == {"weights": 4 * n, "scoring_copy": 2 * n, "value_step_copy": 2 * n, "key_statistics": 4 * 128 ** 2,
                    "cumulative_delta": 4 * 64 * 128}
    assert memory.describe(held, "cpu").endswith(f"at least {sum(held.values()) / 1e6:.1f} MB before activations")
    for overrides, matrices in ((["method=memit", "method.nullspace=true"], 3), (["method=rome", "guard=nullspace"], 2)):
        cfg = config.load(["model=tiny-llama", *overrides])
        assert memory.estimate(cfg, model, build(cfg, model, tok, [], 0))["key_statistics"] == matrices * 4 * 128 ** 2
    assert memory.size(int(27e9)) == "27.00 GB"  # Llama-2-7B in float32
