"""`TaskEvaluator`: one ability task as a validation dataloader of `EditModule` (`ability/<task>/...`).

Each evaluation reports the task's metric and the gold answer's likelihood (`tasks/likelihood.py`), each
with its bootstrap interval; the first evaluation (step 0, the unedited model) is kept as the baseline, and
every later one adds `<score>_delta`, the paired difference from it. `constants` holds what never changes.
"""
from __future__ import annotations

import hashlib
from collections import Counter

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from editharm.batching import length_batches
from editharm.evaluators import Evaluator
from editharm.registry import METRICS, lookup
from editharm.tasks.inference import choice_logliks, generate_and_score
from editharm.tasks.likelihood import CHOICE_STATS, GENERATE_STATS, GoldLikelihood, choice_gold, gold_text
from editharm.tasks.task import Item, Task


class TaskEvaluator(Evaluator):
    """Scores a task's items with greedy generation + parsing, or with choice log-likelihoods.

    Items are sorted by prompt length and grouped under a padded-token budget (`batch_tokens`, at most
    `batch_size` rows), so long prompts go in small batches and short ones in large; under DDP each process
    takes every world-size-th item and the metric gathers per-example rows, so the numbers equal a single
    process's.
    """

    def __init__(self, task: Task, tok, batch_size: int = 64, dtype: str = "float32", batch_tokens: int = 4096):
        super().__init__()
        self.task = task
        self.name = task.spec.name
        self.prefix = f"ability/{task.spec.name}"
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.dtype = getattr(torch, dtype)
        self.metric = self.make_metric()
        self.likelihood = GoldLikelihood(CHOICE_STATS if task.spec.kind == "choice" else GENERATE_STATS)
        self.has_baseline = False
        self.lengths = {it.index: len(tok(it.prompt)["input_ids"]) for it in task.items}
        self.items = sorted(task.items, key=lambda it: (-self.lengths[it.index], it.index))
        self.rows: list[dict] = []
        self.golds: list[tuple] = []
        """Each row's gold-answer statistics, as the likelihood metric was updated with them (for `recording`)."""

    def make_metric(self):
        """The task's per-example metric (an `ExampleMetric`): the registered one its spec names."""
        return lookup(METRICS, self.task.spec.metric, "metric")()

    def dataloader(self) -> DataLoader:
        items = self.items
        if dist.is_available() and dist.is_initialized():
            items = items[dist.get_rank()::dist.get_world_size()]
        batches = length_batches(items, self.batch_tokens, self.batch_size, lambda it: self.lengths[it.index])
        return DataLoader(batches, batch_size=None, collate_fn=list)

    def update(self, module, batch: list[Item]) -> None:
        if self.replayed:
            return
        spec = self.task.spec
        prompts = [it.prompt for it in batch]
        model = module.scoring_model(self.dtype)
        if spec.kind == "choice":
            scores = choice_logliks(model, module.tokenizer, prompts, [list(it.choices) for it in batch], len(batch))
            outputs = scores
            parsed = [max(range(len(s)), key=s.__getitem__) for s in scores]
            gold = [choice_gold(s, it.target) for s, it in zip(scores, batch)]
        else:
            texts = [spec.target_delimiter + gold_text(spec.gold, it.target) for it in batch]
            outputs, logps = generate_and_score(model, module.tokenizer, prompts, texts, spec.generation.max_new_tokens,
                                                list(spec.generation.stop), len(batch))
            parsed = [self.task.parse(o) for o in outputs]
            gold = [(lp,) for lp in logps]
        targets = [it.target for it in batch]
        index = [it.index for it in batch]
        self.metric.update(index, parsed, targets)
        self.likelihood.update(index, gold)
        for it, out, p, g in zip(batch, outputs, parsed, gold):
            self.rows.append({"index": it.index, "prompt": it.prompt, "output": out, "parsed": p,
                              "gold": it.target, "score": self.metric.example(p, it.target)[0], "gold_logprob": g[0]})
        self.golds.extend(gold)

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        """Scores, intervals and, after the first evaluation, paired deltas from it; `n` is a constant."""
        values = self.metric.compute()
        if not values:
            return {}, []
        values.update(self.likelihood.compute())
        values.pop("n")
        if not self.has_baseline:  # the first evaluation: step 0, the unedited model
            self.metric.keep_baseline()
            self.likelihood.keep_baseline()
            self.has_baseline = True
        return values, sorted(_gather(self.rows), key=lambda r: r["index"])

    def series(self) -> tuple[str, ...]:
        """The task's headline score and the gold answer's log-probability, each with its paired difference."""
        p = self.metric.primary
        return p, f"{p}_delta", "gold_logprob", "gold_logprob_delta"

    def constants(self) -> dict[str, float]:
        """`n`, `chance` and, for a closed label set, `majority` (the majority-class rate, the bar to clear)."""
        out = {"n": len(self.task.items), "chance": self.task.spec.chance}
        if self.task.spec.chance > 0:
            counts = Counter(str(it.target) for it in self.task.items)
            out["majority"] = max(counts.values()) / len(self.task.items)
        return out

    def reset(self) -> None:
        self.metric.reset()
        self.likelihood.reset()
        self.rows = []
        self.golds = []
        self.replayed = False

    def replay_key(self) -> str | None:
        """The data as scored (prompts after any chat template or truncation, targets), the task's spec and the
        scoring settings."""
        if dist.is_available() and dist.is_initialized():
            return None  # each process holds a share of the rows
        items = hashlib.sha256(repr([(it.index, it.prompt, it.target, it.choices) for it in self.items]).encode())
        spec = hashlib.sha256(repr(self.task.spec).encode()).hexdigest()[:16]  # parser, metric, generation, ...
        return f"{self.data_key()}:{items.hexdigest()[:16]}:{spec}:{self.dtype}:{self.batch_size}:{self.batch_tokens}"

    def recording(self) -> dict:
        return {"rows": list(self.rows), "golds": list(self.golds)}

    def replay(self, record: dict) -> None:
        rows = record["rows"]
        self.metric.update([r["index"] for r in rows], [r["parsed"] for r in rows], [r["gold"] for r in rows])
        self.likelihood.update([r["index"] for r in rows], record["golds"])
        self.rows, self.golds = list(rows), list(record["golds"])
        self.replayed = True

    def resume_state(self) -> dict:
        """The step-0 rows the paired deltas are measured from."""
        return {"baseline": self.metric.baseline, "likelihood_baseline": self.likelihood.baseline,
                "has_baseline": self.has_baseline}

    def load_resume_state(self, state: dict) -> None:
        self.metric.baseline = state["baseline"]
        self.likelihood.baseline = state["likelihood_baseline"]
        self.has_baseline = state["has_baseline"]

    def baseline_state(self) -> dict:
        """The per-example rows of the last evaluation, for paired differences from it."""
        return {"baseline": self.metric.example_rows, "likelihood_baseline": self.likelihood.example_rows,
                "has_baseline": True}

    def load_baseline(self, state: dict) -> None:
        self.load_resume_state(state)

    def data_key(self) -> str:
        """The task, its protocol and version, and the examples scored (their indices)."""
        spec = self.task.spec
        indices = ",".join(str(i) for i in sorted(it.index for it in self.task.items))
        return f"{spec.name}:{spec.protocol}:v{spec.version}:{hashlib.sha256(indices.encode()).hexdigest()[:16]}"


def _gather(rows: list[dict]) -> list[dict]:
    if not (dist.is_available() and dist.is_initialized()):
        return rows
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return [r for part in parts for r in part]
