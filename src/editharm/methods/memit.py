"""MEMIT (Meng et al., 2023): many edits at once, spread over a range of MLP output projections.

    Z = compute_z(...)             target hidden states at the last layer L of the range (`methods/value.py`, as ROME's
                                   v*), the requests of a batch optimised together (`z_batch_size` per pass)
    for l in layers (ascending):   K_l: keys of all requests under the current weights; R = Z − H_L
        ΔW_l = memit_update(R / (layers left), K_l, C_l, λ)  = R_l K_lᵀ (λ C_l + K_l K_lᵀ)⁻¹, applied before l+1
    with `nullspace` (AlphaEdit): ΔW_l = alphaedit_update(...) = R_l K_lᵀ P_l ((K_l K_lᵀ + C_prev) P_l + L2·I)⁻¹
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from editharm.data import EditRequest
from editharm.deltas import Deltas
from editharm.guards import check_nullspace, null_dim, nullspace_projector
from editharm.methods._shared import keys_at, run_templates, subject_last
from editharm.methods.value import ValueStep, ValueTrace, target_values
from editharm.module import EditModule
from editharm.nethook import to_param_layout
from editharm.registry import register_method
from editharm.placement import weight_device


@dataclass
class MEMITConfig(ValueStep):
    name: str = "memit"
    layers: list[int] = field(default_factory=lambda: [4, 5, 6, 7, 8])
    """MLP output projections to update; targets are set at the output of the last one's block."""
    mom2_update_weight: float = 15000.0
    """λ: weight of the preserved-keys term λC against the new keys KKᵀ."""
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[10, 5]])
    """MEMIT: the bare prompt plus 5 sampled prefixes of 10 tokens (the seed word and any BOS counted)."""
    z_batch_size: int = 32
    """Requests whose targets z are optimised together, in one forward/backward pass per step (each with its
    own δ, Adam state and stopping rule); 1 optimises one request at a time, as the reference does. Batches give
    the same values up to rounding (1e-4 in float32; bf16 autocast rounds differently per batch shape)."""
    nullspace: bool = False
    """AlphaEdit (Fang et al., ICLR 2025): solve inside the null space of the preserved keys and of the keys
    edited earlier in the run (`alphaedit_update`) instead of MEMIT's λC-weighted solve."""
    nullspace_threshold: float = 2e-2
    """Eigen-directions of C with eigenvalue below this form P (AlphaEdit's `nullspace_threshold`, 2e-2 in every
    hparams file of its authors: GPT-2 XL, GPT-J, Llama3-8B)."""
    nullspace_rule: str = "absolute"
    """How the threshold cuts C's eigenvalues: `absolute` (AlphaEdit's `get_project`) or `relative` (below
    threshold · λ_max(C): a share that transfers across models whose C differ in scale; our default before
    2026-12, at 1e-2). The run logs each layer's null-space dimension as `nullspace/<module>/null_dim`."""
    nullspace_l2: float = 10.0
    """The ridge term of AlphaEdit's solve (its `L2`: 10 in every hparams file of its authors and in EasyEdit's
    GPT-2 XL file; EasyEdit's `llama3-8b.yaml` alone says 1)."""

    @staticmethod
    def check(m, run) -> None:
        check_nullspace("method.nullspace_", m.nullspace_threshold, m.nullspace_rule)


def compute_z(model, tok, block: str, requests: list[EditRequest], templates: list[str], hp: MEMITConfig,
              H0: torch.Tensor) -> tuple[torch.Tensor, list[ValueTrace]]:
    """`(Z, traces)`, row i z_i = h0_i + δ_i: the hidden state at the output of `block` (request i's subject's
    last token) that makes its `target_new` likely; `H0` (n × d) holds the float32 hidden states there in the
    bare prompts. `hp.z_batch_size` requests are optimised per forward pass."""
    return target_values(model, tok, block, requests, templates, hp, H0, batch_size=hp.z_batch_size)


def layer_keys(model, tok, module: str, requests: list[EditRequest], templates: list[str],
               batch_size: int = 32) -> torch.Tensor:
    """K (in × n): each request's key at `module`, the mean of the bare-prompt key and of the templated keys
    (MEMIT averages within the two template groups, then across them); `batch_size` requests' texts share a
    forward pass."""
    cols = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start:start + batch_size]
        texts = [t.format(r.prompt) for r in chunk for t in templates]
        positions = [subject_last(tok, t.format(r.prompt), r.subject) for r in chunk for t in templates]
        keys = keys_at(model, tok, module, texts, positions)[0].view(len(chunk), len(templates), -1)
        cols.append(keys[:, 0] if len(templates) == 1 else (keys[:, 0] + keys[:, 1:].mean(1)) / 2)
    return torch.cat(cols).T


