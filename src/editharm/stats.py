"""Second moments C = E[k kᵀ] of module inputs over a text corpus, with early exit, cached on disk.

    corpus = load_corpus(data_dir)
    C, paths = cached_second_moments(model, tok, ["model.layers.8.mlp.down_proj"], corpus, n_tokens=100_000,
                                     seq_len=256, model_id=models.identity(cfg.model), cache=cache_root / "stats")

The forward pass stops (by an exception raised in a forward hook) as soon as the deepest requested module
has received its input: layers above it never run. Sums accumulate in float32. A cache file is keyed by
everything that changes its content: model identity (weight hash or revision), module, corpus name and
content hash, token count, sequence length and dtype.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from editharm.errors import DataError
from editharm.nethook import StopForward, get_module, run_until

# Statistics corpora: never an evaluation split, and disjoint from the perplexity probe (WikiText-2 validation).
CORPORA = {
    "wikitext_test": ("wikitext/wiki.test.raw.jsonl", "text"),
    "boolq_test_passages": ("boolq/superglue_test_unlabeled.jsonl", "passage"),
}


@dataclass(frozen=True)
class Corpus:
    name: str
    texts: tuple[str, ...]

    @cached_property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for text in self.texts:
            h.update(text.encode())
            h.update(b"\0")
        return h.hexdigest()


@dataclass(frozen=True)
class StatsKey:
    """Everything the cached statistic depends on."""

    model: str
    module: str
    corpus: str
    corpus_sha256: str
    n_tokens: int
    seq_len: int
    dtype: str = "float32"

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


def load_corpus(root: Path | None, names: tuple[str, ...] = ("wikitext_test", "boolq_test_passages")) -> Corpus:
    """Texts of the named corpora from the data directory, in a fixed order."""
    if root is None:
        raise DataError("key statistics need a text corpus: set EDITHARM_DATA_DIR to a folder holding "
                        + " and ".join(CORPORA[n][0] for n in names))
    texts: list[str] = []
    for name in names:
        rel, field = CORPORA[name]
        if not (root / rel).is_file():
            raise DataError(f"statistics corpus {name}: {rel} not found in the data directory {root}")
        with open(root / rel, encoding="utf-8") as f:
            texts += [t for t in (json.loads(line)[field].strip() for line in f if line.strip()) if t]
    return Corpus("+".join(names), tuple(texts))


def token_chunks(tok, corpus: Corpus, n_tokens: int, seq_len: int) -> torch.Tensor:
    """The corpus tokenized and cut into full rows of `seq_len` tokens, `n_tokens` in all (no padding)."""
    ids: list[int] = []
    for text in corpus.texts:
        ids += tok(text + "\n", add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= n_tokens:
            break
    rows = min(n_tokens, len(ids)) // seq_len
    if rows == 0:
        raise DataError(f"corpus {corpus.name} has fewer than {seq_len} tokens")
    return torch.tensor(ids[: rows * seq_len]).view(rows, seq_len)


@torch.no_grad()
def second_moments(model: nn.Module, modules: list[str], chunks: torch.Tensor, batch_size: int = 8,
                   early_exit: bool = True, progress: bool = True) -> dict[str, torch.Tensor]:
    """E[k kᵀ] of each module's input over all positions of `chunks`, accumulated in float32."""
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    count = 0

    def hook_for(name: str):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
            seen.add(name)
            if early_exit and len(seen) == len(modules):
                raise StopForward
        return hook

    handles = [get_module(model, m).register_forward_pre_hook(hook_for(m)) for m in modules]
    try:
        for batch in tqdm(chunks.split(batch_size), desc="key statistics", disable=not progress):
            seen.clear()
            run_until(model, input_ids=batch.to(device), use_cache=False)
            count += batch.numel()
    finally:
        for h in handles:
            h.remove()
    return {m: sums[m] / count for m in modules}


def cached_second_moments(model: nn.Module, tok, modules: list[str], corpus: Corpus, n_tokens: int, seq_len: int,
                          model_id: str, cache: Path, batch_size: int = 8) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Second moments for `modules`, read from `cache` when present, else computed (one early-exit pass for
    all missing modules) and written atomically. Returns the matrices and their cache files."""
    keys = {m: StatsKey(model_id, m, corpus.name, corpus.sha256, n_tokens, seq_len) for m in modules}
    paths = {m: cache / f"{keys[m].digest()}.safetensors" for m in modules}
    out = {m: load_file(str(p))["C"] for m, p in paths.items() if p.exists()}
    missing = [m for m in modules if m not in out]
    if missing:
        chunks = token_chunks(tok, corpus, n_tokens, seq_len)
        fresh = second_moments(model, missing, chunks, batch_size)
        cache.mkdir(parents=True, exist_ok=True)
        for m in missing:
            fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
            os.close(fd)
            save_file({"C": fresh[m].cpu().contiguous()}, tmp, metadata={k: str(v) for k, v in asdict(keys[m]).items()})
            os.replace(tmp, paths[m])
            out[m] = fresh[m].cpu()
    return out, paths
