"""The Python API's MLflow runs, only when asked for (`track=`): `evaluate(..., track=True)` logs one evaluate
run and `Editor(..., track=True)` one edit run, with the config, tags and metric names of the CLI's runs. Only
this module of the API imports `editharm.tracking` (and so MLflow), and only when a run is asked for.

    results = editharm.evaluate(model, tok, tasks=["rte"], track=True)          # results.run_id
    with editharm.Editor(model, tok, method="rome", track="my-rome") as editor:  # FINISHED on exit (FAILED on error)
        editor.edit(requests)                                                    # step metrics at step = edits
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from editharm import models


def run_name(track: bool | str, default: str) -> str:
    return track if isinstance(track, str) else default


@contextmanager
def opened(cfg, name: str, kind: str, **tags) -> Iterator:
    """An MLflow run (`tracking.start`: FINISHED, FAILED on error, KILLED on a signal) with the config and tags a
    CLI run of this kind carries."""
    from editharm import tracking

    with tracking.start(cfg, name) as logger:
        tracking.log_config(logger, cfg)
        tracking.set_tags(logger, {"kind": kind, "model": cfg.model.name, "model_identity": models.identity(cfg.model),
                                   "protocol": cfg.tasks.protocol, "git_commit": tracking.git_commit(),
                                   "api": "python", **tags})
        yield logger


def log_results(logger, results, step: int) -> None:
    """An evaluation's metrics at `step`, its constants as params (once), its rows as `predictions/`."""
    from editharm import tracking

    if step == 0:
        params = {f"{results.prefixes[n]}/{k}": v for n, c in results.constants.items() for k, v in c.items()}
        if params:
            logger.log_hyperparams(params)
    tracking.log_evaluation(logger, step, results.metrics())
    logger.log_metrics(results.headline(), step=step)
    for name, rows in results.rows.items():
        tracking.log_jsonl(logger, f"predictions/{name}/edits_{step}.jsonl", rows)


def log_step(logger, step, n_edits: int) -> None:
    from editharm import tracking

    logger.log_metrics(step.metrics, step=n_edits)
    tracking.set_tags(logger, step.tags)


def log_deltas(logger, model, deltas) -> None:
    from editharm import tracking

    tracking.log_deltas(logger, model, deltas)
