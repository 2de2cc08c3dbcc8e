"""Task metrics as torchmetrics `Metric`s: per-example statistics gathered across processes.

Each metric turns (prediction, target) pairs into a row of per-example statistics; `compute` orders the
rows by example index (so the result does not depend on how examples were split across processes),
aggregates them, and adds n, the valid-output rate and a seeded 95 % bootstrap interval per score. Once a
baseline is kept (`keep_baseline`, the evaluator's step 0), `compute` also reports each score's paired difference
from it, `<score>_delta`, with a paired bootstrap interval (the same resampled examples in both row sets).
"""
from __future__ import annotations

import re
import string
from collections import Counter

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from editharm.registry import register_metric

N_BOOTSTRAP = 1000


def resample(n: int, n_bootstrap: int, seed: int) -> torch.Tensor:
    """Example indices drawn with replacement, `n_bootstrap` times `n` of them (seeded): shape (n_bootstrap, n)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(n, (n_bootstrap, n), generator=g)


def bootstrap(rows: torch.Tensor, n_bootstrap: int, seed: int) -> torch.Tensor:
    """`rows` resampled with replacement along the first dimension, `n_bootstrap` times (seeded):
    shape (n_bootstrap, *rows.shape)."""
    return rows[resample(len(rows), n_bootstrap, seed)]


def paired_bootstrap(now: torch.Tensor, base: torch.Tensor, aggregate, n_bootstrap: int,
                     seed: int) -> dict[str, torch.Tensor]:
    """Bootstrap replicates of `aggregate(now) - aggregate(base)`, shape (n_bootstrap,) per score. Row i of
    `now` and of `base` belong to the same example, so each replicate applies one draw of example indices
    to both (the seed convention of `bootstrap`: the same draw it makes)."""
    if now.shape != base.shape:
        raise ValueError(f"paired rows must have one shape, got {tuple(now.shape)} and {tuple(base.shape)}")
    idx = resample(len(now), n_bootstrap, seed)
    a, b = aggregate(now[idx]), aggregate(base[idx])
    return {name: a[name] - b[name] for name in a}


def interval95(samples: torch.Tensor) -> torch.Tensor:
    """The 2.5 % and 97.5 % quantiles of `samples` over its first dimension: shape (2, ...)."""
    return torch.quantile(samples, torch.tensor([0.025, 0.975], dtype=samples.dtype), dim=0)


class ExampleMetric(Metric):
    """Base: subclasses define `stats` (column names), `example` and, if not column means, `aggregate`."""

    full_state_update = False
    higher_is_better = True
    stats: tuple[str, ...] = ()
    primary: str = ""
    """The headline score among the aggregated ones."""

    def __init__(self, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("rows", default=[], dist_reduce_fx="cat")
        self.add_state("valid", default=[], dist_reduce_fx="cat")
        self.example_rows: tuple[torch.Tensor, torch.Tensor] | None = None
        """(index, rows) of the last `compute`, ordered by example index, gathered over processes."""
        self.baseline: tuple[torch.Tensor, torch.Tensor] | None = None
        """(index, rows) that `<score>_delta` is measured from (see `keep_baseline`)."""

    def example(self, pred, target) -> list[float]:
        raise NotImplementedError

    def aggregate(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scores of a set of examples; `rows` is (..., n, k) and the scores have shape (...)."""
        means = rows.mean(-2)
        return {name: means[..., i] for i, name in enumerate(self.stats)}

    def update(self, index: list[int], preds: list, targets: list) -> None:
        values = [self.example(p, t) for p, t in zip(preds, targets)]
        self.index.append(torch.tensor(index, dtype=torch.long, device=self.device))
        self.rows.append(torch.tensor(values, dtype=torch.float64, device=self.device).view(len(values), len(self.stats)))
        self.valid.append(torch.tensor([p is not None for p in preds], dtype=torch.float64, device=self.device))

    def compute(self) -> dict[str, float]:
        if isinstance(self.index, list) and not self.index:  # after a sync the states are tensors
            return {}
        index, rows, valid = (dim_zero_cat(x).cpu() for x in (self.index, self.rows, self.valid))
        order = index.argsort()
        index, rows, valid = index[order], rows[order], valid[order]
        self.example_rows = (index, rows)
        out = {k: float(v) for k, v in self.aggregate(rows).items()}
        for name, boot in self.aggregate(bootstrap(rows, self.n_bootstrap, self.seed)).items():
            lo, hi = interval95(boot)
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(lo), float(hi)
        if self.baseline is not None:
            out.update(self.deltas(index, rows))
        out["n"] = float(len(rows))
        out["valid_rate"] = float(valid.mean())
        return out

    def keep_baseline(self) -> None:
        """Make the rows of the last `compute` the baseline: later computes add `<score>_delta` from it."""
        if self.example_rows is None:
            raise RuntimeError(f"{type(self).__name__}.keep_baseline: nothing computed yet")
        self.baseline = self.example_rows

    def deltas(self, index: torch.Tensor, rows: torch.Tensor) -> dict[str, float]:
        """`<score>_delta` = score(rows) - score(baseline) with its paired 95 % bootstrap interval
        (`_delta_ci_low`, `_delta_ci_high`); the examples must be the baseline's."""
        base_index, base = self.baseline
        if not torch.equal(index, base_index):
            raise ValueError(f"{type(self).__name__}: paired deltas need the baseline's examples; got {len(index)} "
                             f"examples, the baseline has {len(base_index)}, and their indices differ")
        now, before = self.aggregate(rows), self.aggregate(base)
        out = {}
        for name, boot in paired_bootstrap(rows, base, self.aggregate, self.n_bootstrap, self.seed).items():
            lo, hi = interval95(boot)
            out[f"{name}_delta"] = float(now[name] - before[name])
            out[f"{name}_delta_ci_low"], out[f"{name}_delta_ci_high"] = float(lo), float(hi)
        return out


