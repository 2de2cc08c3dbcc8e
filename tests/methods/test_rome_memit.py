"""ROME and MEMIT on the tiny Llama and GPT-2: invariants, normal equations, and that edits take.

The edited layer must sit below the last block: a change at the last block's subject position reaches no
later position (no attention after it), so it cannot move the target's probability."""
import pytest
import torch

from editharm import config, deltas as D, models, scoring
from editharm.data import EditRequest
from editharm.methods._shared import keys_at, subject_last
from editharm.guards import nullspace_projector
from editharm.methods.memit import MEMIT, alphaedit_update, compute_z, layer_keys, memit_update
from editharm.methods.rome import ROME, compute_u, compute_v, rank_one_update
from editharm.nethook import to_param_layout

REQUESTS = [EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English"),
            EditRequest("Toko Yasuda plays the", "Toko Yasuda", "piano")]
# A random tiny model barely reacts to one position's hidden state (its logits are near uniform), so the
# value step is smaller and its norm bound looser than for a real model; the KL term stays on. Where a test
# checks that P(target) rises, the templates are only the bare prompt: on a random model, raising the
# average over random prefixes says nothing about the bare prompt.
BARE = "method.context_template_length_params=[]"
FAST = ["method.v_num_grad_steps=20", "method.v_lr=0.1", "method.clamp_norm_factor=100", "method.v_weight_decay=0",
        "method.context_template_length_params=[[3,5]]"]


def _module(cls, model_name, method, *over):
    cfg = config.load([f"model={model_name}", f"method={method}", *FAST, *over])
    model, tok = models.load(cfg.model, models.cache_root())
    module = cls(cfg, model, tok, [], n_requests=len(REQUESTS))
    module.on_fit_start()
    return module


def _nll(module, requests):
    return [s.nll for s in scoring.score(module.model, module.tokenizer, [r.prompt for r in requests],
                                         [r.target_new for r in requests])]


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_rome_update_maps_the_subject_key_to_v_star(env, model_name):
    m = _module(ROME, model_name, "rome", "method.layer=0")
    r, module = REQUESTS[0], m.module_name("mlp_out", 0)
    u = compute_u(m.model, m.tokenizer, module, r, m._templates, None)
    pos = [subject_last(m.tokenizer, r.prompt, r.subject)]
    k_star, out_star = keys_at(m.model, m.tokenizer, module, [r.prompt], pos)
    v_star, _ = compute_v(m.model, m.tokenizer, module, r, m._templates, m.hp, out_star[0])
    name, stored = to_param_layout(m.model, module, rank_one_update(u, k_star[0], out_star[0], v_star))
    D.apply_(m.model, {name: stored})
    _, out_after = keys_at(m.model, m.tokenizer, module, [r.prompt], pos)
    torch.testing.assert_close(out_after[0], v_star, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out_star[0], v_star)


# tiny-gpt2 is left out of this one: its random GELU keys point nearly the same way at every position, so a
# rank-one update moves all positions, not just the subject's (measured: the target's NLL rose by 0.015 for
# one request). The update's own invariant is tested on both architectures above.
@pytest.mark.parametrize("model_name", ["tiny-llama"])
@pytest.mark.parametrize("mom2", [False, True])
def test_rome_deltas_leave_the_model_alone_and_raise_the_target(env, model_name, mom2):
    m = _module(ROME, model_name, "rome", "method.layer=0", f"method.mom2_adjustment={str(mom2).lower()}", BARE)
    for request in REQUESTS:
        before = {k: v.clone() for k, v in m.model.state_dict().items()}
        nll0 = _nll(m, [request])[0]
        deltas = m.compute_deltas([request])
        assert all(torch.equal(before[k], v) for k, v in m.model.state_dict().items())
        (name, delta), = deltas.items()
        assert name == m.module_name("mlp_out", 0) + ".weight" and delta.shape == m.model.get_parameter(name).shape
        D.apply_(m.model, deltas)
        assert _nll(m, [request])[0] < nll0 - 1e-3
        D.revert_(m.model, deltas)


