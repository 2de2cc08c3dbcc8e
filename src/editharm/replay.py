"""The unedited model's evaluation, scored once: every cell of a grid (and every run on the same model, tasks and
settings) starts from the same weights, so its step-0 scores are recorded and fed back into the metrics next time
instead of scoring again (`tasks.reuse`).

    key = replay.key(model, cfg, evaluator.replay_key())      # None: this evaluator is never replayed
    record = replay.load(cache, key)                          # what `Evaluator.recording()` returned, or None
    replay.save(cache, key, evaluator.recording())

A record holds the per-example outputs the metrics are updated with, so a replayed evaluation computes its scores,
intervals, rows and paired baseline exactly as the scored one did. The key covers the weights (the model's
identity and a sample of its values), its dtype and device type, the evaluator's data and scoring settings, the
torch and transformers versions and the package's own source: any change to any of them scores afresh.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers

from editharm import models
from editharm.placement import input_device


def source_hash() -> str:
    """A hash of every Python file of the installed package: results recorded by other code are never reused."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def model_key(model, cfg) -> str:
    """What the weights' scores depend on: identity, a sample of the values, dtype, device type, chat template,
    library versions and our source."""
    parts = (models.identity(cfg.model), models.fingerprint(model), str(model.dtype), input_device(model).type,
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
    """Written whole or not at all (grid cells on Ray may record the same key at once)."""
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(record, f)
    os.replace(tmp, cache / f"{k}.pkl")
