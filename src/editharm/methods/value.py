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
Requests are optimised together (`optimize_values`: one forward/backward per step for a batch, each request
with its own δ, Adam state and stop), and each step runs only the part of each row that δ reaches: the
tokens before the subject are run once and kept as a KV cache (`_value_rows.py`).
Checked against EasyEdit's ROME on SmolLM2 (`tests/methods/test_rome_parity.py`,
`benchmarks/rome_parity.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
from torch import nn

from editharm.methods._shared import frozen, hidden, lowered
from editharm.methods._value_rows import Batch, Rows, tokenise
from editharm.nethook import get_module
from editharm.stats import KeyStatistics

STOP_LOSS = 5e-2
"""The reference's early stop: the loop ends once L(δ) < 0.05."""


@dataclass
class ValueStep(KeyStatistics):
    """Hyperparameters ROME (its v*) and MEMIT (its z) share: the value optimisation and the statistics."""

    v_num_grad_steps: int = 25
    """Loss evaluations of the value optimisation (at most this minus one Adam updates), as in the reference."""
    v_lr: float = 0.5
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_autocast: Optional[str] = None
    """Run the value optimisation on a copy of the model in this dtype (`bfloat16`), with eager attention:
    weights cast once per edit, not at every product as `torch.autocast` did (SmolLM2 ROME, 8 CounterFact
    cases: x1.44 against float32, ΔW cosine 0.992; `benchmarks/value_dtype.py`). The keys, the base value and
    the update stay float32; only δ is found in this dtype. `auto`: bfloat16 where the device multiplies it
    natively, float32 (null) elsewhere; null: float32, as the reference."""
    v_cache_prefix: bool = True
    """Run each row's tokens before the subject once and keep them as a KV cache (δ cannot reach them);
    false runs whole rows at every step, as the reference does: the same numbers to float precision."""
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


class ValueQuery(NamedTuple):
    """One request of a value optimisation: `prompts[0]` the bare edit prompt (v0 is read there), the rest its
    templated copies; each is followed by the target's tokens (teacher forced). `kl_prompts` hold the
    subject whose next-token distribution the KL term keeps."""

    prompts: list[str]
    subject: str
    target: str
    kl_prompts: list[str]


class _Values:
    """Per-request state of a batched value optimisation: v0, δ (one leaf tensor each) and P₀ at the KL
    prompts, all set at the first evaluation."""

    def __init__(self, n: int):
        self.v0: list[torch.Tensor | None] = [None] * n
        self.delta: list[torch.Tensor | None] = [None] * n
        self.kl_logp0: list[torch.Tensor | None] = [None] * n


def _evaluate(model: nn.Module, module: str, rows: list[Rows], chunk: list[int], batch: Batch, state: _Values,
              kl_factor: float, weight_decay: float) -> list[ValueLoss]:
    """L(δ_i) for the requests `chunk` (their rows are `batch`), from one forward pass: each row adds its own
    request's δ at its subject position."""
    device = batch.ids.device
    every = torch.arange(len(batch.owner), device=device)

    def hook(_m, _args, out):
        h = hidden(out)
        # indices where this layer runs (a model spread by device_map may hold it on another device)
        rows, at, owner = every.to(h.device), batch.at.to(h.device), batch.owner.to(h.device)
        for j, i in enumerate(chunk):
            if state.v0[i] is None:
                state.v0[i] = h[batch.first[j], at[batch.first[j]]].detach().float()
                state.delta[i] = torch.zeros_like(state.v0[i], requires_grad=True)
        deltas = torch.stack([state.delta[i] for i in chunk])
        h = h.clone()
        h[rows, at] = h[rows, at] + deltas[owner].to(h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = get_module(model, module).register_forward_hook(hook)
    try:
        logp = batch.logits(model).float().log_softmax(-1)
    finally:
        handle.remove()
    losses = []
    for i, (target_logp, kl_logp) in zip(chunk, _picked(logp, [rows[i] for i in chunk], batch)):
        if state.kl_logp0[i] is None:
            state.kl_logp0[i] = kl_logp.detach()
        losses.append(value_loss(target_logp, kl_logp, state.kl_logp0[i], state.delta[i], state.v0[i],
                                 kl_factor, weight_decay))
    return losses


def _picked(logp: torch.Tensor, requests: list[Rows], batch: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`(target_logp (n_rw, |target|), kl_logp (KL rows, V))` of each request from the batch's `logp` (rows, keep,
    V), read by two index operations over the whole batch: the backward of each index operation writes a zero
    tensor of logp's full size, so one per request made a batched step's backward grow with the square of its
    requests (MEMIT, 32 requests per pass: most of the step's time)."""
    keep, kl, tgt = batch.keep, ([], []), ([], [], [])
    for q, a, end in zip(requests, batch.first, batch.first[1:]):
        kl[0].extend(range(a + q.n_rw, end))
        kl[1].extend(keep - f for f in q.kl_from_end())
        for r in range(a, a + q.n_rw):
            tgt[0].extend([r] * len(q.tgt))
            tgt[1].extend(range(keep - len(q.tgt), keep))
            tgt[2].extend(q.tgt)
    kl_all = logp[tuple(torch.tensor(ix, device=logp.device) for ix in kl)]
    tgt_all = logp[tuple(torch.tensor(ix, device=logp.device) for ix in tgt)]
    out, k, t = [], 0, 0
    for q in requests:
        n_kl, n_t = len(q.rows) - q.n_rw, q.n_rw * len(q.tgt)
        out.append((tgt_all[t:t + n_t].view(q.n_rw, len(q.tgt)), kl_all[k:k + n_kl]))
        k, t = k + n_kl, t + n_t
    return out


def optimize_values(model: nn.Module, tok, module: str, queries: list[ValueQuery], steps: int, lr: float,
                    weight_decay: float, kl_factor: float, clamp_norm_factor: float, stop_loss: float = STOP_LOSS,
                    autocast: torch.dtype | None = None, batch_size: int | None = None,
                    cache_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[ValueTrace]]:
    """`(V*, V0, traces)`, each row the output of `module` at a request's subject that makes its target likely.

    Every request minimises its own `value_loss` with its own δ and Adam state, for at most `steps` loss
    evaluations under the module docstring's stopping rule, applied per request: a request that stopped
    keeps the δ its last loss was computed for and leaves the batch. Up to `batch_size` requests (all when
    None) share each forward/backward pass; their rows never interact, so the gradient of the summed loss
    with respect to δ_i is request i's own, and `batch_size=1` computes exactly the one-at-a-time loop. The
    groups of `batch_size` requests are fixed: each runs its prefixes once, and a request that stops leaves
    its group's batch (`Batch.subset`) without the rest being run again.
    `autocast` runs the passes on a copy of the model in that dtype (`_shared.lowered`; δ and the results
    stay float32); `cache_prefix` runs the tokens before each subject once (`_value_rows.Batch`).
    """
    if not queries:
        raise ValueError("optimize_values needs at least one request")
    rows = [tokenise(tok, q.prompts, q.subject, q.target, q.kl_prompts) for q in queries]
    model = model if autocast is None else lowered(model, autocast)
    state, traces = _Values(len(queries)), [ValueTrace() for _ in queries]
    size = batch_size or len(queries)
    # fixed groups of up to `size` requests; each runs its prefixes once and only sheds requests that stop
    groups = [list(range(c, min(c + size, len(queries)))) for c in range(0, len(queries), size)]
    active, opt = set(range(len(queries))), None
    with frozen(model), torch.enable_grad():
        batches = [Batch(model, tok, [rows[i] for i in g], cache_prefix) for g in groups]
        for step in range(steps):
            stepping = []
            for k, group in enumerate(groups):
                if len(live := [i for i in group if i in active]) < len(group):
                    if not live:
                        continue
                    batches[k] = batches[k].subset([group.index(i) for i in live])
                    groups[k] = group = live
                going = []
                for i, loss in zip(group, _evaluate(model, module, rows, group, batches[k], state,
                                                    kl_factor, weight_decay)):
                    trace = traces[i]
                    trace.losses.append(loss.total.item())
                    trace.nll, trace.kl = loss.nll.item(), loss.kl.item()
                    trace.converged = trace.losses[-1] < stop_loss
                    if not (trace.converged or step == steps - 1):
                        going.append(loss.total)
                        stepping.append(i)
                if going:
                    torch.stack(going).sum().backward()
            if not stepping:
                break
            if opt is None:  # per-parameter state: one Adam per request, requests that stopped have no grad
                opt = torch.optim.Adam(state.delta, lr=lr)
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                for i in stepping:
                    traces[i].updates += 1
                    delta, limit = state.delta[i], clamp_norm_factor * state.v0[i].norm()
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
            active = set(stepping)
    v0 = torch.stack(state.v0)
    return v0 + torch.stack([d.detach() for d in state.delta]), v0, traces


def optimize_value(model: nn.Module, tok, module: str, prompts: list[str], subject: str, target: str,
                   kl_prompts: list[str], steps: int, lr: float, weight_decay: float, kl_factor: float,
                   clamp_norm_factor: float, stop_loss: float = STOP_LOSS,
                   autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, ValueTrace]:
    """`(v*, v0, trace)` of one request: `optimize_values` of a batch of one."""
    v, v0, traces = optimize_values(model, tok, module, [ValueQuery(prompts, subject, target, kl_prompts)], steps,
                                    lr, weight_decay, kl_factor, clamp_norm_factor, stop_loss, autocast)
    return v[0], v0[0], traces[0]


def target_values(model: nn.Module, tok, module: str, requests: list, templates: list[str], step: ValueStep,
                  bases: torch.Tensor, batch_size: int | None = None) -> tuple[torch.Tensor, list[ValueTrace]]:
    """`(bases + Δ, traces)`, row i's δ from `optimize_values` at `module` over request i's templated edit
    prompts; `bases[i]` is the float32 output of `module` at request i's subject in its bare prompt (so an
    autocast run only changes δ). `batch_size` requests share a forward pass (None: all)."""
    queries = [ValueQuery([t.format(r.prompt) for t in templates], r.subject, r.target_new, [f"{r.subject} is a"])
               for r in requests]
    values, seen, traces = optimize_values(
        model, tok, module, queries, step.v_num_grad_steps, step.v_lr, step.v_weight_decay, step.kl_factor,
        step.clamp_norm_factor, autocast=getattr(torch, step.v_autocast) if step.v_autocast else None,
        batch_size=batch_size, cache_prefix=step.v_cache_prefix)
    return bases + (values - seen), traces


def target_value(model: nn.Module, tok, module: str, request, templates: list[str], step: ValueStep,
                 base: torch.Tensor) -> tuple[torch.Tensor, ValueTrace]:
    """`(base + δ, trace)` of one request (`target_values` of a batch of one)."""
    values, traces = target_values(model, tok, module, [request], templates, step, base[None])
    return values[0], traces[0]
