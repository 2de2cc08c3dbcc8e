"""`Progress`: the Lightning callback that says on the console (through `logging`) what a run is doing: each edit
step with the method, each evaluation's tasks with their sizes, and what each evaluation found and took.

    trainer = L.Trainer(callbacks=[Progress(n_requests)], enable_progress_bar=False, ...)
"""
from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger("editharm")


class Progress(L.Callback):
    """One line per edit step and per evaluated task: what runs now, how far the run is, what it took."""

    def __init__(self, n_requests: int = 0):
        self.n = n_requests
        self._task: int | None = None
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        first = module.n_edits + 1
        span = f"{first}" if len(batch) == 1 else f"{first}-{module.n_edits + len(batch)}"
        first_request = batch[0]  # the fact, not its prompt (which a chat template would open with markup)
        log.info("edit %s of %d (%s): %s -> %s", span, self.n, module.hp.name, first_request.subject,
                 first_request.target_new.strip())

    def on_validation_epoch_start(self, trainer, module) -> None:
        self._task, self._t0 = None, time.perf_counter()
        names = [ev.name for ev in module.evaluators]
        log.info("evaluation after %d edits: %s", module.n_edits, ", ".join(names) or "nothing to score")

    def on_validation_batch_start(self, trainer, module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != self._task:
            self._task = dataloader_idx
            ev = module.evaluators[dataloader_idx]
            size = len(getattr(ev, "items", None) or getattr(ev, "requests", None) or ())
            log.info("  %d/%d %s%s", dataloader_idx + 1, len(module.evaluators), ev.name,
                     f": {size} items" if size else "")

    def on_validation_end(self, trainer, module) -> None:
        if not module.history:
            return
        step, metrics = module.history[-1]
        shown = [f"{ev.name} {metrics[f'{ev.prefix}/{ev.series()[0]}']:.3f}" for ev in module.evaluators
                 if ev.series() and f"{ev.prefix}/{ev.series()[0]}" in metrics]
        if "probe/perplexity" in metrics:
            shown.append(f"perplexity {metrics['probe/perplexity']:.4g}")
        log.info("evaluation after %d edits done in %.0f s%s", step, time.perf_counter() - self._t0,
                 ": " + ", ".join(shown) if shown else "")
