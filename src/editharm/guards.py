"""Guards: pure `Deltas -> Deltas` maps that shape an edit's weight change before it is applied.

    ΔW̄ = rect(ΔW, W, k)          keep the top-k share of elements by relative change |ΔW|/(|W|+ε) (RECT,
                                  Gu et al. 2024; the paper's "top-40 %" is k = 0.4), the rest exactly 0
    ΔW̄ = magnitude(ΔW, k)        the same by |ΔW| alone (is it the *relative* change that matters?)
    ΔW̄ = random_mask(ΔW, k, g)   an exact-count random mask of the same share (RECT's "random" baseline)
    ΔW̄ = truncated_svd(ΔW, r)    the best rank-r approximation (RECT's "PCA" baseline done right); a rank-one
                                  ROME update is unchanged by it for any r ≥ 1
    ΔW̄ = project(ΔW, P)          ΔW P, P the projector onto the null space of the preserved keys' second
                                  moment C = E[k kᵀ] of the module's input (AlphaEdit's projection, post hoc)

No rescaling anywhere. Every guard is registered (`register_guard`) with a typed config chosen by the
`guard` config group; `EditModule.training_step` passes each edit step's deltas through it before the
finite/collapse checks. `keep_count` is the one rounding rule: ⌊k · n⌋ elements kept, at least one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from editharm.config import choice
from editharm.deltas import EPS, Deltas
from editharm.errors import ConfigError
from editharm.registry import register_guard
from editharm.stats import KeyStatistics


NULLSPACE_RULES = ("absolute", "relative")


def keep_count(k: float, n: int) -> int:
    """⌊k · n⌋ (with a 1e-9 relative tolerance, so 0.29 · 100 keeps 29), at least 1."""
    return max(1, math.floor(k * n * (1 + 1e-9)))


def top_k_mask(score: torch.Tensor, k: float) -> torch.Tensor:
    """Boolean mask of exactly `keep_count(k, numel)` elements with the largest `score` (ties: any of them)."""
    flat = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    flat[torch.topk(score.flatten().float(), keep_count(k, score.numel())).indices] = True
    return flat.view(score.shape)


def rect(delta: torch.Tensor, weight: torch.Tensor, k: float, eps: float = EPS) -> torch.Tensor:
    """ΔW ⊙ mask, the mask keeping the top-k share of |ΔW| / (|W| + ε); W = 0 entries rank highest."""
    score = delta.abs().float() / (weight.abs().float() + eps)
    return torch.where(top_k_mask(score, k), delta, torch.zeros_like(delta))


def magnitude(delta: torch.Tensor, k: float) -> torch.Tensor:
    """ΔW ⊙ mask, the mask keeping the top-k share of |ΔW|."""
    return torch.where(top_k_mask(delta.abs(), k), delta, torch.zeros_like(delta))


def random_mask(delta: torch.Tensor, k: float, generator: torch.Generator) -> torch.Tensor:
    """ΔW ⊙ mask, the mask keeping exactly `keep_count(k, numel)` elements drawn uniformly without replacement."""
    keep = torch.randperm(delta.numel(), generator=generator)[: keep_count(k, delta.numel())]
    flat = torch.zeros(delta.numel(), dtype=torch.bool)
    flat[keep] = True
    return torch.where(flat.view(delta.shape).to(delta.device), delta, torch.zeros_like(delta))


def pca_rank(m: int, n: int, k: float) -> int:
    """The rank r whose factors hold about the share k of an m × n matrix's elements: r (m + n) ≈ k m n."""
    return max(1, min(m, n, round(k * m * n / (m + n))))


