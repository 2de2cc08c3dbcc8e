"""What a command shows on the console: `setup` routes the package's `logging` to stderr and quiets Lightning's and
transformers' banners; `Progress` (a Lightning callback) says what a run is doing; `results` is the table printed at
the end of every edit, evaluate and experiment run.

    console.setup(quiet=False)                  # the CLI; a library user configures `logging` as they like
    trainer = L.Trainer(callbacks=[console.Progress()], enable_progress_bar=False, ...)
    print(console.results(run_id, uri))

Library code logs through `logging.getLogger(__name__)` (names under `editharm`), never `print`.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import lightning as L

log = logging.getLogger("editharm")
QUIETED = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric", "transformers",
           "accelerate", "mlflow")


def setup(quiet: bool = False) -> None:
    """`editharm: <message>` lines on stderr for the package's log (INFO; ERROR with `quiet`); Lightning's
    hardware banners and tips, transformers' and MLflow's notices and the model-loading bars silenced."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("editharm: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.ERROR if quiet else logging.INFO)
    log.propagate = False
    for name in QUIETED:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets its own level when imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # the key-statistics and loading bars too


class _Stderr(logging.StreamHandler):
    """A handler on whatever `sys.stderr` is when a line is written (test captures, notebooks replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class Progress(L.Callback):
    """One line per edit step and per evaluated task: what runs now, how far the run is, what it took."""

    def __init__(self, n_requests: int = 0):
        self.n = n_requests
        self._task: int | None = None
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        first = module.n_edits + 1
        span = f"{first}" if len(batch) == 1 else f"{first}-{module.n_edits + len(batch)}"
        log.info("edit %s of %d (%s): %s", span, self.n, module.hp.name, batch[0].prompt[:60])

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


def results(run_id: str, uri: str) -> str:
    """The table a run ends with: per task and line, the headline score at the first and the last evaluation, the
    paired difference with its 95 % interval and the verdict; then per line the edit metrics and perplexity."""
    from editharm.report import collect, document

    got = collect.collect(uri, [run_id])
    rows = []
    for panel in got.panels:
        if panel.task is None:
            continue
        for line in got.lines:
            pts = [p for p in line.points if panel.key in p.values]
            if pts:
                delta, said = document.paired(pts[-1], panel.key)
                rows.append([panel.task, line.label, document.number(pts[0].values[panel.key]),
                             document.number(pts[-1].values[panel.key]) if len(pts) > 1 else "", delta or "",
                             "" if said == "n/a" else said])
    one = len(got.lines) == 1  # a single run: no line column
    out = [f"results of {got.title}"]
    if rows:
        first, last = _span(got)
        head = ["task", "line", f"score at {first}", f"at {last}", "Δ paired [95 % CI]", "verdict"]
        out += _text(*_drop_line(head, rows, one))
    head, edits = document.edit_table(got)
    if edits and len(head) > 3:
        head = ["line", "edits" if got.x == "step" else got.x, *[h.removeprefix("edit ") for h in head[2:]]]
        edits = [[r[0], f"{float(r[1]):g}", *r[2:]] for r in edits]
        out += [""] + _text(*_drop_line(head, edits, one))
    return "\n".join(out)


def _drop_line(head: list[str], rows: list[list[str]], drop: bool) -> tuple[list[str], list[list[str]]]:
    at = head.index("line")
    return (head[:at] + head[at + 1:], [r[:at] + r[at + 1:] for r in rows]) if drop else (head, rows)


def _span(got) -> tuple[str, str]:
    xs = sorted({p.x for ln in got.lines for p in ln.points})
    unit = "edits" if got.x == "step" else got.x
    return f"{xs[0]:g} {unit}", f"{xs[-1]:g}"


def _text(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
