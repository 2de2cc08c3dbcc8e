"""FT-L: fine-tune chosen weights on the target tokens, each weight kept within ε of its original value
(L∞ box, Zhu et al. 2020, as ROME's FT-L baseline); `norm_constraint: null` gives unconstrained FT."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from editharm.deltas import Deltas
from editharm.module import EditModule
from editharm.nethook import get_parameter
from editharm.registry import register_method
from editharm.scoring import encode_pairs, mean_nll


@dataclass
class FTConfig:
    name: str = "ft"
    layers: list[int] = field(default_factory=lambda: [0])
    """Layers whose `module` weight is fine-tuned."""
    module: str = "mlp_out"
    """Which model template to tune (`mlp_out`, `mlp_in`)."""
    lr: float = 5e-4
    steps: int = 25
    norm_constraint: Optional[float] = 5e-4
    """ε of the L∞ box |W - W₀| ≤ ε; null for unconstrained fine-tuning."""
    stop_nll: float = 1e-2
    """Stop early once the mean target NLL falls below this."""


def constrained_finetune(model: nn.Module, tok, prompts: list[str], targets: list[str], params: list[str],
                         lr: float, steps: int, eps: float | None, stop_nll: float) -> Deltas:
    """Adam on the mean target NLL over `params` only, projecting onto |W - W₀|∞ ≤ eps after each step.

    Returns W - W₀ per parameter. Invariant: the model (weights and requires_grad flags) is unchanged.
    """
    tuned = {n: get_parameter(model, n) for n in params}
    w0 = {n: p.detach().clone() for n, p in tuned.items()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    ids, mask, labels = encode_pairs(tok, prompts, targets, next(iter(tuned.values())).device)
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in tuned.values():
            p.requires_grad_(True)
        opt = torch.optim.Adam(tuned.values(), lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                loss = mean_nll(model, ids, mask, labels)
                if loss.item() < stop_nll:
                    break
                loss.backward()
                opt.step()
                if eps is not None:
                    with torch.no_grad():
                        for n, p in tuned.items():
                            p.copy_(torch.minimum(torch.maximum(p, w0[n] - eps), w0[n] + eps))
        return {n: (p.detach() - w0[n]).clone() for n, p in tuned.items()}
    finally:
        with torch.no_grad():
            for n, p in tuned.items():
                p.copy_(w0[n])
        for p, flag in flags:
            p.requires_grad_(flag)


@register_method("ft", config=FTConfig)
class FT(EditModule):
    """Constrained fine-tuning (FT-L) of `layers`' `module` weights."""

    def edited_modules(self) -> list[str]:
        return [self.module_name(self.hp.module, layer) for layer in self.hp.layers]

    def compute_deltas(self, requests):
        params = [f"{self.module_name(self.hp.module, layer)}.weight" for layer in self.hp.layers]
        return constrained_finetune(self.model, self.tokenizer, [r.prompt for r in requests],
                                    [r.target_new for r in requests], params, self.hp.lr, self.hp.steps,
                                    self.hp.norm_constraint, self.hp.stop_nll)
