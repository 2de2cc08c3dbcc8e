"""KN: the batched integrated gradients against an explicit loop and completeness, the selection, the edit."""
import pytest
import torch

from editharm import config, deltas as D, models
from editharm.data import EditRequest
from editharm.errors import ConfigError
from editharm.methods import kn
from editharm.methods.kn import KN, Site, attribute, column_change, integrated_gradients, refine, select
from editharm.nethook import get_module

REQUEST = EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French",
                      rephrase="Danielle Darrieux's mother tongue is")


def _load(model_name):
    cfg = config.load([f"model={model_name}", "method=kn"])
    return cfg, *models.load(cfg.model, models.cache_root())


def _sites(cfg, neuron):
    n = cfg.model.n_layers
    if neuron == "pre":
        return [Site(cfg.model.templates.mlp_gate.format(l), False) for l in range(n)]
    return [Site(cfg.model.templates.mlp_out.format(l), True) for l in range(n)]


def _prob(model, ids, target, site=None, value=None):
    """P(target | ids), with `site`'s activation at the last position replaced by `value` (explicit hooks)."""
    handle = None
    if site is not None:
        def swap(h):
            h = h.clone()
            h[0, -1] = value.to(h.dtype)
            return h
        module = get_module(model, site.module)
        handle = (module.register_forward_pre_hook(lambda _m, a: (swap(a[0]), *a[1:])) if site.on_input
                  else module.register_forward_hook(lambda _m, _a, out: swap(out)))
    try:
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float().softmax(-1)[target]
    finally:
        if handle is not None:
            handle.remove()


def _activation(model, ids, site):
    got = {}
    module = get_module(model, site.module)
    handle = (module.register_forward_pre_hook(lambda _m, a: got.setdefault("a", a[0][0, -1].detach().float()))
              if site.on_input else module.register_forward_hook(lambda _m, _a, o: got.setdefault("a", o[0, -1].detach().float())))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    handle.remove()
    return got["a"]


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("neuron", ["pre", "post"])
def test_batched_attribution_equals_an_explicit_loop(model_name, neuron):
    cfg, model, tok = _load(model_name)
    ids, target, m = tok(REQUEST.prompt)["input_ids"], 17, 5
    sites = _sites(cfg, neuron)
    got = attribute(model, ids, target, sites, m, batch_size=3)  # chunks that split a layer's steps
    for l, site in enumerate(sites):
        a = _activation(model, ids, site)
        grads = []
        for alpha in torch.linspace(0, 1, m):
            x = (alpha * a).requires_grad_(True)
            (g,) = torch.autograd.grad(_prob(model, ids, target, site, x), x)
            grads.append(g)
        torch.testing.assert_close(got[l], integrated_gradients(a, torch.stack(grads)), rtol=1e-4, atol=1e-9)


def test_attributions_are_complete_as_m_grows():
    """Σ_i Attr(l, i) → P(y | x) − P(y | x, a⁽ˡ⁾ = 0) for each layer l (the Riemann sum converges)."""
    cfg, model, tok = _load("tiny-llama")
    ids, target = tok(REQUEST.prompt)["input_ids"], 17
    sites = _sites(cfg, "post")
    full = _prob(model, ids, target).item()
    gaps = {}
    for m in (4, 200):
        attr = attribute(model, ids, target, sites, m)
        gaps[m] = [abs(attr[l].sum().item() - (full - _prob(model, ids, target, s, torch.zeros_like(
            _activation(model, ids, s))).item())) for l, s in enumerate(sites)]
    for l in range(len(sites)):
        target_gap = abs(full - _prob(model, ids, target, sites[l], torch.zeros_like(_activation(model, ids, sites[l]))).item())
        assert gaps[200][l] < 0.05 * target_gap + 1e-7
        assert gaps[200][l] < gaps[4][l]


def test_one_step_is_the_gradient_at_a_zeroed_layer_times_a():
    cfg, model, tok = _load("tiny-gpt2")
    ids, target = tok(REQUEST.prompt)["input_ids"], 9
    site = _sites(cfg, "pre")[1]
    a = _activation(model, ids, site)
    x = torch.zeros_like(a).requires_grad_(True)
    (g,) = torch.autograd.grad(_prob(model, ids, target, site, x), x)
    torch.testing.assert_close(attribute(model, ids, target, [site], 1)[0], a * g, rtol=1e-5, atol=1e-10)
    assert kn.alphas(1).tolist() == [0.0]


