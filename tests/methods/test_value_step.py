"""The value step ROME (v*) and MEMIT (z) share: its loss by hand, the reference's stopping rule, one code path."""
import math

import pytest
import torch

from editharm import config, models
from editharm.errors import ConfigError
from editharm.methods import value
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


def _optimize(tiny, steps: int, stop_loss: float = -math.inf, lr: float = 0.1):
    model, tok = tiny
    r = REQUESTS[0]
    return optimize_value(model, tok, "model.layers.0.mlp.down_proj", [r.prompt], r.subject, r.target_new,
                          [f"{r.subject} is a"], steps=steps, lr=lr, weight_decay=0.0, kl_factor=0.0625,
                          clamp_norm_factor=1e6, stop_loss=stop_loss)


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
