"""Guards: hand-computed masks, the truncated SVD, the null-space projection; through whole tiny runs."""
import pytest
import torch

from editharm import guards
from editharm.__main__ import main
from editharm.runs import edit
from editharm.guards import GuardContext
from editharm.registry import guard
from tests.conftest import ZSRE, client, write_jsonl

W = torch.tensor([[1.0, 0.0, 2.0], [4.0, -1.0, 0.5]])
DW = torch.tensor([[0.5, 0.01, -0.2], [1.0, 0.3, -0.4]])


@pytest.mark.parametrize("k,n,kept", [(0.4, 10, 4), (0.29, 100, 29), (1.0, 7, 7), (0.01, 10, 1), (0.5, 5, 2)])
def test_keep_count_is_the_floor_of_k_n_and_at_least_one(k, n, kept):
    assert guards.keep_count(k, n) == kept


def test_rect_keeps_the_largest_relative_changes_including_w_zero():
    # |ΔW|/(|W|+ε) = [[0.5, 1e6, 0.1], [0.25, 0.3, 0.8]]: the top half are (0,1) (W = 0), (1,2), (0,0)
    out = guards.rect(DW, W, k=0.5)
    assert torch.equal(out, torch.tensor([[0.5, 0.01, 0.0], [0.0, 0.0, -0.4]]))
    assert out.data_ptr() != DW.data_ptr() and torch.equal(DW[1, 0], torch.tensor(1.0))  # returned, not in place


def test_magnitude_ranks_by_the_change_alone():
    assert torch.equal(guards.magnitude(DW, k=0.5), torch.tensor([[0.5, 0.0, 0.0], [1.0, 0.0, -0.4]]))


def test_random_mask_has_an_exact_count_and_is_seeded():
    delta = torch.randn(40, 25, generator=torch.Generator().manual_seed(0))
    ctx = GuardContext(weights={"w": torch.ones(40, 25)}, seed=3, edit_index=7)
    a = guard("random")({"w": delta}, guards.ShareConfig(name="random", k=0.3), ctx)[0]["w"]
    b = guard("random")({"w": delta}, guards.ShareConfig(name="random", k=0.3), ctx)[0]["w"]
    other = GuardContext(weights=ctx.weights, seed=3, edit_index=8)
    c = guard("random")({"w": delta}, guards.ShareConfig(name="random", k=0.3), other)[0]["w"]
    assert int((a != 0).sum()) == 300 and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[a != 0], delta[a != 0])  # kept values are the original ones, unscaled


def test_pca_is_the_truncated_svd_and_leaves_a_rank_one_update_alone():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(12, 9, generator=g)
    U, S, Vh = torch.linalg.svd(delta.double())
    expected = (U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]).float()
    torch.testing.assert_close(guards.truncated_svd(delta, 3), expected)
    assert torch.linalg.matrix_rank(guards.truncated_svd(delta, 3)) == 3
    rank_one = torch.outer(torch.randn(12, generator=g), torch.randn(9, generator=g))
    torch.testing.assert_close(guards.truncated_svd(rank_one, 1), rank_one)
    assert guards.pca_rank(576, 1536, 0.4) == 168  # 0.4 · 576 · 1536 / 2112 = 167.6
    assert guards.pca_rank(4, 4, 0.01) == 1


def test_nullspace_leaves_preserved_keys_unchanged_in_both_layouts():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(6, 3, generator=g)
    K0 = basis @ torch.randn(3, 200, generator=g)  # preserved keys span a 3-dim subspace of the 6-dim input
    P = guards.nullspace_projector(K0 @ K0.T / 200, threshold=1e-2)
    assert round(float(torch.trace(P))) == 3
    weight, delta = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    k0 = basis @ torch.randn(3, generator=g)
    shaped = guards.project(delta, P, input_axis=1)
    torch.testing.assert_close((weight + shaped) @ k0, weight @ k0, atol=1e-4, rtol=1e-4)
    assert not torch.allclose((weight + delta) @ k0, weight @ k0, atol=1e-2)
    torch.testing.assert_close(guards.project(delta.T, P, input_axis=0), shaped.T)  # Conv1D's (in, out)


BASE = ["model=tiny-llama", "tasks.names=[]", "probe.n_tokens=512", "probe.chunk_tokens=128",
        "tracking.log_checkpoint=false", "tracking.log_model=false"]
VALUE = ["method.v_num_grad_steps=3", "method.context_template_length_params=[[3,2]]", "method.mom2_max_len=32"]
METHOD = {"rome": ["method=rome", "method.layer=0", *VALUE], "memit": ["method=memit", "method.layers=[0]", *VALUE],
          "ft": ["method=ft", "method.layers=[0]", "method.steps=3", "method.norm_constraint=null"]}