@register_metric("accuracy")
class Accuracy(ExampleMetric):
    """Share of examples whose parsed prediction equals the target; invalid outputs count as wrong.
    Also `accuracy_valid`: accuracy over valid outputs only (the paper's scripts computed both)."""

    stats = ("accuracy",)
    primary = "accuracy"

    def example(self, pred, target) -> list[float]:
        return [float(pred is not None and pred == target)]

    def compute(self) -> dict[str, float]:
        out = super().compute()
        if out:
            valid = out["valid_rate"]
            out["accuracy_valid"] = out["accuracy"] / valid if valid > 0 else 0.0
        return out


def squad_normalize(text: str) -> str:
    """SQuAD answer normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


@register_metric("exact_match")
class ExactMatch(ExampleMetric):
    """`exact_match`: the normalized prediction equals a normalized gold answer (max over answers).
    `contains`: a normalized gold answer occurs as whole words inside the normalized prediction."""

    stats = ("exact_match", "contains")
    primary = "exact_match"

    def example(self, pred, target) -> list[float]:
        golds = [squad_normalize(t) for t in ([target] if isinstance(target, str) else target)]
        if pred is None:
            return [0.0, 0.0]
        p = squad_normalize(pred)
        return [float(p in golds), float(any(g and f" {g} " in f" {p} " for g in golds))]


@register_metric("rouge")
class Rouge(ExampleMetric):
    """ROUGE-1/2/L F-measure per example (rouge-score, Porter stemming) and their mean `rouge_avg`,
    the paper's aggregate (R1 + R2 + RL) / 3."""

    stats = ("rouge1", "rouge2", "rougeL")
    primary = "rouge_avg"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from rouge_score.rouge_scorer import RougeScorer

        self._scorer = RougeScorer(list(self.stats), use_stemmer=True)

    def example(self, pred, target) -> list[float]:
        if not pred:
            return [0.0, 0.0, 0.0]
        scores = self._scorer.score(target, pred)
        return [scores[k].fmeasure for k in self.stats]

    def aggregate(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().aggregate(rows)
        out["rouge_avg"] = rows.mean(-2).mean(-1)
        return out


def entity_key(text: str) -> str:
    return " ".join(text.split()).casefold()


@register_metric("entity_f1")
class EntityF1(ExampleMetric):
    """Entity-level micro precision / recall / F1: predicted entity strings matched one-to-one against
    gold entity spans (case-insensitive, whitespace-normalized), summed over all examples."""

    stats = ("tp", "fp", "fn")
    primary = "f1"

    def example(self, pred, target) -> list[float]:
        gold = Counter(entity_key(t) for t in target)
        guess = Counter(entity_key(p) for p in (pred or ()))
        tp = sum((gold & guess).values())
        return [float(tp), float(sum(guess.values()) - tp), float(sum(gold.values()) - tp)]

    def aggregate(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        tp, fp, fn = rows.sum(-2).unbind(-1)
        precision = tp / (tp + fp).clamp_min(1e-12)
        recall = tp / (tp + fn).clamp_min(1e-12)
        f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
        return {"f1": f1, "precision": precision, "recall": recall}
