"""Find modules and parameters by dotted name, and view any MLP projection as an (out, in) matrix.

GPT-2's `Conv1D` stores its weight as (in, out); `nn.Linear` as (out, in). `linear_weight` and
`to_param_layout` are the one place that transposition happens: methods compute in (out, in) and
`Deltas` are stored in each parameter's own layout.
"""
from __future__ import annotations

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a forward hook to end the forward pass early (its layers above never run); see `run_until`."""


def run_until(model: nn.Module, **inputs) -> None:
    """`model(**inputs)`, ended quietly where a hook raised `StopForward` (hooks keep what they captured)."""
    try:
        model(**inputs)
    except StopForward:
        pass


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise KeyError(f"module {name!r} not found in {type(model).__name__}; check the model's templates") from None


def get_parameter(model: nn.Module, name: str) -> nn.Parameter:
    try:
        return model.get_parameter(name)
    except AttributeError:
        raise KeyError(f"parameter {name!r} not found in {type(model).__name__}") from None


def is_transposed(module: nn.Module) -> bool:
    """True for GPT-2-style `Conv1D`, whose weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D"


def linear_weight(model: nn.Module, module_name: str) -> torch.Tensor:
    """The weight of `module_name` as an (out, in) view: `y = W x`."""
    module = get_module(model, module_name)
    return module.weight.T if is_transposed(module) else module.weight


def to_param_layout(model: nn.Module, module_name: str, delta: torch.Tensor) -> tuple[str, torch.Tensor]:
    """`(parameter name, delta)` with an (out, in) `delta` laid out like the stored weight."""
    module = get_module(model, module_name)
    stored = delta.T if is_transposed(module) else delta
    return f"{module_name}.weight", stored.contiguous()