GUARDS = {"rect": ["guard=rect"], "magnitude": ["guard=magnitude"], "random": ["guard=random"], "pca": ["guard=pca"],
          "nullspace": ["guard=nullspace", "guard.mom2_max_len=32"]}
MODES = {"single": ["edits.mode=single", "edits.n=2", "edits.eval_every=1"],
         "instance-sequential": ["edits.n=2", "edits.eval_every=1"],
         "batch": ["edits=zsre-batch", "edits.n=2"],
         "batch-sequential": ["edits.mode=batch-sequential", "edits.n=4", "edits.batch_size=2", "edits.eval_every=2"]}


# The guard step does not depend on the mode (training_step shapes every step's ΔW alike; test_modes runs every
# method in every mode): every guard with every method in one mode, and every mode with every method under rect.
COMBOS = sorted({(g, m, "instance-sequential") for g in GUARDS for m in METHOD} | {("rect", m, mode) for m in METHOD
                                                                                   for mode in MODES})


@pytest.mark.parametrize("name, method, mode", COMBOS)
def test_every_guard_runs_with_every_method_in_every_mode(env, name, method, mode):
    run_id = edit([*BASE, *METHOD[method], *GUARDS[name], *MODES[mode]])
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["guard.name"] == run.data.tags["guard"] == name
    param = next(k for k in run.data.metrics if k.startswith("guard/") and k.endswith("/kept"))
    kept = [m.value for m in client().get_metric_history(run_id, param)]
    assert kept and all(0 < v <= 1 for v in kept)
    if name in ("rect", "magnitude", "random"):
        assert all(abs(v - 0.4) < 0.01 for v in kept)  # the exact share of a dense ΔW


def _edit_metrics(run_id: str) -> dict:
    m = client().get_run(run_id).data.metrics
    return {k: v for k, v in m.items() if k.startswith(("edit/", "probe/", "delta/"))}


def test_guard_none_logs_nothing_and_rect_keeping_everything_changes_nothing(env):
    args = [*BASE, *METHOD["rome"], "edits.n=2", "edits.eval_every=1"]
    plain, whole = edit(args), edit([*args, "guard=rect", "guard.k=1.0"])
    assert not any(k.startswith("guard/") for k in client().get_run(plain).data.metrics)
    assert _edit_metrics(plain) == _edit_metrics(whole)
    halved = edit([*args, "guard=rect", "guard.k=0.5"])
    assert _edit_metrics(halved) != _edit_metrics(plain)


def test_nullspace_without_its_corpus_is_one_error_before_any_run(env, tmp_path, monkeypatch, capsys):
    bare = tmp_path / "bare"
    write_jsonl(bare / "zsre" / "zsre_mend_eval_portability_gpt4.jsonl", ZSRE)
    monkeypatch.setenv("EDITHARM_DATA_DIR", str(bare))
    code = main(["edit", *BASE, *METHOD["ft"], *GUARDS["nullspace"], "probe.perplexity=false", "edits.n=2"])
    assert code == 2 and "statistics corpus" in capsys.readouterr().err
    assert not client().search_runs([e.experiment_id for e in client().search_experiments()])


def test_stats_command_covers_the_guards_modules(env, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITHARM_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["stats", *METHOD["ft"], "model=tiny-llama", *GUARDS["nullspace"]]) == 0
    assert len(list((tmp_path / "cache" / "stats").glob("*.safetensors"))) == 1


@pytest.mark.parametrize("name", sorted(GUARDS))
def test_every_guard_runs_with_kn(env, name):
    """KN's ΔW is sparse (whole columns of the selected neurons): the guards take it as any other delta."""
    run_id = edit([*BASE, "method=kn", "method.steps=2", *GUARDS[name], *MODES["instance-sequential"]])
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["guard"] == name
    kept = [v for k, v in run.data.metrics.items() if k.startswith("guard/") and k.endswith("/kept")]
    assert kept and all(0 < v <= 1 for v in kept)


@pytest.mark.parametrize("name", sorted(GUARDS))
def test_every_guard_runs_with_mend(env, name):
    """MEND's ΔW (a sum of rank-one terms per inner weight) through every guard; `nullspace` reads the inner
    weights' key statistics."""
    run_id = edit([*BASE, "method=mend", "method.train.max_iters=4", "method.train.val_every=4", *GUARDS[name],
                   *MODES["instance-sequential"]])
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["guard"] == name
    kept = [v for k, v in run.data.metrics.items() if k.startswith("guard/") and k.endswith("/kept")]
    assert kept and all(0 < v <= 1 for v in kept)