def test_selection_refinement_and_column_change_by_hand():
    attr = torch.tensor([[0.1, 1.0, 0.25], [0.19, -2.0, 0.21]])
    assert select(attr, 0.2).tolist() == [[False, True, True], [False, False, True]]
    assert not select(-attr.abs(), 0.2).any()  # no positive attribution: nothing selected
    masks = torch.tensor([[[True, False, True]], [[True, True, False]], [[False, False, False]]])
    assert refine(masks, 0.6).tolist() == [[True, False, False]] and refine(masks, 0.3).tolist() == [[True, True, True]]
    e_new, e_old = torch.tensor([[1.0, 2.0], [0.5, 0.0]]), torch.tensor([[3.0, 1.0]])
    assert column_change(e_new, e_old, 2.0).tolist() == [1.5 - 6.0, 2.0 - 2.0]


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("variant", ["paper", "corrected"])
def test_only_the_selected_neurons_columns_change_and_the_model_is_left_alone(env, model_name, variant):
    cfg = config.load([f"model={model_name}", "method=kn", "method.steps=4", f"method.variant={variant}"])
    model, tok = models.load(cfg.model, models.cache_root())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = KN(cfg, model, tok, [], n_requests=1)
    m._measured = {}
    deltas = m.compute_deltas([REQUEST])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # bit-identical
    edit = kn.kn_edit(model, tok, REQUEST, m.sites(), cfg.method)
    embed = get_module(model, cfg.model.templates.embed).weight.detach().float()
    column = column_change(embed[edit.new], embed[edit.old], edit.c)
    assert m._measured["kn/neurons"] == [float(edit.neurons.sum())] and edit.neurons.sum() > 0
    for layer, module in enumerate(m.edited_modules()):
        name = f"{module}.weight"
        chosen = edit.neurons[layer]
        if not chosen.any():
            assert name not in deltas
            continue
        d = deltas[name] if "llama" in model_name else deltas[name].T  # GPT-2 Conv1D stores (in, out)
        assert (d[:, ~chosen] == 0).all()
        torch.testing.assert_close(d[:, chosen], column[:, None].expand(-1, int(chosen.sum())))
    D.apply_(model, deltas)


def test_paper_variant_doubles_a_one_token_old_answer_and_keeps_special_tokens():
    cfg, model, tok = _load("tiny-llama")
    paper = kn.kn_edit(model, tok, REQUEST, _sites(cfg, "pre"), config.load(["model=tiny-llama", "method=kn",
                                                                             "method.steps=2"]).method)
    fixed = kn.kn_edit(model, tok, REQUEST, _sites(cfg, "pre"), config.load(
        ["model=tiny-llama", "method=kn", "method.steps=2", "method.variant=corrected"]).method)
    assert fixed.c == 1.0 and paper.c == (2.0 if len(paper.old) == 1 else 1.0)
    assert len(fixed.old) == len(fixed.new) and len(paper.old) == len(paper.new)


def test_a_request_with_no_selected_neuron_is_reported_not_a_crash(env, monkeypatch):
    cfg = config.load(["model=tiny-llama", "method=kn", "method.steps=2"])
    model, tok = models.load(cfg.model, models.cache_root())
    monkeypatch.setattr(kn, "attribute", lambda *a, **k: -torch.ones(cfg.model.n_layers, 8))
    m = KN(cfg, model, tok, [], n_requests=1)
    m._measured = {}
    assert m.compute_deltas([REQUEST]) == {}
    assert m._measured["kn/no_neurons"] == [1.0] and m._measured["kn/neurons"] == [0.0]


@pytest.mark.parametrize("bad,match", [("method.neuron=mid", "neuron"), ("method.variant=new", "variant"),
                                       ("method.steps=0", "steps"), ("method.adaptive_threshold=0", "adaptive_threshold"),
                                       ("method.p=1.5", "method.p")])
def test_bad_kn_settings_fail_before_any_edit(bad, match):
    with pytest.raises(ConfigError, match=match):
        config.load(["model=tiny-llama", "method=kn", bad])


def test_without_a_ground_truth_the_models_own_answer_is_attributed(monkeypatch):
    cfg, model, tok = _load("tiny-llama")
    seen = []
    real = kn.attribute
    monkeypatch.setattr(kn, "attribute", lambda m, ids, target, *a: seen.append(target) or real(m, ids, target, *a))
    hp = config.load(["model=tiny-llama", "method=kn", "method.steps=2"]).method
    bare = EditRequest(REQUEST.prompt, REQUEST.subject, REQUEST.target_new)
    edit = kn.kn_edit(model, tok, bare, _sites(cfg, "pre"), hp)
    assert seen == edit.old
    seen.clear()
    kn.kn_edit(model, tok, REQUEST, _sites(cfg, "pre"), hp)
    assert seen == tok(" French", add_special_tokens=False)["input_ids"]
