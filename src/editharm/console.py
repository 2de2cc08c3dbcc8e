"""What a command shows on the console: `setup` routes the package's `logging` to stderr and quiets Lightning's and
transformers' banners (before they are imported: their progress-bar switches are read then); `results` is the table
printed at the end of every edit, evaluate and experiment run (`editharm.progress` says what a run is doing).

    console.setup(quiet=False)                  # the CLI; a library user configures `logging` as they like
    print(console.results(collect(uri, [run_id])))

Library code logs through `logging.getLogger(__name__)` (names under `editharm`), never `print`.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("editharm")
QUIETED = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric", "mlflow")
"""Their banners, tips and notices are INFO; their warnings still show, as transformers' and accelerate's do (a
checkpoint loaded with newly initialised weights, a failed artifact upload)."""


def setup(quiet: bool = False) -> None:
    """`editharm: <message>` lines on stderr for the package's log (INFO; ERROR with `quiet`); Lightning's
    hardware banners and tips, transformers' and MLflow's notices and the model-loading bars silenced."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("editharm: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.ERROR if quiet else logging.INFO)
    log.propagate = False
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets its own level when imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # the key-statistics and loading bars too
    import lightning  # noqa: F401  (it sets its loggers' level when imported: ours must come after)

    for name in QUIETED:
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.WARNING)


class _Stderr(logging.StreamHandler):
    """A handler on whatever `sys.stderr` is when a line is written (test captures, notebooks replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def results(got) -> str:
    """The table a run ends with, from its lines read back (`report.collect.collect`): per task and line, the
    headline score at the first and the last evaluation, the paired difference with its 95 % interval and the
    verdict; then per line the edit metrics and perplexity."""
    from editharm.report import document

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
        lasts = {ln.label: ln.points[-1].x for ln in got.lines if ln.points}  # exact, not the table's 3 digits
        edits = [[r[0], f"{lasts[r[0]]:g}", *r[2:]] for r in edits]
        shown = [i for i in range(len(head)) if any(r[i] != "–" for r in edits)]  # no empty column (no probe)
        head, edits = [head[i] for i in shown], [[r[i] for i in shown] for r in edits]
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
