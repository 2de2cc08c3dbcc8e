"""ROME (Meng et al., 2022): a rank-one update of one MLP output projection so that the subject's key maps
to a value that makes the target likely.

    u  = compute_u(...)       left vector: the subject key k̄ averaged over context templates, C⁻¹k̄ if
                              `mom2_adjustment`, normalised
    v* = compute_v(...)       target value at the subject's last token (`methods/value.py`, shared with MEMIT)
    ΔW = rank_one_update(...) = (v* − W k* − b) uᵀ / (uᵀ k*), so that (W + ΔW) k* + b = v*,
                              k* the subject's key in the edit prompt itself
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from editharm.data import EditRequest
from editharm.deltas import Deltas
from editharm.methods._shared import keys_at, run_templates, subject_last
from editharm.methods.value import ValueStep, ValueTrace, target_value
from editharm.module import EditModule
from editharm.nethook import to_param_layout
from editharm.registry import register_method


@dataclass
class ROMEConfig(ValueStep):
    name: str = "rome"
    layer: int = 5
    """The layer whose MLP output projection (`templates.mlp_out`) is rewritten."""
    mom2_adjustment: bool = False
    """Whiten the key with the inverse second moment C⁻¹ (original ROME: on; the paper's runs: off)."""
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[5, 10], [10, 10]])
    """`[length, count]` pairs of sampled prefixes (ROME: 10 of 5 tokens and 10 of 10 tokens); a length counts
    the seed word and any BOS, as the reference's `generate_fast` does."""


def compute_u(model, tok, module: str, request: EditRequest, templates: list[str],
              C: torch.Tensor | None) -> torch.Tensor:
    """The normalised left vector u ∝ C⁻¹ k̄ (or k̄), k̄ the subject's key averaged over `templates`."""
    texts = [t.format(request.prompt) for t in templates]
    keys, _ = keys_at(model, tok, module, texts, [subject_last(tok, t, request.subject) for t in texts])
    k_bar = keys.mean(0).double()
    u = torch.linalg.solve(C.double().to(k_bar.device), k_bar) if C is not None else k_bar
    return (u / u.norm()).float()


def compute_v(model, tok, module: str, request: EditRequest, templates: list[str], hp: ValueStep,
              v0: torch.Tensor) -> tuple[torch.Tensor, ValueTrace]:
    """`(v*, trace)`, v* = v0 + δ: the module output at the subject's last token that makes `target_new`
    follow every template; `v0` is the float32 output there in the bare prompt."""
    return target_value(model, tok, module, request, templates, hp, v0)


def rank_one_update(u: torch.Tensor, k_star: torch.Tensor, out_star: torch.Tensor, v_star: torch.Tensor) -> torch.Tensor:
    """ΔW (out × in) with (W + ΔW) k* + b = v*, given the current output W k* + b = `out_star`."""
    return torch.outer((v_star - out_star) / (k_star @ u), u)


class EditVectors(NamedTuple):
    """One request's ROME quantities under the current weights (what a parity check compares)."""

    u: torch.Tensor
    k_star: torch.Tensor
    out_star: torch.Tensor
    """W k* + b: the module's output at the subject in the bare prompt."""
    v_star: torch.Tensor
    trace: ValueTrace

    def delta(self) -> torch.Tensor:
        return rank_one_update(self.u, self.k_star, self.out_star, self.v_star)


def edit_vectors(model, tok, module: str, request: EditRequest, templates: list[str], hp: ValueStep,
                 C: torch.Tensor | None) -> EditVectors:
    """u, k*, W k* + b and v* of one request at `module`."""
    u = compute_u(model, tok, module, request, templates, C)
    k_star, out_star = keys_at(model, tok, module, [request.prompt], [subject_last(tok, request.prompt, request.subject)])
    v_star, trace = compute_v(model, tok, module, request, templates, hp, out_star[0])
    return EditVectors(u, k_star[0], out_star[0], v_star, trace)


@register_method("rome", config=ROMEConfig)
class ROME(EditModule):
    """Rank-one model editing; requests in a batch are applied one after another (ROME does not batch)."""

    def on_fit_start(self) -> None:
        """Context templates and key statistics come from the unedited model, once per run."""
        self._templates = run_templates(self.model, self.tokenizer, self.hp, self.cfg.seed)
        if self.hp.mom2_adjustment:
            self.second_moments(self.statistics_modules(), self.hp)

    def statistics_modules(self) -> list[str]:
        return [self._rewrite_module()]

    def method_state(self) -> dict:
        return {"templates": getattr(self, "_templates", None)}

    def load_method_state(self, state: dict) -> None:
        if state["templates"] is not None:  # None: saved before the first edit computed them
            self._templates = list(state["templates"])

    def _rewrite_module(self) -> str:
        return self.module_name("mlp_out", self.hp.layer)

    def edited_modules(self) -> list[str]:
        return [self._rewrite_module()]

    def compute_deltas(self, requests: list[EditRequest]) -> Deltas:
        module = self._rewrite_module()
        C = self.second_moments([module], self.hp)[module] if self.hp.mom2_adjustment else None
        total: Deltas = {}
        original = self.model.get_parameter(f"{module}.weight").detach().clone()
        with torch.no_grad():
            try:
                for request in requests:
                    self.phase(f"value step and rank-one update at {module}")
                    vectors = edit_vectors(self.model, self.tokenizer, module, request, self._templates, self.hp, C)
                    self.measured("value", vectors.trace.metrics())
                    name, stored = to_param_layout(self.model, module, vectors.delta())
                    weight = self.model.get_parameter(name)
                    weight.add_(stored.to(weight.dtype))  # later requests of the batch see earlier ones
                    total[name] = total.get(name, 0) + stored
            finally:
                self.model.get_parameter(f"{module}.weight").copy_(original)  # exact: the model as found
        return total
