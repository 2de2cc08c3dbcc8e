import pytest
import torch

from editharm import config, deltas as D, models, scoring
from editharm.methods.ft import constrained_finetune

PROMPTS = ["The mother tongue of Danielle Darrieux is", "Toko Yasuda plays the"]
TARGETS = ["English", "piano"]


@pytest.fixture(params=["tiny-llama", "tiny-gpt2"])
def tiny(request):
    cfg = config.load([f"model={request.param}"])
    model, tok = models.load(cfg.model, models.cache_root())
    params = [cfg.model.templates.mlp_out.format(i) + ".weight" for i in range(2)]
    return model, tok, params


def _nll(model, tok):
    return sum(s.nll for s in scoring.score(model, tok, PROMPTS, TARGETS))


def test_compute_leaves_model_unchanged_and_deltas_raise_target_probability(tiny):
    model, tok, params = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    nll0 = _nll(model, tok)
    deltas = constrained_finetune(model, tok, PROMPTS, TARGETS, params, lr=1e-2, steps=10, eps=None, stop_nll=0.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert flags == [p.requires_grad for p in model.parameters()]
    assert set(deltas) == set(params)
    assert all(deltas[n].shape == model.get_parameter(n).shape for n in params)
    D.apply_(model, deltas)
    assert _nll(model, tok) < nll0 - 1.0


def test_norm_constraint_bounds_every_element(tiny):
    model, tok, params = tiny
    eps = 1e-3
    deltas = constrained_finetune(model, tok, PROMPTS, TARGETS, params, lr=1e-2, steps=5, eps=eps, stop_nll=0.0)
    top = max(float(d.abs().max()) for d in deltas.values())
    assert eps * 0.5 < top <= eps * (1 + 1e-5)


def test_early_stop_returns_zero_deltas(tiny):
    model, tok, params = tiny
    deltas = constrained_finetune(model, tok, PROMPTS, TARGETS, params, lr=1e-2, steps=5, eps=None, stop_nll=1e9)
    assert all(float(d.abs().max()) == 0.0 for d in deltas.values())
