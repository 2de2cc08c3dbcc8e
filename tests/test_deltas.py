import math

import pytest
import torch

from editharm import config, deltas as D, models, nethook


@pytest.fixture
def gpt2():
    model, _ = models.load(config.load(["model=tiny-gpt2"]).model, models.cache_root())
    return model


def test_conv1d_is_viewed_as_out_by_in(gpt2):
    name = "transformer.h.0.mlp.c_proj"
    module = nethook.get_module(gpt2, name)
    w = nethook.linear_weight(gpt2, name)
    x = torch.randn(3, w.shape[1])
    torch.testing.assert_close(module(x), x @ w.T + module.bias)
    assert w.shape == (64, 256) and module.weight.shape == (256, 64)


def test_delta_in_out_by_in_layout_changes_output_by_delta_x(gpt2):
    name = "transformer.h.1.mlp.c_proj"
    module = nethook.get_module(gpt2, name)
    x = torch.randn(2, 256)
    before = module(x).detach()
    delta = torch.randn(64, 256) * 1e-2
    param, stored = nethook.to_param_layout(gpt2, name, delta)
    assert param == f"{name}.weight" and stored.shape == (256, 64)
    D.apply_(gpt2, {param: stored})
    torch.testing.assert_close(module(x).detach(), before + x @ delta.T)
    D.revert_(gpt2, {param: stored})
    torch.testing.assert_close(module(x).detach(), before)


def test_linear_layout_is_untouched():
    model, _ = models.load(config.load(["model=tiny-llama"]).model, models.cache_root())
    name = "model.layers.0.mlp.down_proj"
    delta = torch.randn(64, 128)
    _, stored = nethook.to_param_layout(model, name, delta)
    assert torch.equal(stored, delta)


def test_shape_mismatch_is_refused(gpt2):
    with pytest.raises(ValueError, match="shape"):
        D.apply_(gpt2, {"transformer.h.0.mlp.c_proj.weight": torch.zeros(64, 256)})


def test_stats_hand_computed():
    lin = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    d = {"weight": torch.tensor([[0.1, 0.0], [0.0, 0.4]])}
    s = D.stats(lin, d)["weight"]
    assert s["fro"] == pytest.approx(math.sqrt(0.17))
    assert s["rel_fro"] == pytest.approx(math.sqrt(0.17) / math.sqrt(30))
    assert s["max_abs"] == pytest.approx(0.4)
    # |ΔW/W| = [0.1, 0, 0, 0.1]: median 0.05 (linear interpolation), 90th percentile 0.1
    assert s["rel_q50"] == pytest.approx(0.05) and s["rel_q90"] == pytest.approx(0.1)
    D.apply_(lin, d)
    assert D.stats(lin, d, applied=True)["weight"]["rel_fro"] == pytest.approx(s["rel_fro"])
    cond = D.condition_numbers(lin, d)["weight"]
    sv = torch.linalg.svdvals(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert cond["cond_before"] == pytest.approx(float(sv[0] / sv[1]), rel=1e-5)


def test_accumulate_returns_new_sums():
    a = {"w": torch.ones(2)}
    total = D.accumulate({}, a)
    total2 = D.accumulate(total, {"w": torch.full((2,), 2.0), "v": torch.ones(1)})
    assert torch.equal(total["w"], torch.ones(2))  # not mutated
    assert torch.equal(total2["w"], torch.full((2,), 3.0)) and torch.equal(total2["v"], torch.ones(1))


def test_finite_check_and_save_load(tmp_path):
    assert not D.is_finite({"w": torch.tensor([1.0, float("nan")])})
    d = {"a.weight": torch.randn(3, 4), "b.weight": torch.randn(2)}
    D.save(d, tmp_path / "d.safetensors")
    back = D.load(tmp_path / "d.safetensors")
    assert all(torch.equal(d[k], back[k]) for k in d)
