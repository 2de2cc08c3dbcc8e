"""Where a model's weights live: one device, or spread by accelerate's `device_map` (`model.device_map`).

    model = dispatch(model, "auto", folder)        # a model built in memory (tiny, embedded), spread after loading
    ids = ids.to(input_device(model))               # inputs go where the embeddings run
    resident(model, ["model.layers.4.mlp.down_proj.weight"])   # an edited weight must not be offloaded

A spread model is never moved as a whole (Lightning's strategy leaves it in place) and never copied: it is scored
and edited in its own dtype. accelerate's hooks carry activations from device to device; methods create their
tensors where the weights or activations they meet are.
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editharm.errors import ModelError


def plain(device_map: Any) -> str | dict:
    """The config value as accelerate takes it (an OmegaConf map becomes a dict; GPU indices stay ints)."""
    if isinstance(device_map, str):
        return device_map
    return {str(k): v for k, v in dict(device_map).items()}


def offload_folder(cache: Path, name: str) -> str:
    """A fresh folder for the weights a map sends to `disk` (accelerate writes them there); see `tie_folder`."""
    root = cache / "offload"
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(dir=root, prefix=f"{name}-")


def tie_folder(model: nn.Module, folder: str) -> nn.Module:
    """The offload folder lives as long as the model: removed now when nothing went to disk, else when the model
    is garbage-collected or the process exits."""
    if not any(Path(folder).iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
    else:
        weakref.finalize(model, shutil.rmtree, folder, True)
    return model


def dispatch(model: nn.Module, device_map: Any, folder: str) -> nn.Module:
    """`model` (on the host) spread as `device_map` says: a strategy name is resolved by accelerate over the
    memory of the devices present; an explicit map must name every module."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    wanted = plain(device_map)
    if isinstance(wanted, str):
        keep = getattr(model, "_no_split_modules", None) or []
        memory = None if wanted == "sequential" else get_balanced_memory(
            model, no_split_module_classes=keep, low_zero=wanted == "balanced_low_0")
        wanted = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=keep)
    try:
        model = dispatch_model(model, wanted, offload_dir=folder)
    except (ValueError, RuntimeError) as err:
        raise ModelError(f"model.device_map={wanted}: {str(err).splitlines()[0]}") from None
    model.hf_device_map = wanted
    return model


def is_spread(model: nn.Module) -> bool:
    """Placed by a `device_map` (accelerate's hooks move activations; the model must not be moved or copied)."""
    return getattr(model, "hf_device_map", None) is not None


def input_device(model: nn.Module) -> torch.device:
    """The device input ids go to: where the input embeddings run."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    hook = getattr(embed, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    if embed is not None and embed.weight.device.type != "meta":
        return embed.weight.device
    return next(p.device for p in model.parameters() if p.device.type != "meta")


def weight_device(model: nn.Module, name: str) -> torch.device:
    """The device of parameter `name`, or of module `name`'s weight: where its statistics, solves and deltas go."""
    param = model.get_parameter(name if name.endswith((".weight", ".bias")) else f"{name}.weight")
    return param.device if param.device.type != "meta" else input_device(model)


def strategy(model: nn.Module):
    """Lightning's single-device strategy for a spread model: batches go to its input device and the model stays
    where accelerate put it (the default strategy would move every module to one device)."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    class InPlace(SingleDeviceStrategy):
        def model_to_device(self) -> None:  # the metrics' states go where the batches go; the model stays
            self.lightning_module.evaluators.to(self.root_device)

        def teardown(self) -> None:  # Strategy.teardown without its move of the whole model to the CPU
            self.precision_plugin.teardown()
            self.accelerator.teardown()
            self.checkpoint_io.teardown()

    return InPlace(device=input_device(model))


def resident(model: nn.Module, names: list[str]) -> None:
    """Refuse to edit a weight that a `device_map` offloaded (held by accelerate outside the module, on the
    meta device here): editing in place needs it on a device."""
    lost = [n for n in names if model.get_parameter(n).device.type == "meta"]
    if lost:
        where = getattr(model, "hf_device_map", {})
        raise ModelError(f"model.device_map offloads {', '.join(lost)} (map: {where}); edited weights must sit on a "
                         "device: map the edited layers to a GPU index or, on a CPU-only machine, to cpu")
