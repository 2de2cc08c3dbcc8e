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
    assert paper.new == tok("English")["input_ids"] and fixed.new == tok(" English", add_special_tokens=False)["input_ids"]


# Stand-ins for the two tokenizer families the paper ran, small enough to work by hand: GPT-2's byte-level BPE
# ("Ġ" marks a leading space; no BOS) and LLaMA's sentencepiece ("▁" prefixed to the text, BOS added, and a
# single token decodes without its space, so the reference's string concatenation glues "is" + "Paris").
WORDS = ["The", "capital", "of", "France", "is", "Paris", "Lyon", "city"]
CASE = EditRequest("The capital of France is", "France", "Lyon city", "Paris city")
ONE = EditRequest("The capital of France is", "France", "Lyon", "Paris")


def _gpt2_style():
    from tokenizers import Tokenizer, decoders, models as tm, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["[UNK]"] + WORDS + ["Ġ" + w for w in WORDS])}  # Paris 6, ĠParis 14
    core = Tokenizer(tm.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer, core.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="[UNK]"), vocab


def _llama_style():
    from tokenizers import Tokenizer, decoders, models as tm, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<s>", "[UNK]"] + ["▁" + w for w in WORDS])}  # ▁The 2 … ▁city 9
    core = Tokenizer(tm.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", unk_token="[UNK]"), vocab


def _scripted(monkeypatch, model_type, following):
    """A stand-in model of `model_type` whose argmax next token is `following[last input id]`; `attribute`
    records (input ids, target) and attributes 1 to every neuron."""
    from types import SimpleNamespace
    calls = []
    monkeypatch.setattr(kn, "next_token", lambda _m, ids: following[ids[-1]])
    monkeypatch.setattr(kn, "greedy", lambda _m, _t, ids, n: [following[ids[-1]]] * n)
    monkeypatch.setattr(kn, "attribute", lambda _m, ids, y, *a: calls.append((list(ids), y)) or torch.ones(2, 3))
    return SimpleNamespace(config=SimpleNamespace(model_type=model_type)), calls


def _hp(*overrides):
    return config.load(["model=tiny-llama", "method=kn", *overrides]).method


def test_paper_variant_on_a_gpt2_tokenizer_by_hand(monkeypatch):
    """GPT-2: y* = encode("Paris city") = [Paris, Ġcity], no space added; the check `model_type == "gpt"` fails
    for "gpt2", so both tokens are attributed after the prompt; ŷ has len(y_new) = 2 tokens (c = 1), a
    one-token target gives a one-token ŷ (c = 2)."""
    tok, v = _gpt2_style()
    model, calls = _scripted(monkeypatch, "gpt2", {v["Ġis"]: v["ĠParis"], v["ĠParis"]: v["Ġcity"]})
    prompt = [v[w] for w in ("The", "Ġcapital", "Ġof", "ĠFrance", "Ġis")]
    edit = kn.kn_edit(model, tok, CASE, [], _hp())
    assert calls == [(prompt, v["Paris"]), (prompt, v["Ġcity"])]
    assert edit.new == [v["Lyon"], v["Ġcity"]] and edit.old == [v["ĠParis"], v["Ġcity"]] and edit.c == 1.0
    calls.clear()
    edit = kn.kn_edit(model, tok, ONE, [], _hp())
    assert calls == [(prompt, v["Paris"])] and edit.new == [v["Lyon"]] and edit.old == [v["ĠParis"]]
    assert edit.c == 2.0


def test_paper_variant_on_a_llama_tokenizer_by_hand(monkeypatch):
    """LLaMA: y* = encode("Paris city") = [<s>, ▁Paris, ▁city]; model type "llama" re-tokenizes per token: step
    t after the prompt string + decode(argmax 0..t-1); decode(▁Paris) is "Paris", so step 1 sees "…isParis"
    (unknown here). y_new = [<s>, ▁Lyon, ▁city]: ŷ has 3 tokens, and a one-token target still gives 2 (c = 1)."""
    tok, v = _llama_style()
    model, calls = _scripted(monkeypatch, "llama", {v["▁is"]: v["▁Paris"], v["[UNK]"]: v["▁city"]})
    prompt = [v[w] for w in ("<s>", "▁The", "▁capital", "▁of", "▁France", "▁is")]
    glued = prompt[:-1] + [v["[UNK]"]]  # "…isParis", then "…isPariscity"
    edit = kn.kn_edit(model, tok, CASE, [], _hp())
    assert calls == [(prompt, v["<s>"]), (glued, v["▁Paris"]), (glued, v["▁city"])]
    assert edit.new == [v["<s>"], v["▁Lyon"], v["▁city"]] and edit.old == [v["▁Paris"], v["▁city"], v["▁city"]]
    assert edit.c == 1.0
    calls.clear()
    edit = kn.kn_edit(model, tok, ONE, [], _hp())
    assert calls == [(prompt, v["<s>"]), (glued, v["▁Paris"])]
    assert edit.new == [v["<s>"], v["▁Lyon"]] and edit.old == [v["▁Paris"], v["▁city"]] and edit.c == 1.0
    calls.clear()
    kn.kn_edit(model, tok, CASE, [], _hp("method.per_step=false"))  # the override: all after the prompt
    assert calls == [(prompt, v["<s>"]), (prompt, v["▁Paris"]), (prompt, v["▁city"])]


@pytest.mark.parametrize("style,model_type", [("gpt2", "gpt2"), ("llama", "llama")])
def test_corrected_variant_by_hand(monkeypatch, style, model_type):
    """Corrected: y* = " Paris city" without special tokens, teacher forced on every architecture; c = 1."""
    tok, v = _gpt2_style() if style == "gpt2" else _llama_style()
    sp = "Ġ" if style == "gpt2" else "▁"
    model, calls = _scripted(monkeypatch, model_type, {v[sp + "is"]: v[sp + "Paris"]})
    prompt = tok(CASE.prompt)["input_ids"]
    edit = kn.kn_edit(model, tok, ONE, [], _hp("method.variant=corrected"))
    assert calls == [(prompt, v[sp + "Paris"])] and edit.new == [v[sp + "Lyon"]] and edit.c == 1.0
    calls.clear()
    edit = kn.kn_edit(model, tok, CASE, [], _hp("method.variant=corrected"))
    assert calls == [(prompt, v[sp + "Paris"]), (prompt + [v[sp + "Paris"]], v[sp + "city"])]
    assert edit.new == [v[sp + "Lyon"], v[sp + "city"]] and len(edit.old) == 2 and edit.c == 1.0


def test_paper_per_step_follows_the_references_model_type_check():
    assert [kn.paper_per_step(t) for t in ("gpt2", "gptj", "gpt_neo", "llama", "qwen2", "mistral")] == [
        False, False, False, True, True, False]
    assert kn.reference_type("qwen2") == "qwen" and kn.reference_type("gpt2") == "gpt2"
    assert kn.c([5]) == 2.0 and kn.c([5, 6]) == 1.0


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
    assert seen == tok("French")["input_ids"]  # the paper's y*: the raw string, encoded with special tokens
