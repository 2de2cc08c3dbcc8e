"""Second moments C = E[k kᵀ] of module inputs over a sample of texts, with early exit, cached on disk.

    corpus = load_corpus(data_dir, "wikitext_test+boolq_test_passages")   # or hf:<id>[:<config>], or a local path
    spec = StatsSpec(dataset=..., n_samples=100_000, max_len=None)        # a method's or guard's mom2_* keys
    C, paths, counts = cached_second_moments(model, tok, ["model.layers.8.mlp.down_proj"], corpus, spec,
                                             model_id=models.identity(cfg.model), cache=cache_root / "stats")

As the reference computes them (kmeng01/memit `rome/layer_stats.py`, used by ROME, MEMIT and AlphaEdit):
`n_samples` counts *texts*, drawn as `random.Random(1).shuffle` over the corpus's indices (its
`FixedRandomSubsetSampler`, so the same dataset gives the same texts); each text is encoded as the tokenizer does by
default (BOS where it adds one) and truncated to the model's context (`max_len`, null); C averages k kᵀ over every
real token (padding masked). The reference reads 100,000 Wikipedia articles (`wikipedia` `20200501.en`); what a
corpus holds in texts and tokens, and tokens per key dimension, is logged with every run (`stats.*` params).

The forward pass stops (by an exception raised in a forward hook) as soon as the deepest requested module
has received its input: layers above it never run. Sums accumulate in float32. A cache file is keyed by
everything that changes its content: model identity, module, corpus name, the sampled texts' hash, their
number, the truncation length and dtype.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from editharm.batching import length_batches
from editharm.errors import DataError
from editharm.nethook import StopForward, get_module, run_until
from editharm.placement import input_device

# Statistics corpora in the data directory: never an evaluation split, and disjoint from the perplexity probe
# (WikiText-2 validation). Each row is one text, as a row of the hub's `wikitext` is for the reference.
CORPORA = {
    "wikitext_test": ("wikitext/wiki.test.raw.jsonl", "text"),
    "boolq_test_passages": ("boolq/superglue_test_unlabeled.jsonl", "passage"),
}
DEFAULT_CORPUS = "wikitext_test+boolq_test_passages"
SAMPLE_SEED = 1
"""The reference's `random_sample=1`."""


@dataclass(frozen=True)
class Corpus:
    name: str
    texts: Sequence[str]
    """Indexable; a hub or Parquet corpus reads a text only when it is sampled."""


@dataclass
class KeyStatistics:
    """The config keys of a method or guard built on C (ROME's C⁻¹, MEMIT's λC, AlphaEdit's and the nullspace
    guard's P): the reference's names and units."""
    mom2_dataset: str = DEFAULT_CORPUS
    """The texts: built-in corpora joined by '+', `hf:<id>[:<config>]` (the reference: Wikipedia, e.g.
    `hf:wikimedia/wikipedia:20231101.en` from the local hub cache), or a local Parquet/JSONL file or folder."""
    mom2_n_samples: int = 100_000
    """Texts sampled (the reference's value; a corpus with fewer texts is used whole, and the counts logged)."""
    mom2_max_len: Optional[int] = None
    """Tokens kept of each text; null: the model's context length, as the reference truncates."""


@dataclass(frozen=True)
class StatsSpec:
    """Which texts the statistics average over (a method's or guard's `mom2_dataset`, `mom2_n_samples`,
    `mom2_max_len`)."""
    dataset: str = DEFAULT_CORPUS
    n_samples: int = 100_000
    max_len: int | None = None

    @classmethod
    def of(cls, cfg) -> "StatsSpec":
        return cls(cfg.mom2_dataset, cfg.mom2_n_samples, cfg.mom2_max_len)


@dataclass(frozen=True)
class StatsKey:
    """Everything the cached statistic depends on."""

    model: str
    module: str
    corpus: str
    sample_sha256: str
    n_texts: int
    max_len: int
    dtype: str = "float32"
    unit: str = "texts"

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


def load_corpus(root: Path | None, dataset: str = DEFAULT_CORPUS) -> Corpus:
    """The texts of `dataset`: built-in corpora of the data directory joined by '+' (`wikitext_test`,
    `boolq_test_passages`); `hf:<id>[:<config>]`, a hub dataset's `train` split with a `text` column from the
    local hub cache (e.g. `hf:wikimedia/wikipedia:20231101.en`, the dump the reference reads; nothing is
    downloaded where the hub is offline); or a local `.parquet`/`.jsonl`/`.json` file or a folder of Parquet
    files with a `text` column (the same dump, downloaded)."""
    if dataset.startswith("hf:") or not all(n in CORPORA for n in dataset.split("+")):
        return _dataset_corpus(dataset)
    if root is None:
        raise DataError("key statistics need a text corpus: set EDITHARM_DATA_DIR to a folder holding "
                        + " and ".join(CORPORA[n][0] for n in dataset.split("+")))
    texts: list[str] = []
    for name in dataset.split("+"):
        rel, field = CORPORA[name]
        if not (root / rel).is_file():
            raise DataError(f"statistics corpus {name}: {rel} not found in the data directory {root}")
        with open(root / rel, encoding="utf-8") as f:
            texts += [t for t in (json.loads(line)[field].strip() for line in f if line.strip()) if t]
    return Corpus(dataset, tuple(texts))


