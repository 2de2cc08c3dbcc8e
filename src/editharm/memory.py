"""What a run will hold in memory, estimated before compute and printed (`editharm edit`), so that a model too
large for the device fails in the reader's head, not an hour in.

    held = estimate(cfg, model, module)   # bytes by item: weights, scoring copy, value-step copy, statistics
    print(describe(held, "cpu"))

Activations, the KV caches of scoring and the optimiser state of a value step scale with batch shapes and are
not counted: the figure is a floor.
"""
from __future__ import annotations

import torch
from torch import nn

from editharm.nethook import get_module, is_transposed
from editharm.placement import is_spread

GB = 1e9


def nbytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of the model's parameters, in their own dtype or in `dtype`."""
    return sum(p.numel() * (dtype.itemsize if dtype is not None else p.element_size()) for p in model.parameters())


def input_dim(model: nn.Module, name: str) -> int:
    """The input width of the linear module `name` (Conv1D stores its weight transposed)."""
    weight = get_module(model, name).weight
    return weight.shape[0] if is_transposed(get_module(model, name)) else weight.shape[1]


def estimate(cfg, model: nn.Module, module) -> dict[str, int]:
    """Bytes a run will hold besides activations: the weights; the copy the tasks are scored in (`tasks.dtype`
    other than the model's); the bfloat16 copy the value step optimises through (`v_autocast`); the key statistics
    E[k kᵀ] (float32, input width squared) of every module the method and guard read, three such matrices per
    module for AlphaEdit (C, its projector P, the edited keys' Σ k kᵀ) and two for the null-space guard (C, P);
    the float32 Σ ΔW of the edited weights that a run keeps (not in single mode). Not counted: activations, KV
    caches, a value step's or FT's optimiser state, MEND's network."""
    out = {"weights": nbytes(model)}
    spread = is_spread(model)  # never copied: scored and optimised through in its own dtype
    scoring = getattr(torch, cfg.tasks.dtype)
    if cfg.tasks.names and scoring != model.dtype and not spread:
        out["scoring_copy"] = nbytes(model, scoring)
    autocast = getattr(cfg.method, "v_autocast", None)
    if autocast and getattr(torch, autocast) != model.dtype and not spread:
        out["value_step_copy"] = nbytes(model, getattr(torch, autocast))
    uses_stats = getattr(cfg.method, "mom2_adjustment", hasattr(cfg.method, "mom2_dataset"))
    matrices: dict[str, int] = {}
    for m in module.statistics_modules() if uses_stats else []:
        matrices[m] = 3 if getattr(cfg.method, "nullspace", False) else 1
    for m in module.guard_statistics_modules():
        matrices[m] = matrices.get(m, 0) + 2
    if matrices:
        out["key_statistics"] = sum(k * 4 * input_dim(model, m) ** 2 for m, k in matrices.items())
    if cfg.edits.mode != "single" and module.edited_modules():
        out["cumulative_delta"] = sum(4 * get_module(model, m).weight.numel() for m in set(module.edited_modules()))
    return out


def size(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"


def describe(held: dict[str, int], device: str) -> str:
    parts = ", ".join(f"{k.replace('_', ' ')} {size(v)}" for k, v in held.items())
    return f"memory on {device}: {parts}; at least {size(sum(held.values()))} before activations"