def memit_update(R: torch.Tensor, K: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ (out × in), solved in float64: the least-squares change that moves the new keys
    K towards residuals R while preserving the second moment C of existing keys."""
    K64 = K.double()
    A = lam * C.double() + K64 @ K64.T
    return (R.double() @ torch.linalg.solve(A, K64).T).float()


def alphaedit_update(R: torch.Tensor, K: torch.Tensor, P: torch.Tensor, C_prev: torch.Tensor, l2: float) -> torch.Tensor:
    """Δ = R Kᵀ P ((K Kᵀ + C_prev) P + l2 I)⁻¹ (out × in), solved in float64: the least-squares change for the
    new keys K within the null space P of the preserved keys, with C_prev = Σ K_p K_pᵀ of the keys edited
    earlier protected too. For a preserved key k₀ (P k₀ = 0), Δ k₀ = 0."""
    K64, P64 = K.double(), P.double()
    A = (K64 @ K64.T + C_prev.double()) @ P64 + l2 * torch.eye(P.shape[0], dtype=torch.float64, device=P.device)
    return torch.linalg.solve(A.T, P64 @ K64 @ R.double().T).T.float()


@register_method("memit", config=MEMITConfig)
class MEMIT(EditModule):
    """Mass editing: every batch of requests in one multi-layer update."""

    def on_fit_start(self) -> None:
        """Context templates and key statistics come from the unedited model, once per run; with `nullspace`,
        the projectors P and the (empty) record of edited keys."""
        self._templates = run_templates(self.model, self.tokenizer, self.hp, self.cfg.seed)
        C = self.second_moments(self.statistics_modules(), self.hp)
        if self.hp.nullspace:
            self._P = {m: nullspace_projector(c, self.hp.nullspace_threshold, self.hp.nullspace_rule)
                       for m, c in C.items()}
            self._edited = {m: torch.zeros_like(c) for m, c in C.items()}
            self._new_keys: dict[str, torch.Tensor] = {}

    def edits_kept(self) -> None:
        """AlphaEdit: the keys of the edit just kept are protected from later edits."""
        if self.hp.nullspace:
            for m, kk in self._new_keys.items():
                self._edited[m] += kk

    def statistics_modules(self) -> list[str]:
        return [self.module_name("mlp_out", layer) for layer in self.hp.layers]

    def method_state(self) -> dict:
        """The context templates and, for AlphaEdit, Σ K Kᵀ of the keys edited so far."""
        return {"templates": getattr(self, "_templates", None),
                **({"edited": self._edited} if self.hp.nullspace and hasattr(self, "_edited") else {})}

    def load_method_state(self, state: dict) -> None:
        if state["templates"] is not None:  # None: saved before the first edit computed them
            self._templates = list(state["templates"])
        if self.hp.nullspace and "edited" in state:
            # (a state at step n: on_fit_start never ran)
            self._edited = {m: c.to(weight_device(self.model, m)) for m, c in state["edited"].items()}

    def edited_modules(self) -> list[str]:
        return self.statistics_modules()

    def compute_deltas(self, requests: list[EditRequest]) -> Deltas:
        modules = self.statistics_modules()
        C = self.second_moments(modules, self.hp)
        if self.hp.nullspace:
            self.measured("nullspace", {f"{m}/null_dim": null_dim(self._P[m]) for m in modules})
        block = self.module_name("layer", self.hp.layers[-1])
        prompts = [r.prompt for r in requests]
        positions = [subject_last(self.tokenizer, r.prompt, r.subject) for r in requests]
        H0 = keys_at(self.model, self.tokenizer, block, prompts, positions)[1]
        self.phase(f"target values z at {block} for {len(requests)} request(s)")
        Z, traces = compute_z(self.model, self.tokenizer, block, requests, self._templates, self.hp, H0)
        for trace in traces:
            self.measured("value", trace.metrics())
        Z = Z.T
        total: Deltas = {}
        originals = {m: self.model.get_parameter(f"{m}.weight").detach().clone() for m in modules}
        with torch.no_grad():
            try:
                for i, module in enumerate(modules):
                    self.phase(f"{'null-space' if self.hp.nullspace else 'least-squares'} update of {module}")
                    K = layer_keys(self.model, self.tokenizer, module, requests, self._templates, self.hp.z_batch_size)
                    H = keys_at(self.model, self.tokenizer, block, prompts, positions)[1].T
                    R = ((Z - H) / (len(modules) - i)).to(K.device)  # where the edited module's keys are
                    if self.hp.nullspace:
                        delta = alphaedit_update(R, K, self._P[module], self._edited[module], self.hp.nullspace_l2)
                        self._new_keys[module] = K @ K.T
                    else:
                        delta = memit_update(R, K, C[module], self.hp.mom2_update_weight)
                    name, stored = to_param_layout(self.model, module, delta)
                    weight = self.model.get_parameter(name)
                    weight.add_(stored.to(weight.device, weight.dtype))  # layer l+1 sees layer l's update
                    total[name] = stored
            finally:
                for m, weight in originals.items():  # exact: the model as found
                    self.model.get_parameter(f"{m}.weight").copy_(weight)
        return total
