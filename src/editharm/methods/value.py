"""The value step shared by ROME (its v*) and MEMIT (its z): one code path, the reference's semantics.

    δ* = argmin_δ L(δ)   over a module's output at the subject's last token, v = v0 + δ
    L(δ) = −mean log P_δ(target | templated prompts) + kl_factor · KL(P_δ ‖ P₀) + weight_decay · ‖δ‖ / ‖v0‖²

as `compute_v` of kmeng01/rome (and EasyEdit, the paper's code) computes it, ROME eq. 4:
- **KL direction**: KL(P_δ ‖ P₀), the edited next-token distribution after "{subject} is a" against the
  unedited one (torch: `kl_div(log P₀, log P_δ, log_target=True)`), mean over the KL prompts;
- **steps**: `v_num_grad_steps` counts *loss evaluations*. Each evaluation stops the loop when the loss is
  below `stop_loss` or it is the last one; otherwise one Adam step, then δ is clamped to
  ‖δ‖ ≤ clamp_norm_factor · ‖v0‖. So 25 steps make at most 24 updates, and the returned δ is the one the
  last loss was computed for. The published hyperparameter files mean exactly this.
Checked against EasyEdit's ROME on SmolLM2 (`tests/methods/test_rome_parity.py`,
`benchmarks/rome_parity.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
from torch import nn

from editharm.methods._shared import frozen, hidden, subject_last
from editharm.nethook import get_module
from editharm.scoring import continuation, pad

STOP_LOSS = 5e-2
"""The reference's early stop: the loop ends once L(δ) < 0.05."""


@dataclass
class ValueStep:
    """Hyperparameters ROME (its v*) and MEMIT (its z) share: the value optimisation and the statistics."""

    v_num_grad_steps: int = 25
    """Loss evaluations of the value optimisation (at most this minus one Adam updates), as in the reference."""
    v_lr: float = 0.5
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_autocast: Optional[str] = None
    """Run the value optimisation's forward passes in this dtype (`bfloat16`: ~1.5x faster on CPUs with
    AMX); the keys, the base value and the update stay float32."""
    mom2_n_tokens: int = 100_000
    mom2_seq_len: int = 256
    context_templates: Optional[list[str]] = None
    """Fixed context templates ("…. {}", the first exactly "{}") instead of sampling them: to reproduce
    another run's or implementation's edits exactly."""


class ValueLoss(NamedTuple):
    total: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor


def value_loss(target_logp: torch.Tensor, kl_logp: torch.Tensor, kl_logp0: torch.Tensor, delta: torch.Tensor,
               v0: torch.Tensor, kl_factor: float, weight_decay: float) -> ValueLoss:
    """L(δ) = NLL + kl_factor · KL(P_δ ‖ P₀) + weight_decay · ‖δ‖ / ‖v0‖².

    `target_logp` (n, T): log P_δ of each gold target token after each templated prompt (NLL = its negated
    mean); `kl_logp`, `kl_logp0` (k, V): log P_δ and log P₀ of the next token at the KL prompts' subject;
    KL(P_δ ‖ P₀) = Σ_v P_δ(v) (log P_δ(v) − log P₀(v)), averaged over the k prompts."""
    nll = -target_logp.mean()
    kl = nn.functional.kl_div(kl_logp0, kl_logp, log_target=True, reduction="batchmean")
    return ValueLoss(nll + kl_factor * kl + weight_decay * delta.norm() / v0.norm() ** 2, nll, kl)


@dataclass
class ValueTrace:
    """What one value optimisation did; `metrics()` is what a run logs per edit under `value/`."""

    losses: list[float] = field(default_factory=list)
    """L(δ) at each evaluation."""
    nll: float = float("nan")
    kl: float = float("nan")
    updates: int = 0
    converged: bool = False
    """Stopped because L(δ) fell below the early-stop loss (else it ran out of evaluations)."""

    def metrics(self) -> dict[str, float]:
        return {"loss_evals": len(self.losses), "updates": self.updates, "loss": self.losses[-1],
                "nll": self.nll, "kl": self.kl, "converged": float(self.converged)}


def optimize_value(model: nn.Module, tok, module: str, prompts: list[str], subject: str, target: str,
                   kl_prompts: list[str], steps: int, lr: float, weight_decay: float, kl_factor: float,
                   clamp_norm_factor: float, stop_loss: float = STOP_LOSS,
                   autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, ValueTrace]:
    """`(v*, v0, trace)`: the output of `module` at the subject's last token that makes `target` likely.

    `prompts[0]` is the bare edit prompt (v0 is the module's output there); every prompt is followed by the
    target's tokens (teacher forced). `value_loss` is minimised with Adam on δ for at most `steps` loss
    evaluations (module docstring: the reference's stopping rule). Rows are left-padded so every needed
    logit sits in the last few positions: only those are computed. `autocast` runs the forward passes in
    that dtype (δ and the result stay float32).
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
    gold = torch.tensor(tgt, device=device).expand(n_rw, -1)[..., None]
    state: dict = {}
    trace = ValueTrace()

    def hook(_m, _args, out):
        h = hidden(out)
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
            for step in range(steps):
                with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                                   logits_to_keep=keep).logits
                logp = logits.float().log_softmax(-1)
                v0, delta = state["v0"], state["delta"]
                kl_logp = logp[all_rows[n_rw:], kl_at]
                state.setdefault("kl_logp0", kl_logp.detach())
                loss = value_loss(logp[:n_rw, keep - len(tgt):].gather(-1, gold)[..., 0], kl_logp, state["kl_logp0"],
                                  delta, v0, kl_factor, weight_decay)
                trace.losses.append(loss.total.item())
                trace.nll, trace.kl = loss.nll.item(), loss.kl.item()
                trace.converged = trace.losses[-1] < stop_loss
                if trace.converged or step == steps - 1:
                    break
                if opt is None:
                    opt = torch.optim.Adam([delta], lr=lr)
                opt.zero_grad()
                loss.total.backward()
                opt.step()
                trace.updates += 1
                with torch.no_grad():
                    limit = clamp_norm_factor * v0.norm()
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
    finally:
        handle.remove()
    return (state["v0"] + state["delta"].detach()), state["v0"], trace


def target_value(model: nn.Module, tok, module: str, request, templates: list[str], step: ValueStep,
                 base: torch.Tensor) -> tuple[torch.Tensor, ValueTrace]:
    """`(base + δ, trace)`, δ from `optimize_value` at `module` over the templated edit prompts; `base` is the
    float32 output of `module` at the subject in the bare prompt (so an autocast run only changes δ)."""
    prompts = [t.format(request.prompt) for t in templates]
    value, seen, trace = optimize_value(model, tok, module, prompts, request.subject, request.target_new,
                                        [f"{request.subject} is a"], step.v_num_grad_steps, step.v_lr,
                                        step.v_weight_decay, step.kl_factor, step.clamp_norm_factor,
                                        autocast=getattr(torch, step.v_autocast) if step.v_autocast else None)
    return base + (value - seen), trace
