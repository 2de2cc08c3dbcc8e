"""The value step ROME (v*) and MEMIT (z) share: its loss by hand, the reference's stopping rule, one code path."""
import math

import pytest
import torch

from editharm import config, models
from editharm.errors import ConfigError
from editharm.methods import value
from editharm.methods._shared import lowered
from editharm.methods.memit import MEMIT
from editharm.methods.rome import ROME
from editharm.methods.value import optimize_value, value_loss
from tests.methods.test_rome_memit import FAST, REQUESTS


def test_value_loss_by_hand_with_kl_of_the_edited_against_the_unedited():
    p0, p = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.1, 0.3, 0.6]])
    target_logp = torch.log(torch.tensor([[0.5, 0.25], [0.125, 1.0]]))
    delta, v0 = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])
    loss = value_loss(target_logp, p.log(), p0.log(), delta, v0, kl_factor=0.5, weight_decay=0.1)
    nll = -(math.log(0.5) + math.log(0.25) + math.log(0.125) + 0.0) / 4
    kl = sum(b * math.log(b / a) for a, b in zip([0.7, 0.2, 0.1], [0.1, 0.3, 0.6]))  # KL(P_δ ‖ P₀)
    reverse = sum(a * math.log(a / b) for a, b in zip([0.7, 0.2, 0.1], [0.1, 0.3, 0.6]))
    assert abs(kl - reverse) > 0.05  # the two directions differ on these distributions
    assert loss.nll.item() == pytest.approx(nll)
    assert loss.kl.item() == pytest.approx(kl, rel=1e-6)
    assert loss.total.item() == pytest.approx(nll + 0.5 * kl + 0.1 * 5.0 / 4.0, rel=1e-6)


@pytest.fixture(scope="module")
def tiny():
    cfg = config.load(["model=tiny-llama", "method=rome"])
    return models.load(cfg.model, models.cache_root())


def _optimize(tiny, steps: int, stop_loss: float = -math.inf, lr: float = 0.1, autocast=None):
    model, tok = tiny
    r = REQUESTS[0]
    return optimize_value(model, tok, "model.layers.0.mlp.down_proj", [r.prompt], r.subject, r.target_new,
                          [f"{r.subject} is a"], steps=steps, lr=lr, weight_decay=0.0, kl_factor=0.0625,
                          clamp_norm_factor=1e6, stop_loss=stop_loss, autocast=autocast)


def test_steps_count_loss_evaluations_and_the_last_one_is_not_followed_by_an_update(tiny):
    v, v0, trace = _optimize(tiny, steps=1)
    assert len(trace.losses) == 1 and trace.updates == 0 and torch.equal(v, v0)
    v, v0, trace = _optimize(tiny, steps=2, lr=0.1)
    assert len(trace.losses) == 2 and trace.updates == 1
    # one Adam step from δ = 0 moves every coordinate with a gradient by lr · g / (|g| + ε) ≈ ±lr
    moved = (v - v0).abs()
    assert moved.max().item() == pytest.approx(0.1, rel=1e-3) and (moved > 0.099).float().mean() > 0.95
    longer = _optimize(tiny, steps=4)[2]
    assert len(longer.losses) == 4 and longer.updates == 3
    assert longer.losses[:2] == pytest.approx(trace.losses) and longer.losses[-1] < longer.losses[0]
    assert longer.metrics()["loss"] == longer.losses[-1] and not longer.converged


def test_early_stop_is_checked_before_the_update(tiny):
    v, v0, trace = _optimize(tiny, steps=25, stop_loss=math.inf)
    assert trace.converged and len(trace.losses) == 1 and trace.updates == 0 and torch.equal(v, v0)


