"""Read runs back from the tracking store into lines of points: what a report draws and tabulates.

    got = collect(client, ["<parent run id>"])      # an experiment's parent: its newest FINISHED child per cell
    got.lines[0].label, got.lines[0].points          # e.g. "rome", [Point(x=0, ...), Point(x=5, ...), ...]
    got.panels                                       # what to draw: tasks, edit metrics, perplexity

A line's points are its run's evaluation steps (x = edits applied), or, when the experiment's report names an
axis (Batch-Single: x = batch size), one point per cell at its final step plus the unedited model at x = 0.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException

from editharm import grid
from editharm.tasks.lm_eval_task import is_lm_eval, metric_name

PERPLEXITY = "probe/perplexity"
EDIT_KINDS = ("efficacy", "generalization", "locality", "portability")


@dataclass(frozen=True)
class Panel:
    title: str
    key: str
    task: str | None = None
    """The ability task it scores (its paired difference and likelihood live under the same prefix)."""


@dataclass
class Point:
    x: float
    run_id: str
    step: int
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Line:
    label: str
    points: list[Point]


@dataclass
class Collected:
    title: str
    x: str
    """`step` or the axis name the lines are drawn over."""
    paper: str | None
    lines: list[Line]
    panels: list[Panel]
    runs: list = field(default_factory=list)
    """The MLflow runs read, in line order."""
    missing: list[str] = field(default_factory=list)
    """An experiment's cells that have no FINISHED run (failed, or not run yet)."""


HEADLINES = ("accuracy", "exact_match", "rouge_avg", "f1")


def primary_key(task: str, protocol: str, logged: set[str]) -> str:
    """`ability/<task>/<headline score>` of a task, from its config's metric; for a task whose config is gone
    (renamed since the run), the first headline score the run logged."""
    from editharm.errors import EditharmError
    from editharm.registry import METRICS, lookup
    from editharm.tasks.spec import load_spec

    try:
        return f"ability/{task}/{lookup(METRICS, load_spec(task, protocol).metric, 'metric').primary}"
    except EditharmError:  # an lm-eval task, or a task whose config is gone: the first score it logged
        found = [f"ability/{task}/{h}" for h in HEADLINES if f"ability/{task}/{h}" in logged]
        found += sorted(k for k in logged if k.startswith(f"ability/{task}/") and k.count("/") == task.count("/") + 2
                        and not k.endswith(("_delta", "_ci_low", "_ci_high")) and "/gold_" not in k)
        return found[0] if found else f"ability/{task}/accuracy"


def panels_of(runs: list) -> list[Panel]:
    """One panel per ability task, then efficacy, generalization, locality and perplexity, as the runs hold them."""
    tasks, protocol = [], "gu2024"
    for run in runs:
        protocol = run.data.tags.get("protocol", protocol)
        for t in json.loads(run.data.params.get("tasks.names", "[]")):
            t = metric_name(t) if is_lm_eval(t) else t  # where an lm-eval task logs
            if t not in tasks:
                tasks.append(t)
    logged = {k for run in runs for k in run.data.metrics}
    out = [Panel(t, primary_key(t, protocol, logged), t) for t in tasks]
    for kind in EDIT_KINDS:
        pick = _edit_key(logged, kind)
        if pick:
            out.append(Panel(f"edit {kind}", pick))
    if PERPLEXITY in logged:
        out.append(Panel("perplexity", PERPLEXITY))
    return out


def _edit_key(logged: set[str], kind: str) -> str | None:
    """The edit metric of `kind`: CounterFact's `success` where logged, else teacher-forced token accuracy
    (locality: the share of unchanged answer tokens)."""
    names = ("locality_unchanged",) if kind == "locality" else (f"{kind}_success", f"{kind}_token_acc")
    for name in names:
        found = sorted(k for k in logged if k.startswith("edit/") and k.endswith(f"/{name}"))
        if found:
            return found[0]
    return None


def wanted_keys(panels: list[Panel], logged: set[str]) -> list[str]:
    """Every key a report reads: each panel's, with its interval, paired difference and the task's likelihood."""
    out = []
    for p in panels:
        bases = [p.key] + ([f"ability/{p.task}/gold_logprob", f"ability/{p.task}/gold_mass"] if p.task else [])
        for base in bases:
            out += [k for k in (base, f"{base}_ci_low", f"{base}_ci_high", f"{base}_delta", f"{base}_delta_ci_low",
                                f"{base}_delta_ci_high") if k in logged]
    return out


