"""Metric curves of finished runs, read back from a tracking store, as Markdown tables (for the README).

    python benchmarks/curves.py --uri sqlite:///mlflow.db --experiment rect-figure \\
        --metrics edit/zsre/efficacy_token_acc ability/gsm8k/accuracy probe/perplexity

One row per run (by run name, oldest first), one cell per logged step: the value, and its 95 % interval when
the run logged `<metric>_ci_low` / `_ci_high` (in its `evaluations/` tables, or as series in runs from before them).
`--at STEP` prints only that step (one column per metric). `editharm report` draws a grid's figures and tables.
"""
from __future__ import annotations

import argparse

from functools import cache

from mlflow import MlflowClient

from editharm.report import collect


@cache
def _tables(uri: str, run_id: str) -> dict[int, dict[str, float]]:
    return collect.tables(uri, run_id)


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """step -> value: the metric series, overlaid by the run's evaluation tables (intervals live only there)."""
    out = {m.step: m.value for m in client.get_metric_history(run_id, key)}
    for step, table in _tables(client.tracking_uri, run_id).items():
        if key in table:
            out[step] = table[key]
    return out


def cell(client: MlflowClient, run_id: str, key: str, step: int, digits: int) -> str:
    value = history(client, run_id, key).get(step)
    if value is None:
        return "–"
    low, high = history(client, run_id, f"{key}_ci_low").get(step), history(client, run_id, f"{key}_ci_high").get(step)
    text = f"{value:.{digits}f}"
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high is not None else text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--at", type=int, default=None, help="one step only: a column per metric")
    p.add_argument("--digits", type=int, default=3)
    args = p.parse_args()
    client = MlflowClient(args.uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.uri}")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", order_by=["start_time ASC"])
    if args.at is not None:
        print("| run | " + " | ".join(args.metrics) + " |\n|---|" + "---|" * len(args.metrics))
        for run in runs:
            cells = [cell(client, run.info.run_id, k, args.at, args.digits) for k in args.metrics]
            print(f"| {run.info.run_name} | " + " | ".join(cells) + " |")
        return
    for key in args.metrics:
        steps = sorted({s for run in runs for s in history(client, run.info.run_id, key)})
        print(f"\n{key}\n\n| run | " + " | ".join(map(str, steps)) + " |\n|---|" + "---|" * len(steps))
        for run in runs:
            print(f"| {run.info.run_name} | " + " | ".join(cell(client, run.info.run_id, key, s, args.digits)
                                                        for s in steps) + " |")


if __name__ == "__main__":
    main()
