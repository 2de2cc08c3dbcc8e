"""`TaskEvaluator`: one ability task as a validation dataloader of `EditModule` (`ability/<task>/...`)."""
from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from editharm.evaluators import Evaluator
from editharm.registry import METRICS, lookup
from editharm.tasks.inference import choice_logliks, generate
from editharm.tasks.task import Item, Task


class TaskEvaluator(Evaluator):
    """Scores a task's items with greedy generation + parsing, or with choice log-likelihoods.

    Items are sorted by prompt length so batches pad little; under DDP each process takes every
    world-size-th item and the metric gathers per-example rows, so the numbers equal a single process's.
    """

    def __init__(self, task: Task, tok, batch_size: int = 32, dtype: str = "float32"):
        super().__init__()
        self.task = task
        self.name = task.spec.name
        self.prefix = f"ability/{task.spec.name}"
        self.batch_size = batch_size
        self.dtype = getattr(torch, dtype)
        self.metric = lookup(METRICS, task.spec.metric, "metric")()
        lengths = {it.index: len(tok(it.prompt)["input_ids"]) for it in task.items}
        self.items = sorted(task.items, key=lambda it: (-lengths[it.index], it.index))
        self.rows: list[dict] = []

    def dataloader(self) -> DataLoader:
        items = self.items
        if dist.is_available() and dist.is_initialized():
            items = items[dist.get_rank()::dist.get_world_size()]
        return DataLoader(items, batch_size=self.batch_size, collate_fn=list)

    def update(self, module, batch: list[Item]) -> None:
        spec = self.task.spec
        prompts = [it.prompt for it in batch]
        model = module.scoring_model(self.dtype)
        if spec.kind == "choice":
            scores = choice_logliks(model, module.tokenizer, prompts, [list(it.choices) for it in batch], len(batch))
            outputs = scores
            parsed = [max(range(len(s)), key=s.__getitem__) for s in scores]
        else:
            outputs = generate(model, module.tokenizer, prompts, spec.generation.max_new_tokens,
                               list(spec.generation.stop), len(batch))
            parsed = [self.task.parse(o) for o in outputs]
        targets = [it.target for it in batch]
        self.metric.update([it.index for it in batch], parsed, targets)
        for it, out, p in zip(batch, outputs, parsed):
            self.rows.append({"index": it.index, "prompt": it.prompt, "output": out, "parsed": p,
                              "gold": it.target, "score": self.metric.example(p, it.target)[0]})

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        values = self.metric.compute()
        if not values:
            return {}, []
        values["chance"] = self.task.spec.chance
        if self.task.spec.chance > 0:  # a closed label set: the majority class is the bar to clear
            counts = Counter(str(it.target) for it in self.task.items)
            values["majority"] = max(counts.values()) / len(self.task.items)
        return values, sorted(_gather(self.rows), key=lambda r: r["index"])

    def reset(self) -> None:
        self.metric.reset()
        self.rows = []


def _gather(rows: list[dict]) -> list[dict]:
    if not (dist.is_available() and dist.is_initialized()):
        return rows
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return [r for part in parts for r in part]
