"""How far a generation task's per-example outputs move with the scoring dtype and the batch shape.

    python benchmarks/eval_agreement.py --tasks rte,nq_open --limit 100

Scores each task five ways: the previous path's generation (`generate`, length-sorted batches of 32, and of
16) in bfloat16, the current one (`generate_and_score` on `TaskEvaluator`'s
token-budget batches) in bfloat16, and both again in float32. Prints the share of equal outputs for each
pair: in float32 the two paths must agree (they compute the same thing), while in bfloat16 a batch's
padding alone moves some outputs, which is the bar the current path's bf16 agreement is read against.
"""
from __future__ import annotations

import argparse
import itertools
import os

import torch

from editharm import data, models
from editharm.config import load as load_config
from editharm.tasks import load_task
from editharm.tasks.evaluator import TaskEvaluator
from editharm.tasks.inference import generate, generate_and_score
from editharm.tasks.likelihood import gold_text


def previous(model, tok, task, items, batch: int) -> dict[int, str]:
    spec, out = task.spec, {}
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        texts = generate(model, tok, [it.prompt for it in chunk], spec.generation.max_new_tokens,
                         list(spec.generation.stop), len(chunk))
        out.update({it.index: t for it, t in zip(chunk, texts)})
    return out


def current(model, tok, task, ev: TaskEvaluator) -> dict[int, str]:
    spec, out = task.spec, {}
    for chunk in ev.dataloader():
        golds = [spec.target_delimiter + gold_text(spec.gold, it.target) for it in chunk]
        texts, _ = generate_and_score(model, tok, [it.prompt for it in chunk], golds, spec.generation.max_new_tokens,
                                      list(spec.generation.stop), len(chunk))
        out.update({it.index: t for it, t in zip(chunk, texts)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default="rte,nq_open")
    p.add_argument("--limit", type=int, default=100)
    args = p.parse_args()
    cfg = load_config([f"model={args.model}"])
    f32, tok = models.load(cfg.model, models.cache_root())
    bf16 = models.load(cfg.model, models.cache_root())[0].to(torch.bfloat16)
    for name in args.tasks.split(","):
        task = load_task(name, cfg.tasks.protocol, data.data_dir(None), args.limit)
        ev = TaskEvaluator(task, tok, cfg.tasks.batch_size, "float32", cfg.tasks.batch_tokens)
        runs = {"previous/32 bf16": previous(bf16, tok, task, ev.items, 32),
                "previous/16 bf16": previous(bf16, tok, task, ev.items, 16),
                "current bf16": current(bf16, tok, task, ev),
                "previous/32 f32": previous(f32, tok, task, ev.items, 32),
                "current f32": current(f32, tok, task, ev)}
        print(f"{name} (n={len(task.items)}): share of equal outputs")
        for a, b in itertools.combinations(runs, 2):
            same = sum(runs[a][i] == runs[b][i] for i in runs[a]) / len(runs[a])
            print(f"  {a:17s} vs {b:17s} {same:.2f}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
