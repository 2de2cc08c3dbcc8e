"""Validation loop of several task evaluators on tiny-llama in 1 or 2 CPU processes (Lightning DDP, gloo).

    python tests/ddp_eval.py OUT.json DEVICES DATA_DIR

Validates twice (the second evaluation adds paired deltas from the first) and writes rank 0's last metrics
and its constants as JSON; tests/tasks/test_ddp.py compares the two process counts.
"""
import json
import sys
from pathlib import Path

import lightning as L

from editharm import config, models
from editharm.data import EditDataModule
from editharm.module import EditModule
from editharm.tasks import load_task
from editharm.tasks.evaluator import TaskEvaluator

TASKS = [("sst2", "harness"), ("mutual", "harness"), ("samsum", "gu2024"), ("conll03", "gu2024"), ("rte", "gu2024")]


def main(out: str, devices: int, data_dir: str) -> None:
    cfg = config.load(["model=tiny-llama", "tasks.dtype=float32"])
    model, tok = models.load(cfg.model, models.cache_root())
    evaluators = [TaskEvaluator(load_task(n, p, Path(data_dir)), tok, batch_size=2) for n, p in TASKS]
    module = EditModule(cfg, model, tok, evaluators, n_requests=0)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, inference_mode=False)
    for _ in range(2):
        trainer.validate(module, datamodule=EditDataModule([], 1, evaluators), verbose=False)
    if trainer.global_rank == 0:
        metrics = {k: v for k, v in module.history[-1][1].items() if not k.startswith("time/")}
        metrics.update(module.constants)
        Path(out).write_text(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