def truncated_svd(delta: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-`rank` approximation of a 2-D ΔW (Eckart–Young), computed in float64."""
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return ((U[:, :rank] * S[:rank]) @ Vh[:rank]).to(delta.dtype)


def nullspace_projector(C: torch.Tensor, threshold: float, rule: str = "absolute") -> torch.Tensor:
    """P = V₀ V₀ᵀ, V₀ the eigenvectors of the (symmetric) second moment C whose eigenvalue is below `threshold`
    (`rule="absolute"`, AlphaEdit's `get_project`: singular values of C below `nullspace_threshold`, 2e-2 in every
    hparams file of its authors) or below `threshold` · λ_max(C) (`"relative"`, ours: a share that transfers
    across models whose C differ in scale). For a preserved key k₀ (in the span of the other eigenvectors),
    P k₀ = 0; trace(P) is the null space's dimension."""
    if rule not in NULLSPACE_RULES:
        raise ValueError(f"nullspace rule {rule!r}; valid: {', '.join(NULLSPACE_RULES)}")
    eigenvalues, V = torch.linalg.eigh(C.double())
    cut = threshold * eigenvalues.max() if rule == "relative" else threshold
    V0 = V[:, eigenvalues < cut]
    return (V0 @ V0.T).float()


def null_dim(P: torch.Tensor) -> float:
    """The dimension of the space P projects onto (its trace, rounded)."""
    return float(torch.trace(P).round())


def project(delta: torch.Tensor, P: torch.Tensor, input_axis: int) -> torch.Tensor:
    """ΔW P on the parameter's input axis (1 for `nn.Linear`'s (out, in), 0 for GPT-2 Conv1D's (in, out))."""
    P = P.to(device=delta.device, dtype=delta.dtype)
    return delta @ P if input_axis == 1 else P @ delta


@dataclass(frozen=True)
class GuardContext:
    """What a guard may read besides the deltas (all taken before this edit step is applied)."""

    weights: Mapping[str, torch.Tensor]
    """Each delta's parameter as it is now, in its stored layout."""
    seed: int = 0
    """The run's seed."""
    edit_index: int = 0
    """Index of the first request of this edit step."""
    input_axis: Mapping[str, int] = field(default_factory=dict)
    """Per parameter: which axis of the stored weight is the module's input."""
    projectors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    """`nullspace`: the projector of each parameter's module input (from its key statistics)."""


@dataclass
class NoGuardConfig:
    name: str = "none"


@dataclass
class ShareConfig:
    name: str = "rect"
    k: float = 0.4
    """Share of ΔW's elements kept, in (0, 1]."""


@dataclass
class RECTConfig(ShareConfig):
    eps: float = EPS
    """ε of |ΔW| / (|W| + ε)."""


@dataclass
class PCAConfig(ShareConfig):
    name: str = "pca"
    rank: int | None = None
    """Rank kept; null: `pca_rank(m, n, k)`, the rank whose factors hold the share k of the elements."""


@dataclass
class NullspaceConfig(KeyStatistics):
    name: str = "nullspace"
    threshold: float = 2e-2
    """Eigen-directions of C with eigenvalue below the threshold span P: the input directions that the preserved
    keys (almost) never use. AlphaEdit's value and rule (an absolute eigenvalue, 2e-2)."""
    rule: str = "absolute"
    """`absolute` (AlphaEdit's) or `relative` (eigenvalue below threshold · λ_max(C); 1e-2 was this guard's
    default before it followed AlphaEdit's rule)."""

    @staticmethod
    def check(g, run) -> None:
        check_nullspace("guard.", g.threshold, g.rule)


def check_nullspace(prefix: str, threshold: float, rule: str) -> None:
    """A `ConfigError` unless `rule` is a null-space rule and `threshold` a valid cut for it."""
    choice(f"{prefix}rule", rule, NULLSPACE_RULES)
    if threshold <= 0 or (rule == "relative" and threshold >= 1):
        raise ConfigError(f"{prefix}threshold must be > 0" + (" and < 1 (a share of the largest eigenvalue)"
                          if rule == "relative" else " (an eigenvalue of C)") + f", got {threshold}")


Guard = Callable[[Deltas, object, GuardContext], tuple[Deltas, dict[str, float]]]


@register_guard("none", config=NoGuardConfig)
def _none(deltas: Deltas, cfg, ctx: GuardContext):
    return deltas, {}


@register_guard("rect", config=RECTConfig)
def _rect(deltas: Deltas, cfg: RECTConfig, ctx: GuardContext):
    return {n: rect(d, ctx.weights[n], cfg.k, cfg.eps) for n, d in deltas.items()}, {}


@register_guard("magnitude", config=ShareConfig)
def _magnitude(deltas: Deltas, cfg: ShareConfig, ctx: GuardContext):
    return {n: magnitude(d, cfg.k) for n, d in deltas.items()}, {}


@register_guard("random", config=ShareConfig)
def _random(deltas: Deltas, cfg: ShareConfig, ctx: GuardContext):
    """Seeded by the run seed and the edit index: the same run draws the same masks."""
    g = torch.Generator().manual_seed(ctx.seed * 1_000_003 + ctx.edit_index)
    return {n: random_mask(deltas[n], cfg.k, g) for n in sorted(deltas)}, {}


@register_guard("pca", config=PCAConfig)
def _pca(deltas: Deltas, cfg: PCAConfig, ctx: GuardContext):
    out, metrics = {}, {}
    for n, d in deltas.items():
        r = min(cfg.rank, *d.shape) if cfg.rank else pca_rank(*d.shape, cfg.k)
        out[n], metrics[f"{n}/rank"] = truncated_svd(d, r), float(r)
    return out, metrics


@register_guard("nullspace", config=NullspaceConfig)
def _nullspace(deltas: Deltas, cfg: NullspaceConfig, ctx: GuardContext):
    out, metrics = {}, {}
    for n, d in deltas.items():
        P = ctx.projectors[n]
        out[n], metrics[f"{n}/null_dim"] = project(d, P, ctx.input_axis[n]), null_dim(P)
    return out, metrics
