"""Run an experiment grid: one parent MLflow run, one nested child run per cell, then its report.

    parent_id = run("gu2024-sequential", ["tasks.limit=50"], edit=runs.edit)

Every cell's config and data, and the launcher options (`experiment.*` on the command line: `launchers`), are
checked before the first cell starts. The cells run in this process or on a launcher (local worker processes,
Ray tasks); a cell that fails is marked FAILED and the others go on. Running the same command again reopens the
same parent (found by the grid's hash)
and skips the cells it already FINISHED with the same config hash, so an interrupted grid resumes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Callable

from editharm import config as C
from editharm import grid, launchers, tracking
from editharm.errors import ConfigError, EditharmError

log = logging.getLogger(__name__)


def check(spec: grid.ExperimentSpec, cells: list[grid.Cell], setup: Callable) -> list[tuple]:
    """`(tree, config hash)` per cell; the first bad cell fails with its name, before any compute: a bad override
    or data, a report axis whose `x_key` the cell lacks, two cells that resolve to the same config. The check
    says only what is wrong (warnings, errors): what a cell reads (its data files' formats) it says when it runs."""
    out, seen = [], {}
    for cell in cells:
        try:
            with _quiet(logging.getLogger("editharm")):
                tree = setup(cell.argv)
        except EditharmError as err:
            raise ConfigError(f"experiment {spec.name}, cell {cell.name}: {err}") from None
        r = spec.report
        if r.x != "step" and not isinstance(C.flatten(tree).get(r.x_key), (int, float)):
            raise ConfigError(f"experiment {spec.name}, cell {cell.name}: report.x_key={r.x_key} is not a number in "
                              f"its config (got {C.flatten(tree).get(r.x_key)!r}); the report draws x from it")
        h = grid.config_hash(tree)
        if h in seen:
            raise ConfigError(f"experiment {spec.name}: cells {seen[h]} and {cell.name} resolve to the same config "
                              "(an override on the command line may have overridden an axis)")
        seen[h] = cell.name
        out.append((tree, h))
    return out


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    """`logger` at WARNING or above inside the block (its INFO lines dropped), its level restored after."""
    level = logger.level
    logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def run(name: str, extra: list[str], edit: Callable, setup: Callable, report: Callable | None = None) -> str:
    """Run the grid `name` with `extra` overrides on every cell; returns the parent run id.

    `extra` may hold the launcher's own `experiment.*` options (split off, not cell overrides).
    `setup(argv) -> tree` validates a cell (config, edit data, tasks); `edit(argv, parent=, run_name=, tags=)`
    runs it (a module-level function: other launchers pickle it); `report(parent)` draws the report into the
    parent afterwards (a failure must not raise)."""
    spec = grid.load(name)
    own, extra = launchers.split(extra)
    options = launchers.parse(own)
    cells = grid.cells(spec, extra)
    checked = check(spec, cells, setup)
    hashes = [h for _, h in checked]
    cfg = C.to_object(checked[0][0])
    uri = tracking.tracking_uri(cfg)
    ghash = grid.grid_hash(spec.name, hashes)
    joined = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run` the parent is the run we were handed
    earlier = None if joined else next(iter(tracking.find_runs({"kind": "experiment", "grid_hash": ghash}, uri,
                                                                status=None)), None)
    failed: list[tuple[str, str]] = []
    with tracking.start(cfg, f"experiment-{spec.name}", resume=earlier) as parent:
        if earlier:
            tracking.close_stale_children(parent.run_id, uri, "the grid was stopped before this cell ended")
        r = spec.report
        tracking.set_tags(parent, {"kind": "experiment", "experiment": spec.name, "grid_hash": ghash,
                                   "git_commit": tracking.git_commit(), "report.x": r.x, "report.x_key": r.x_key or "",
                                   "report.paper": r.paper or "", "launcher": options.launcher})
        if earlier is None:  # keys of our own: under `mlflow run` the project's `name`/`overrides` params exist already
            parent.log_hyperparams({"experiment.name": spec.name, "experiment.cells": len(cells),
                                    "experiment.overrides": " ".join(extra), **options.params()})
            tracking.log_text(parent, "experiment/cells.json", json.dumps(
                [{"name": c.name, "values": c.values, "argv": c.argv, "config_hash": h} for c, h in zip(cells, hashes)],
                indent=1, ensure_ascii=False))
        done = tracking.finished_cells(spec.name, uri)  # any earlier parent's: the same config is the same run
        ran = {h: done[h] for h in hashes if h in done}
        log.info(f"experiment {spec.name}: {len(cells)} cells, parent run {parent.run_id}"
                 + (" (resumed)" if earlier else "") + (f"; {len(ran)} finished already" if ran else ""))
        counts = {"finished": 0, "skipped": len(ran), "failed": 0}
        heads = [f"[{i}/{len(cells)}] {cell.name}" for i, cell in enumerate(cells, 1)]
        for head, h in zip(heads, hashes):
            if h in done:
                log.info(f"{head}: finished already (run {done[h]}), skipped")
        todo = [(i, cell, h) for i, (cell, h) in enumerate(zip(cells, hashes)) if h not in done]
        jobs = [launchers.Job(tuple(cell.argv), cell.name, tuple({
            "cell": cell.name, "config_hash": h, "experiment": spec.name,
            **{f"axis.{k}": v for k, v in cell.values.items()}}.items())) for _, cell, h in todo]

        def progress(k: int, event) -> None:
            head = heads[todo[k][0]]
            if isinstance(event, str):
                log.info(f"{head}: {event}")
            elif event.error is None:
                log.info(f"{head}: finished in {event.seconds:.0f} s (run {event.run_id})")
            else:
                log.error(f"{head}: FAILED after {event.seconds:.0f} s: {event.error}")

        for (_, cell, h), result in zip(todo, launchers.launch(options, jobs, edit, parent, progress)):
            if result.error is None:
                counts["finished"] += 1
                ran[h] = result.run_id
            else:
                counts["failed"] += 1
                failed.append((cell.name, result.error))
        parent.log_metrics({f"experiment/cells_{k}": v for k, v in counts.items()})
        tracking.log_text(parent, "experiment/runs.json", json.dumps(ran, indent=1))  # what the report reads
        if report is not None and ran:
            report(parent)
        if failed:
            raise EditharmError(f"{len(failed)} of {len(cells)} cells failed ({'; '.join(f'{n}: {e}' for n, e in failed)}); "
                                "each is marked FAILED in MLflow; run the same command again to rerun them "
                                "(finished cells are skipped)")
        return parent.run_id

