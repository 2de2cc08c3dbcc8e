"""Deltas = {parameter name: ΔW in the parameter's own layout}. Apply, revert, accumulate, summarise, save.

    apply_(model, deltas)          # W <- W + ΔW, in place
    revert_(model, deltas)         # W <- W - ΔW
    total = accumulate(total, deltas)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from editharm.nethook import get_parameter

Deltas = dict[str, torch.Tensor]
QUANTILES = (0.5, 0.9, 0.99)
EPS = 1e-8


@torch.no_grad()
def apply_(model: nn.Module, deltas: Deltas, alpha: float = 1.0) -> None:
    """W <- W + alpha * ΔW for every parameter in `deltas` (shapes are checked)."""
    for name, delta in deltas.items():
        param = get_parameter(model, name)
        if param.shape != delta.shape:
            raise ValueError(f"delta for {name} has shape {tuple(delta.shape)}, parameter {tuple(param.shape)}")
        param.add_(delta.to(device=param.device, dtype=param.dtype), alpha=alpha)


def revert_(model: nn.Module, deltas: Deltas) -> None:
    apply_(model, deltas, alpha=-1.0)


def accumulate(total: Deltas, deltas: Deltas) -> Deltas:
    """A new `Deltas` holding total + deltas, in float32."""
    out = dict(total)
    for name, delta in deltas.items():
        d = delta.detach().float()
        out[name] = out[name] + d if name in out else d.clone()
    return out


def is_finite(deltas: Deltas) -> bool:
    return all(bool(torch.isfinite(d).all()) for d in deltas.values())


@torch.no_grad()
def stats(model: nn.Module, deltas: Deltas, applied: bool = False) -> dict[str, dict[str, float]]:
    """Per parameter: ‖ΔW‖_F, ‖ΔW‖_F/‖W‖_F, max |ΔW|, and quantiles of the elementwise |ΔW|/(|W|+ε).

    W is the weight before the deltas: the parameter's value, less ΔW when `applied`.
    """
    out = {}
    for name, delta in deltas.items():
        d = delta.float()
        w = get_parameter(model, name).detach().float().to(d.device)
        w = w - d if applied else w
        rel = (d.abs() / (w.abs() + EPS)).flatten()
        if rel.numel() > 1 << 24:  # torch.quantile's input limit; a fixed-stride subsample is exact enough
            rel = rel[:: rel.numel() // (1 << 24) + 1]
        q = torch.quantile(rel, torch.tensor(QUANTILES, device=rel.device))
        out[name] = {
            "fro": float(d.norm()),
            "rel_fro": float(d.norm() / (w.norm() + EPS)),
            "max_abs": float(d.abs().max()),
            **{f"rel_q{int(p * 100)}": float(v) for p, v in zip(QUANTILES, q)},
        }
    return out


@torch.no_grad()
def condition_numbers(model: nn.Module, deltas: Deltas) -> dict[str, dict[str, float]]:
    """σ_max/σ_min of each 2-D weight before and after its (already applied) delta: a collapse signal."""
    out = {}
    for name, delta in deltas.items():
        after = get_parameter(model, name).detach().float()
        if after.ndim != 2:
            continue
        before = after - delta.float().to(after.device)
        out[name] = {k: _cond(w) for k, w in (("cond_before", before), ("cond_after", after))}
    return out


def _cond(w: torch.Tensor) -> float:
    s = torch.linalg.svdvals(w)
    return float(s[0] / s[-1].clamp_min(torch.finfo(s.dtype).tiny))


def save(deltas: Deltas, path: Path, metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in deltas.items()}, str(path), metadata=metadata)


def load(path: Path | str) -> Deltas:
    return load_file(str(path))


def save_summary(summary: dict, path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True))