@pytest.mark.parametrize("cls,method,layers", [(ROME, "rome", "method.layer=0"), (MEMIT, "memit", "method.layers=[0]")])
def test_rome_and_memit_targets_share_the_loss_and_the_stopping_rule(env, monkeypatch, cls, method, layers):
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[3].shape)  # δ
        return value_loss(*args, **kwargs)

    monkeypatch.setattr(value, "value_loss", spy)
    cfg = config.load(["model=tiny-llama", f"method={method}", *FAST, layers, "method.v_num_grad_steps=3"])
    model, tok = models.load(cfg.model, models.cache_root())
    m = cls(cfg, model, tok, [], n_requests=2)
    m.on_fit_start()
    m._measured = {}
    m.compute_deltas(REQUESTS)
    assert len(calls) == 3 * len(REQUESTS)  # 3 evaluations per request, through the one shared loss
    assert m._measured["value/loss_evals"] == [3.0, 3.0] and m._measured["value/updates"] == [2.0, 2.0]


def test_fixed_templates_replace_the_sampled_ones(env):
    cfg = config.load(["model=tiny-llama", "method=rome", "method.layer=0",
                       'method.context_templates=["{}", "Once upon a time. {}"]'])
    model, tok = models.load(cfg.model, models.cache_root())
    m = ROME(cfg, model, tok, [], n_requests=1)
    m.on_fit_start()
    assert m._templates == ["{}", "Once upon a time. {}"]


@pytest.mark.parametrize("templates", ['["A. {}"]', '["{}", "no slot"]', '["{}", "a {b} {}"]', "[]"])
def test_bad_fixed_templates_are_a_config_error(templates):
    with pytest.raises(ConfigError, match="context_templates"):
        config.load(["method=rome", f"method.context_templates={templates}"])


MODULE = "model.layers.0.mlp.down_proj"
TEMPLATES = ["{}", "Earlier that day. {}", "A. {}"]


def _queries():
    """Requests of different prompt, subject and target lengths (so a batch pads rows to different widths)."""
    from editharm.data import EditRequest
    requests = [*REQUESTS, EditRequest("The capital city of the old kingdom of Prussia was", "Prussia",
                                       "Königsberg in East Prussia", "Berlin")]
    return [value.ValueQuery([t.format(r.prompt) for t in TEMPLATES], r.subject, r.target_new, [f"{r.subject} is a"])
            for r in requests]


def _batched(tiny, queries, steps=6, stop_loss=-math.inf, batch_size=None):
    model, tok = tiny
    return value.optimize_values(model, tok, MODULE, queries, steps=steps, lr=0.1, weight_decay=1e-3, kl_factor=0.0625,
                                 clamp_norm_factor=4.0, stop_loss=stop_loss, batch_size=batch_size)


def test_a_batch_of_one_is_exactly_the_single_request_loop(tiny):
    model, tok = tiny
    queries = _queries()
    V, V0, traces = _batched(tiny, queries, batch_size=1)
    for i, q in enumerate(queries):
        v, v0, trace = optimize_value(model, tok, MODULE, q.prompts, q.subject, q.target, q.kl_prompts, steps=6,
                                      lr=0.1, weight_decay=1e-3, kl_factor=0.0625, clamp_norm_factor=4.0,
                                      stop_loss=-math.inf)
        assert torch.equal(V[i], v) and torch.equal(V0[i], v0)
        assert traces[i].losses == trace.losses and traces[i].updates == trace.updates == 5


