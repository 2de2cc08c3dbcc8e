"""The unedited model's evaluation, scored once: every cell of a grid (and every run on the same model, tasks and
settings) starts from the same weights, so its step-0 scores are recorded and fed back into the metrics next time
instead of scoring again (`tasks.reuse`).

    key = replay.key(model, cfg, evaluator.replay_key())      # None: this evaluator is never replayed
    record = replay.load(cache, key)                          # what `Evaluator.recording()` returned, or None
    replay.save(cache, key, evaluator.recording())

A record holds the per-example outputs the metrics are updated with, so a replayed evaluation computes its scores,
intervals, rows and paired baseline exactly as the scored one did. Only a run whose weights are the configured
model as loaded replays (not a checkpoint, not a model handed in from Python). The key covers the weights (the
model's identity and every row and column sum), dtype, hardware (device type, GPU, CUDA build, attention
implementation), chat template, the evaluator's data, task spec and scoring settings, the torch and transformers
versions and the package's own source: any change to any of them scores afresh.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers

from editharm import models
from editharm.placement import input_device

log = logging.getLogger(__name__)


def source_hash() -> str:
    """A hash of every Python file of the installed package: results recorded by other code are never reused."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@torch.no_grad()
def weights_hash(model) -> str:
    """Every parameter's name, shape and row and column sums (float64): an edit of any row or column (ROME's and
    MEMIT's rank-k updates, KN's neuron columns) changes it. Offloaded parameters count by name and shape."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}{tuple(p.shape)}".encode())
        if p.device.type == "meta":
            continue
        w = p.detach().double()
        sums = (w.sum(0), w.sum(1)) if w.dim() == 2 else (w.flatten(),)
        for t in sums:
            h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()


def hardware(model) -> tuple:
    """Where and how the model computes: device type, GPU name and CUDA build, attention implementation."""
    device = input_device(model)
    gpu = (torch.cuda.get_device_name(device), torch.version.cuda) if device.type == "cuda" else ()
    return device.type, *gpu, getattr(getattr(model, "config", None), "_attn_implementation", None)


def model_key(model, cfg) -> str:
    """What the weights' scores depend on: the model's identity and values, dtype, hardware, chat template,
    library versions and our source."""
    parts = (models.identity(cfg.model), weights_hash(model), str(model.dtype), hardware(model),
             str(cfg.model.chat_template), torch.__version__, transformers.__version__, source_hash())
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def key(model_part: str, evaluator_part: str) -> str:
    return hashlib.sha256(f"{model_part}|{evaluator_part}".encode()).hexdigest()[:32]


def load(cache: Path, k: str) -> Any | None:
    path = cache / f"{k}.pkl"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError):
        return None  # a damaged record is scored again (and rewritten)


def save(cache: Path, k: str, record: Any) -> None:
    """Written whole or not at all (grid cells on Ray may record the same key at once); a cache that cannot be
    written costs a warning, never the run."""
    tmp = None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(record, f)
        os.replace(tmp, cache / f"{k}.pkl")
    except OSError as err:
        log.warning(f"the unedited evaluation was not recorded for reuse ({err}); the next run scores it again")
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
