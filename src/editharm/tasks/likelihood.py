"""A continuous score beside every task's metric: how likely the model finds the gold answer.

- choice tasks: `gold_logprob` = log P(gold choice | prompt), summed over the choice's tokens (the number
  `choice_logliks` already computes), and `gold_mass` = the gold choice's probability renormalised over the
  task's choices (softmax of the choice log-likelihoods at the gold index). No extra forward pass.
- generation tasks: `gold_logprob` = mean per-token log P(gold text | prompt), teacher-forced in one more
  batched pass; the gold text is made from the target as the spec's `gold` says.

`GoldLikelihood` is an `ExampleMetric`, so its bootstrap intervals and paired deltas are the metrics' own.
"""
from __future__ import annotations

from typing import Any

import torch

from editharm.tasks.metrics import ExampleMetric
from editharm.tasks.spec import Gold

CHOICE_STATS = ("gold_logprob", "gold_mass")
GENERATE_STATS = ("gold_logprob",)


def gold_text(gold: Gold, target: Any) -> str:
    """The gold answer as text: a string target stripped; a list its first item, or all joined by `gold.join`
    (`gold.empty` for an empty list)."""
    if isinstance(target, str):
        return target.strip()
    items = [str(t).strip() for t in target]
    if not items:
        return gold.empty
    return gold.join.join(items) if gold.join is not None else items[0]


def choice_gold(scores: list[float], gold: int) -> tuple[float, float]:
    """(log-likelihood of the gold choice, its probability renormalised over the choices)."""
    logp = torch.tensor(scores, dtype=torch.float64)
    return float(logp[gold]), float(logp.softmax(0)[gold])


class GoldLikelihood(ExampleMetric):
    """Per-example likelihood statistics, given ready-made: `update(index, [(gold_logprob, ...), ...])`."""

    higher_is_better = True
    primary = "gold_logprob"

    def __init__(self, stats: tuple[str, ...] = GENERATE_STATS, **kwargs):
        super().__init__(**kwargs)
        self.stats = tuple(stats)

    def example(self, pred, target) -> list[float]:
        return [float(v) for v in pred]

    def update(self, index: list[int], values: list[tuple[float, ...]], targets: list | None = None) -> None:
        super().update(index, values, targets if targets is not None else [None] * len(values))

    def compute(self) -> dict[str, float]:
        out = super().compute()
        out.pop("valid_rate", None)  # nothing is parsed: every example is valid
        return out