def collect(uri: str, run_ids: list[str]) -> Collected:
    """The lines and panels of `run_ids` in the store at `uri`: one experiment parent run, or edit runs (a line
    each, x = edits)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    first = client.get_run(run_ids[0])
    missing: list[str] = []
    if first.data.tags.get("kind") == "experiment":
        if len(run_ids) > 1:
            from editharm.errors import EditharmError

            raise EditharmError(f"run {run_ids[0]} is an experiment's parent: report on it alone, or on edit runs")
        runs, missing = _children(client, uri, first)
        x, x_key = first.data.tags.get("report.x", "step"), first.data.tags.get("report.x_key") or None
        paper = first.data.tags.get("report.paper") or None
        title = f"experiment {first.data.tags.get('experiment', first.info.run_name)}"
    else:
        runs, x, x_key, paper = [client.get_run(r) for r in run_ids], "step", None, None
        title = ", ".join(r.info.run_name for r in runs)
    if not runs:
        from editharm.errors import EditharmError

        raise EditharmError(f"run {run_ids[0]} has no FINISHED runs to report on")
    panels = panels_of(runs)
    histories = {r.info.run_id: _histories(client, uri, r, panels) for r in runs}
    lines = _by_step(runs, histories) if x == "step" else _by_axis(runs, histories, x, x_key)
    return Collected(title, x, paper, lines, panels, runs, missing)


def _children(client, uri: str, parent) -> tuple[list, list[str]]:
    """The parent's cells in grid order: the run each one's config hash maps to (`experiment/runs.json`: this
    parent's children, or an earlier parent's run of the same config), else its newest FINISHED child; and the
    names of the cells with none."""
    from editharm import tracking

    def read(path: str):
        try:
            return json.loads(_read_text(uri, parent.info.run_id, path))
        except (OSError, ValueError, MlflowException):
            return None

    by_hash = {**tracking.child_runs(parent.info.run_id, uri), **(read("experiment/runs.json") or {})}
    cells = read("experiment/cells.json") or [{"name": h, "config_hash": h} for h in by_hash]
    runs = [client.get_run(by_hash[c["config_hash"]]) for c in cells if c["config_hash"] in by_hash]
    return runs, [c["name"] for c in cells if c["config_hash"] not in by_hash]


def _read_text(uri: str, run_id: str, path: str) -> str:
    import tempfile
    from pathlib import Path

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=uri)
        return Path(got).read_text(encoding="utf-8")


def _histories(client, uri: str, run, panels: list[Panel]) -> dict[int, dict[str, float]]:
    """step -> {key: value} for the keys a report reads: the run's metric series, overlaid step by step with its
    evaluation tables (`evaluations/`, every figure of each evaluation; runs logged before them have none)."""
    by_step = tables(uri, run.info.run_id)
    logged = set(run.data.metrics).union(*by_step.values())
    out: dict[int, dict[str, float]] = {}
    for key in wanted_keys(panels, logged):
        if key in run.data.metrics:  # a series (a run resumed across the change: its early steps only there)
            for m in client.get_metric_history(run.info.run_id, key):
                out.setdefault(m.step, {})[key] = m.value
        for step, table in by_step.items():
            if key in table:
                out.setdefault(step, {})[key] = table[key]
    return out


def tables(uri: str, run_id: str) -> dict[int, dict[str, float]]:
    """step -> every figure of the evaluation at that step (`tracking.log_evaluation`); {} for a run without."""
    import tempfile
    from pathlib import Path

    import mlflow

    if not [f for f in mlflow.MlflowClient(uri).list_artifacts(run_id, "evaluations")]:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        got = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluations", dst_path=tmp,
                                                       tracking_uri=uri))
        return {int(f.stem.removeprefix("edits_")): json.loads(f.read_text(encoding="utf-8"))
                for f in got.glob("edits_*.json")}


def _label(run) -> str:
    """A cell's axis values without the experiment's label, else the run's name."""
    values = [v for k, v in sorted(run.data.tags.items()) if k.startswith("axis.")]
    cell = run.data.tags.get("cell")
    if cell and values:
        return grid.SEP.join(v for v in cell.split(grid.SEP) if v in values)
    return run.info.run_name


def _by_step(runs: list, histories: dict) -> list[Line]:
    labels = [_label(r) for r in runs]
    labels = [f"{lab} ({r.info.run_id[:8]})" if labels.count(lab) > 1 else lab for lab, r in zip(labels, runs)]
    return [Line(lab, [Point(float(s), r.info.run_id, s, v) for s, v in sorted(histories[r.info.run_id].items())])
            for lab, r in zip(labels, runs)]


def _by_axis(runs: list, histories: dict, axis: str, x_key: str) -> list[Line]:
    """Cells grouped by their other axes' values; a point per cell at its last step, x from `x_key`; the unedited
    model (step 0 of the group's first cell) at x = 0."""
    groups: dict[str, list] = {}
    for r in runs:
        others = [v for k, v in sorted(r.data.tags.items()) if k.startswith("axis.") and k != f"axis.{axis}"]
        groups.setdefault(grid.SEP.join(others) or axis, []).append(r)
    lines = []
    for label, members in groups.items():
        points = []
        for r in members:
            h = histories[r.info.run_id]
            if not points and 0 in h:
                points.append(Point(0.0, r.info.run_id, 0, h[0]))
            last = max(h) if h else 0
            if last > 0:
                points.append(Point(float(r.data.params[x_key]), r.info.run_id, last, h[last]))
        lines.append(Line(label, sorted(points, key=lambda p: p.x)))
    return lines
