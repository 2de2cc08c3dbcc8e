"""Length-sorted batches under a padded-token budget: long sequences go in small batches, short ones in large.

    length_batches(samples, batch_tokens=4096)                       # lists of token ids
    length_batches(items, 4096, max_rows=64, length=lengths.get)      # anything, with its length
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def length_batches(items: Sequence[T], batch_tokens: int, max_rows: int | None = None,
                   length: Callable[[T], int] = len) -> list[list[T]]:
    """`items` sorted longest first (stable for equal lengths) and grouped so that a batch's padded size
    (longest × rows) stays within `batch_tokens` and its rows within `max_rows` (a single longer item is a
    batch of its own), as the MEMIT reference's `length_collation` groups its statistics texts."""
    batches: list[list[T]] = []
    batch: list[T] = []
    for item in sorted(items, key=length, reverse=True):
        if batch and (length(batch[0]) * (len(batch) + 1) > batch_tokens or len(batch) == max_rows):
            batches.append(batch)
            batch = []
        batch.append(item)
    return batches + ([batch] if batch else [])
