"""Math and activation plumbing shared by ROME and MEMIT (one copy; neither method subclasses the other).

- `context_templates`: ROME's prefixes "{generated text}. {}", sampled once per run from a seed.
- `subject_last`: the position of the subject's last token in a text.
- `keys_at`: a module's input (and output) at given positions, from one early-exit forward pass.
- `optimize_value`: the target value v* = v0 + δ, δ added to a module's output at the subject, trained on
  the target's NLL with a KL term on "{subject} is a" and weight decay, clamped in norm (ROME §3.1, MEMIT's z).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from editharm.nethook import StopForward, get_module, run_until
from editharm.scoring import continuation, pad

TEMPLATE_SEEDS = ("The", "Therefore", "Because", "I", "You")


@dataclass
class ValueStep:
    """Hyperparameters ROME (its v*) and MEMIT (its z) share: the value optimisation and the statistics."""

    v_num_grad_steps: int = 25
    v_lr: float = 0.5
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_autocast: Optional[str] = None
    """Run the value optimisation's forward passes in this dtype (`bfloat16`: ~1.5x faster on CPUs with
    AMX); the keys, the base value and the update stay float32."""
    mom2_n_tokens: int = 100_000
    mom2_seq_len: int = 256


@torch.no_grad()
def context_templates(model: nn.Module, tok, length_params: list[list[int]], seed: int) -> list[str]:
    """`["{}"]` plus, for each `[length, n]`, n prefixes of `length` sampled tokens (top-k 5), each
    followed by ". {}". Sampling uses its own seeded RNG state, so the global RNG is untouched."""
    templates = ["{}"]
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for length, n in length_params:
            per_seed = max(1, n // len(TEMPLATE_SEEDS))
            for start in TEMPLATE_SEEDS:
                ids = tok(start, return_tensors="pt")["input_ids"].to(device)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=5,
                                     max_new_tokens=length, min_new_tokens=length, num_return_sequences=per_seed,
                                     pad_token_id=tok.pad_token_id or tok.eos_token_id, top_p=None, temperature=None)
                for seq in out:
                    text = tok.decode(seq, skip_special_tokens=True).replace("{", " ").replace("}", " ")
                    templates.append(text + ". {}")
    return templates


def subject_last(tok, text: str, subject: str) -> int:
    """Index of the subject's last token in `tok(text)` (the last occurrence of the subject)."""
    end = text.rindex(subject) + len(subject)
    return len(tok(text[:end])["input_ids"]) - 1


@torch.no_grad()
def keys_at(model: nn.Module, tok, module: str, texts: list[str], positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(inputs, outputs)` of `module` at `positions[i]` of `texts[i]`, each (n, dim); the forward pass stops
    right after `module` has run."""
    device = next(model.parameters()).device
    ids, mask = pad([tok(t)["input_ids"] for t in texts], tok, device)
    rows = torch.arange(len(texts), device=device)
    pos = torch.tensor(positions, device=device)
    got = {}

    def hook(_m, args, out):
        got["in"] = args[0][rows, pos].float()
        got["out"] = _hidden(out)[rows, pos].float()
        raise StopForward

    handle = get_module(model, module).register_forward_hook(hook)
    try:
        run_until(model, input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        handle.remove()
    return got["in"], got["out"]


def _hidden(out):
    """A module's hidden-state output (transformer blocks may return a tuple)."""
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def frozen(model: nn.Module):
    """No parameter gradients inside (faster backward passes); flags restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def optimize_value(model: nn.Module, tok, module: str, prompts: list[str], subject: str, target: str,
                   kl_prompts: list[str], steps: int, lr: float, weight_decay: float, kl_factor: float,
                   clamp_norm_factor: float, stop_loss: float = 5e-2,
                   autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(v*, v0)`: the output of `module` at the subject's last token that makes `target` likely.

    `prompts[0]` is the bare edit prompt (v0 is the module's output there); every prompt is followed by the
    target's tokens (teacher forced). Loss = mean NLL of the target + kl_factor · KL(P₀ ‖ P_δ) at the subject
    of `kl_prompts` + weight_decay · ‖δ‖ / ‖v0‖²; Adam on δ, with ‖δ‖ ≤ clamp_norm_factor · ‖v0‖ after each step.
    Rows are left-padded so every needed logit sits in the last few positions: only those are computed.
    `autocast` runs the forward passes in that dtype (δ and the result stay float32).
    """
    device = next(model.parameters()).device
    tgt = tok(continuation(target), add_special_tokens=False)["input_ids"]
    rows = [tok(p)["input_ids"] + tgt[:-1] for p in prompts] + [tok(k)["input_ids"] for k in kl_prompts]
    pos = [subject_last(tok, p, subject) for p in prompts] + [subject_last(tok, k, subject) for k in kl_prompts]
    width = max(len(r) for r in rows)
    ids, mask = pad(rows, tok, device, left=True)
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    n_rw, all_rows = len(prompts), torch.arange(len(rows), device=device)
    pos_t = torch.tensor([width - len(r) + p for r, p in zip(rows, pos)], device=device)
    from_end = [len(r) - p for r, p in zip(rows[n_rw:], pos[n_rw:])]
    keep = max([len(tgt), *from_end])  # logits needed: the target's and the KL prompts' subject positions
    kl_at = torch.tensor([keep - f for f in from_end], device=device)
    gold = torch.tensor(tgt, device=device)
    state: dict = {}

    def hook(_m, _args, out):
        h = _hidden(out)
        if "v0" not in state:
            state["v0"] = h[0, pos_t[0]].detach().float()
            state["delta"] = torch.zeros_like(state["v0"], requires_grad=True)
        h = h.clone()
        h[all_rows, pos_t] = h[all_rows, pos_t] + state["delta"].to(h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = get_module(model, module).register_forward_hook(hook)
    try:
        with frozen(model), torch.enable_grad():
            opt = None
            for _ in range(steps):
                with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                                   logits_to_keep=keep).logits
                logp = logits.float().log_softmax(-1)
                if opt is None:
                    opt = torch.optim.Adam([state["delta"]], lr=lr)
                nll = -logp[:n_rw, keep - len(tgt):].gather(-1, gold.expand(n_rw, -1)[..., None]).mean()
                kl_now = logp[all_rows[n_rw:], kl_at]
                state.setdefault("kl0", kl_now.detach())
                kl = nn.functional.kl_div(kl_now, state["kl0"], log_target=True, reduction="batchmean")
                v0, delta = state["v0"], state["delta"]
                loss = nll + kl_factor * kl + weight_decay * delta.norm() / v0.norm() ** 2
                if loss.item() < stop_loss:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    limit = clamp_norm_factor * v0.norm()
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
    finally:
        handle.remove()
    return (state["v0"] + state["delta"].detach()), state["v0"]


def target_value(model: nn.Module, tok, module: str, request, templates: list[str], step: ValueStep,
                 base: torch.Tensor) -> torch.Tensor:
    """base + δ, δ from `optimize_value` at `module` over the templated edit prompts; `base` is the float32
    output of `module` at the subject in the bare prompt (so an autocast run only changes δ)."""
    prompts = [t.format(request.prompt) for t in templates]
    value, seen = optimize_value(model, tok, module, prompts, request.subject, request.target_new,
                                 [f"{request.subject} is a"], step.v_num_grad_steps, step.v_lr, step.v_weight_decay,
                                 step.kl_factor, step.clamp_norm_factor,
                                 autocast=getattr(torch, step.v_autocast) if step.v_autocast else None)
    return base + (value - seen)