def test_memit_update_solves_its_normal_equations():
    g = torch.Generator().manual_seed(0)
    d, k, n = 6, 10, 3
    R, K = torch.randn(d, n, generator=g), torch.randn(k, n, generator=g)
    X = torch.randn(k, 50, generator=g)
    C = X @ X.T / 50
    delta = memit_update(R, K, C, lam=2.0)
    torch.testing.assert_close((delta.double() @ (2.0 * C.double() + K.double() @ K.double().T)).float(),
                               (R @ K.T), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_memit_batch_leaves_the_model_alone_and_moves_every_hidden_state_to_its_target(env, model_name):
    """MEMIT's multi-layer solve: with λ → 0 and fewer requests than key dimensions, the updated layers put each
    request's hidden state at the last layer's block exactly on its target z. Whether that raises P(target) on a
    random model depends on the collateral change at the prompt's other positions (unprotected by the tiny corpus's
    C): it does on this tiny Llama, not on every seed of the tiny GPT-2, so the probability is checked on Llama."""
    deeper = ["model.architecture.num_hidden_layers=4", "model.n_layers=4"] if model_name == "tiny-llama" else \
        ["model.architecture.n_layer=4", "model.n_layers=4"]
    m = _module(MEMIT, model_name, "memit", *deeper, "method.layers=[0,1]", "method.mom2_update_weight=0.001", BARE)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    nll0 = _nll(m, REQUESTS)
    block = m.module_name("layer", 1)
    prompts = [r.prompt for r in REQUESTS]
    positions = [subject_last(m.tokenizer, r.prompt, r.subject) for r in REQUESTS]
    H0 = keys_at(m.model, m.tokenizer, block, prompts, positions)[1]
    Z, _ = compute_z(m.model, m.tokenizer, block, REQUESTS, m._templates, m.hp, H0)
    deltas = m.compute_deltas(REQUESTS)
    assert all(torch.equal(before[k], v) for k, v in m.model.state_dict().items())
    assert set(deltas) == {m.module_name("mlp_out", i) + ".weight" for i in (0, 1)}
    D.apply_(m.model, deltas)
    H1 = keys_at(m.model, m.tokenizer, block, prompts, positions)[1]
    assert ((Z - H1).norm(dim=1) < 1e-4 * (Z - H0).norm(dim=1)).all()
    if model_name == "tiny-llama":
        assert all(a < b - 1e-3 for a, b in zip(_nll(m, REQUESTS), nll0))


def test_alphaedit_update_solves_its_normal_equations_and_spares_protected_keys():
    g = torch.Generator().manual_seed(0)
    d, k, n = 5, 8, 2
    basis = torch.randn(k, 3, generator=g)
    K0 = basis @ torch.randn(3, 100, generator=g)  # preserved keys: a 3-dim subspace of the 8-dim input
    P = nullspace_projector(K0 @ K0.T / 100, 1e-2)
    R, K = torch.randn(d, n, generator=g), torch.randn(k, n, generator=g)
    kp = P @ torch.randn(k, generator=g)  # a key edited earlier (inside the null space)
    C_prev = 50.0 * torch.outer(kp, kp)
    delta = alphaedit_update(R, K, P, C_prev, l2=1.0)
    A = (K.double() @ K.double().T + C_prev.double()) @ P.double() + torch.eye(k, dtype=torch.float64)
    torch.testing.assert_close(delta.double() @ A, R.double() @ K.double().T @ P.double(), rtol=1e-6, atol=1e-6)
    k0 = basis @ torch.randn(3, generator=g)
    W = torch.randn(d, k, generator=g)
    torch.testing.assert_close((W + delta) @ k0, W @ k0, rtol=1e-4, atol=1e-4)  # (W + Δ) k₀ = W k₀
    unprotected = alphaedit_update(R, K, P, torch.zeros(k, k), l2=1.0)
    assert (delta @ kp).norm() < 0.2 * (unprotected @ kp).norm()  # earlier edits are protected too


def test_alphaedit_remembers_only_kept_edits(env):
    m = _module(MEMIT, "tiny-llama", "memit", "method.layers=[0]", "method.nullspace=true", BARE)
    module = m.module_name("mlp_out", 0)
    assert float(m._edited[module].abs().sum()) == 0
    deltas = m.compute_deltas(REQUESTS[:1])
    assert float(m._edited[module].abs().sum()) == 0  # computed, not yet kept
    D.apply_(m.model, deltas)
    m.edits_kept()
    assert float(torch.trace(m._edited[module])) > 0
    assert set(deltas) == {module + ".weight"} and D.is_finite(deltas)


def test_alphaedit_defaults_are_its_authors_and_the_null_space_is_logged(env):
    """L2 = 10 and an absolute eigenvalue cut at 2e-2, as every hparams file of jianghoucheng/AlphaEdit; each
    step measures each layer's null-space dimension: the number of eigenvalues of C below the cut."""
    hp = config.load(["model=tiny-llama", "method=memit"]).method
    assert (hp.nullspace_l2, hp.nullspace_threshold, hp.nullspace_rule) == (10.0, 2e-2, "absolute")
    for rule, threshold in (("absolute", "0.02"), ("relative", "0.01")):
        m = _module(MEMIT, "tiny-llama", "memit", "method.layers=[0]", "method.nullspace=true", BARE,
                    f"method.nullspace_rule={rule}", f"method.nullspace_threshold={threshold}")
        module = m.module_name("mlp_out", 0)
        eigenvalues = torch.linalg.eigvalsh(m._stats[module].double())
        cut = float(threshold) * (eigenvalues.max() if rule == "relative" else 1.0)
        m.compute_deltas(REQUESTS[:1])
        assert m._measured[f"nullspace/{module}/null_dim"] == [float((eigenvalues < cut).sum())]
        if rule == "relative":  # (the tiny model's λ_max is below 2e-2: the absolute cut keeps every direction)
            assert 0 < m._measured[f"nullspace/{module}/null_dim"][0] < eigenvalues.numel()


@pytest.mark.parametrize("model_name,module", [("tiny-llama", "model.layers.0.mlp.down_proj"),
                                               ("tiny-gpt2", "transformer.h.0.mlp.c_proj")])
def test_memit_keys_batched_are_each_requests_template_means(model_name, module):
    """K's column i = (k(bare prompt) + mean of the templated keys) / 2, whatever requests share a pass."""
    model, tok = models.load(config.load([f"model={model_name}"]).model, models.cache_root())
    templates = ["{}", "Once. {}", "Later that year, {}"]
    requests = [*REQUESTS, EditRequest("Who founded the city of Rome? It was", "Rome", "Romulus")]
    K = layer_keys(model, tok, module, requests, templates, batch_size=2)
    for i, r in enumerate(requests):
        texts = [t.format(r.prompt) for t in templates]
        keys = keys_at(model, tok, module, texts, [subject_last(tok, t, r.subject) for t in texts])[0]
        torch.testing.assert_close(K[:, i], (keys[0] + keys[1:].mean(0)) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bos", [False, True])
def test_context_templates_count_the_seed_word_in_their_length(bos, monkeypatch):
    """As the reference's `generate_fast(max_out_len=length)`: `length` tokens in all, the seed word (and a BOS
    the tokenizer adds) included; a seed word already that long is the template alone."""
    from tokenizers import processors

    from editharm.methods._shared import context_templates

    model, _ = models.load(config.load(["model=tiny-llama", "method=rome"]).model, models.cache_root())
    tok = models.byte_tokenizer()
    if bos:  # a Llama-style tokenizer: "<s>" before every text
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    assert len(tok("I")["input_ids"]) == 1 + bos
    made, generate = [], model.generate

    def spy(**kw):
        out = generate(**kw)
        made.append((kw["input_ids"].shape[1], out.shape[1]))
        return out

    monkeypatch.setattr(model, "generate", spy)
    templates = context_templates(model, tok, [[5, 5]], seed=0)
    # bytes: The 3, Therefore 9, Because 7, I 1, You 3; with BOS one more each; total 5 where shorter
    assert made == ([(4, 5), (2, 5), (4, 5)] if bos else [(3, 5), (1, 5), (3, 5)])
    assert len(templates) == 6 and templates[0] == "{}"
    assert templates[2:4] == ["Therefore. {}", "Because. {}"]
    assert all(t.startswith(w) for t, w in zip(templates[1:], ["The", "Therefore", "Because", "I", "You"]))