class _Column(Sequence):
    """A `datasets.Dataset`'s `text` column, read row by row (a Wikipedia dump is never loaded whole)."""

    def __init__(self, ds):
        self._ds = ds

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i):
        return self._ds[int(i)]["text"]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _dataset_corpus(dataset: str) -> Corpus:
    import datasets

    valid = f"'{DEFAULT_CORPUS}' (or one of {sorted(CORPORA)}), hf:<hub id>[:<config>], or a local .parquet/.jsonl/.json file or folder"
    try:
        if dataset.startswith("hf:"):
            hub_id, _, name = dataset[3:].partition(":")
            ds = datasets.load_dataset(hub_id, name or None, split="train")
        else:
            path = Path(dataset).expanduser()
            files = sorted(str(p) for p in path.glob("**/*.parquet")) if path.is_dir() else [str(path)]
            if not path.exists() or not files:
                raise DataError(f"statistics corpus {dataset!r}: no such file or folder of Parquet files; valid: {valid}")
            kind = "parquet" if files[0].endswith(".parquet") else "json"
            ds = datasets.load_dataset(kind, data_files=files, split="train")
    except DataError:
        raise
    except Exception as err:  # the hub offline, a dataset not in the cache, an unreadable file
        raise DataError(f"statistics corpus {dataset!r} could not be loaded ({type(err).__name__}: {err}); "
                        f"valid: {valid}") from None
    if "text" not in ds.column_names:
        raise DataError(f"statistics corpus {dataset!r} has no `text` column (it has {ds.column_names})")
    return Corpus(dataset, _Column(ds))


def sample_texts(corpus: Corpus, n_samples: int) -> list[str]:
    """The reference's sample: the first `n_samples` indices of `random.Random(1).shuffle(range(len))`, or every
    text in order when the corpus holds no more than that."""
    n = len(corpus.texts)
    if n_samples >= n:
        return list(corpus.texts)
    order = list(range(n))
    random.Random(SAMPLE_SEED).shuffle(order)
    return [corpus.texts[i] for i in order[:n_samples]]


def encode_samples(tok, texts: list[str], max_len: int) -> list[list[int]]:
    """Each text as the tokenizer encodes it by default (special tokens included), truncated to `max_len`; texts
    that encode to nothing are dropped."""
    ids = [tok(t, truncation=True, max_length=max_len, verbose=False)["input_ids"] for t in texts]
    return [x for x in ids if x]


@torch.no_grad()
def second_moments(model: nn.Module, modules: list[str], samples: list[list[int]], batch_tokens: int = 4096,
                   pad_id: int = 0, early_exit: bool = True, progress: bool = True) -> dict[str, torch.Tensor]:
    """E[k kᵀ] of each module's input over every real token of `samples` (right-padded batches, padding masked),
    accumulated in float32."""
    device = input_device(model)
    sums: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    mask = torch.ones(0, dtype=torch.bool)
    count = 0

    def hook_for(name: str):
        def hook(_module, args):
            x = args[0].detach()[mask.to(args[0].device)].float()  # summed where the layer runs
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
            seen.add(name)
            if early_exit and len(seen) == len(modules):
                raise StopForward
        return hook

    handles = [get_module(model, m).register_forward_pre_hook(hook_for(m)) for m in modules]
    try:
        for batch in tqdm(length_batches(samples, batch_tokens), desc="key statistics", disable=not progress):
            width = len(batch[0])
            ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in batch], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device).bool()
            seen.clear()
            run_until(model, input_ids=ids, attention_mask=mask.long(), use_cache=False)
            count += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    return {m: sums[m] / count for m in modules}


def cached_second_moments(model: nn.Module, tok, modules: list[str], corpus: Corpus, spec: StatsSpec, model_id: str,
                          cache: Path, context: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Path], dict[str, int]]:
    """Second moments for `modules`, read from `cache` when present, else computed (one early-exit pass for all
    missing modules) and written atomically. `context` is the model's position limit (the truncation when
    `spec.max_len` is null). Returns the matrices, their cache files, and `{"n_texts", "n_tokens"}` counted."""
    max_len = spec.max_len or context or tok.model_max_length
    texts = sample_texts(corpus, spec.n_samples)
    sha = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    keys = {m: StatsKey(model_id, m, corpus.name, sha, len(texts), max_len) for m in modules}
    paths = {m: cache / f"{keys[m].digest()}.safetensors" for m in modules}
    out, counts = {}, {}
    for m, p in paths.items():
        if p.exists():
            with safe_open(str(p), "pt") as f:
                out[m], meta = f.get_tensor("C"), f.metadata()
            counts = {"n_texts": int(meta["n_texts"]), "n_tokens": int(meta["n_tokens"])}
    missing = [m for m in modules if m not in out]
    if missing:
        samples = encode_samples(tok, texts, max_len)
        if not samples:
            raise DataError(f"statistics corpus {corpus.name} has no text that encodes to a token")
        counts = {"n_texts": len(samples), "n_tokens": sum(map(len, samples))}
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        fresh = second_moments(model, missing, samples, pad_id=pad)
        cache.mkdir(parents=True, exist_ok=True)
        for m in missing:
            fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
            os.close(fd)
            meta = {**{k: str(v) for k, v in asdict(keys[m]).items()}, **{k: str(v) for k, v in counts.items()}}
            save_file({"C": fresh[m].cpu().contiguous()}, tmp, metadata=meta)
            os.replace(tmp, paths[m])
            out[m] = fresh[m].cpu()
    return out, paths, counts