def test_requests_optimised_together_get_their_one_at_a_time_values(tiny):
    queries = _queries()
    one, one0, one_tr = _batched(tiny, queries, batch_size=1)
    all_, all0, all_tr = _batched(tiny, queries)  # one forward/backward per step for all three
    torch.testing.assert_close(all0, one0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(all_, one, rtol=1e-4, atol=1e-4)
    assert [t.updates for t in all_tr] == [t.updates for t in one_tr] == [5, 5, 5]
    for a, b in zip(all_tr, one_tr):
        assert a.losses == pytest.approx(b.losses, rel=1e-4)
    assert not torch.allclose(all_[0] - all0[0], all_[1] - all0[1])  # each request moved its own δ


def test_each_request_stops_on_its_own_and_keeps_the_value_of_its_last_loss(tiny):
    queries = _queries()
    first = _batched(tiny, queries, steps=1)[2]
    losses = [t.losses[0] for t in first]
    low = min(range(3), key=losses.__getitem__)
    threshold = (sorted(losses)[0] + sorted(losses)[1]) / 2  # between the lowest and the next loss at δ = 0
    V, V0, traces = _batched(tiny, queries, steps=6, stop_loss=threshold)
    assert traces[low].converged and len(traces[low].losses) == 1 and traces[low].updates == 0
    assert torch.equal(V[low], V0[low])
    alone = _batched(tiny, [q for i, q in enumerate(queries) if i != low], steps=6, stop_loss=threshold)
    rest = [i for i in range(3) if i != low]
    torch.testing.assert_close(V[rest], alone[0], rtol=1e-4, atol=1e-4)  # the stopped request left no trace on them
    for i, t in zip(rest, alone[2]):
        assert traces[i].losses == pytest.approx(t.losses, rel=1e-4) and traces[i].updates == t.updates == 5


def test_memit_z_batch_size_does_not_change_the_edit(env):
    deltas = {}
    for size in (1, 32):
        cfg = config.load(["model=tiny-llama", "method=memit", *FAST, "method.layers=[0]", "method.v_num_grad_steps=4",
                           f"method.z_batch_size={size}"])
        model, tok = models.load(cfg.model, models.cache_root())
        m = MEMIT(cfg, model, tok, [], n_requests=2)
        m.on_fit_start()
        m._measured = {}
        deltas[size] = m.compute_deltas(REQUESTS)
        assert m._measured["value/loss_evals"] == [4.0, 4.0]
    for name, d in deltas[1].items():
        torch.testing.assert_close(deltas[32][name], d, rtol=1e-3, atol=1e-6)


def test_z_batch_size_must_be_positive():
    with pytest.raises(ConfigError, match="z_batch_size"):
        config.load(["model=tiny-llama", "method=memit", "method.z_batch_size=0"])


@pytest.mark.parametrize("model_name,module", [("tiny-llama", MODULE), ("tiny-gpt2", "transformer.h.0.mlp.c_proj")])
def test_cached_prefixes_give_the_values_of_whole_rows(model_name, module):
    """The tokens before each subject run once (a KV cache); every step runs the rest. A one-token subject at
    the start of a KL prompt leaves an empty prefix (neither tiny tokenizer adds BOS) in the same batch as
    long ones."""
    from editharm.methods._shared import subject_last
    model, tok = models.load(config.load([f"model={model_name}"]).model, models.cache_root())
    queries = _queries() + [value.ValueQuery(["A is the capital of"], "A", "Italy", ["A is a"])]
    empty = any(subject_last(tok, k, q.subject) == 0 for q in queries for k in q.kl_prompts)
    assert empty  # a one-token subject first in "A is a": that row's prefix is empty
    out = {}
    for cached in (True, False):
        out[cached] = value.optimize_values(model, tok, module, queries, steps=5, lr=0.1, weight_decay=1e-3,
                                            kl_factor=0.0625, clamp_norm_factor=4.0, stop_loss=-math.inf,
                                            cache_prefix=cached)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-5, atol=1e-5)  # v0
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-4, atol=1e-4)
    for a, b in zip(out[True][2], out[False][2]):
        assert a.losses == pytest.approx(b.losses, rel=1e-5) and a.updates == b.updates == 4


def test_a_bf16_value_step_runs_on_a_cast_copy_and_lands_near_float32(tiny):
    """`v_autocast`: the passes run on a bf16 copy (weights cast once, ties kept, eager attention) while the
    model itself is untouched; δ lands where float32's does, and v0 is float32 in both."""
    model, _ = tiny
    low = lowered(model, torch.bfloat16)
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16} and not any(p.requires_grad for p in low.parameters())
    assert low.get_output_embeddings().weight is low.get_input_embeddings().weight  # tied stays tied
    assert low.config._attn_implementation == "eager" and model.config._attn_implementation == "sdpa"
    before = {n: p.clone() for n, p in model.named_parameters()}
    v32, v0_32, _ = _optimize(tiny, steps=6)
    v16, v0_16, _ = _optimize(tiny, steps=6, autocast=torch.bfloat16)
    assert v16.dtype == v0_16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(v16 - v0_16, v32 - v0_32, 0) > 0.99
    assert all(torch.equal(p, before[n]) and p.dtype == torch.float32 for n, p in model.named_parameters())
