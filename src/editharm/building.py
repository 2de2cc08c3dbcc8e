"""The one constructor of a method's module, for runs (`editharm edit`, `stats`, grid cells) and the Python API
(`editharm.Editor`): the registered class, with what its config names outside the package made concrete first.

    module = build(cfg, model, tok, evaluators, n_requests, logger)
"""
from __future__ import annotations

from torch import nn

from editharm import placement, registry
from editharm.config import RunConfig
from editharm.module import EditModule


def build(cfg: RunConfig, model: nn.Module, tokenizer, evaluators: list, n_requests: int,
          logger=None) -> EditModule:
    """`cfg.method`'s module over `model`. MEND's `hypernetwork` is resolved to a folder first
    (`editharm.mend_runs.resolve`: `runs:/` fetched from the tracking store; `auto` searches the store and may train
    a nested run only when `logger` is a run's)."""
    if cfg.method.name == "mend":
        from editharm import mend_runs

        mend_runs.resolve(cfg, model, tokenizer, logger)
    module = registry.method(cfg.method.name)(cfg, model, tokenizer, evaluators, n_requests)
    if placement.is_spread(model):  # an offloaded weight cannot be edited in place: said before any compute
        placement.resident(model, [f"{m}.weight" for m in module.edited_modules()])
    return module
