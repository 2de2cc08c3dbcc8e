"""Paired comparison of finished single-mode CounterFact runs on the same cases: each run against a reference.

    python benchmarks/paired_runs.py --reference RUN_ID RUN_ID [RUN_ID ...]

For two settings of one method (bfloat16 against float32, a code change before against after), run each as
`editharm edit ... edits=counterfact edits.mode=single edits.n=100 edits.eval_every=1 tasks.names=[]
probe.perplexity=false`, then give the run ids here. Prints one row per run (named by its MLflow run name):
final efficacy / generalization / specificity success, token accuracies, median seconds per edit and mean
value-step loss evaluations; then each run's per-case success minus the reference run's with a paired
bootstrap 95 % interval (`layer_sweep.paired_difference`). Runs must have edited the same cases in the same
order (checked on the case prompts). Tracking store: $MLFLOW_TRACKING_URI (or `--tracking-uri`).
"""
from __future__ import annotations

import argparse
import json
import statistics as st
import tempfile

from layer_sweep import COLUMNS, SUCCESS, case_successes, paired_difference
from mlflow import MlflowClient

from editharm import tracking


def summary(client: MlflowClient, run_id: str) -> dict[str, float | str]:
    run = client.get_run(run_id)
    if run.info.status != "FINISHED":
        raise SystemExit(f"run {run_id} ({run.info.run_name}) is {run.info.status}, not FINISHED")
    out: dict[str, float | str] = {"run": run.info.run_name, "n": run.data.params["edits.n"]}
    out.update({name: run.data.metrics[key] for name, key in COLUMNS.items()})
    history = lambda key: [m.value for m in client.get_metric_history(run_id, key)]  # noqa: E731
    out["median s per edit"] = st.median(history("time/edit_s"))
    evals = history("value/loss_evals")
    out["value loss evals"] = st.mean(evals) if evals else float("nan")
    return out


def prompts(client: MlflowClient, run_id: str) -> list[str]:
    """The edit prompts of a single-mode run's final evaluation, in case order."""
    n = client.get_run(run_id).data.params["edits.n"]
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, f"predictions/edit/edits_{n}.jsonl", tmp)
        rows = sorted((json.loads(line) for line in open(path)), key=lambda r: r["index"])
    return [r["prompt"] for r in rows]


def compare(client: MlflowClient, reference: str, runs: list[str]) -> str:
    """The two tables: one row per run, then each run's paired per-case differences from `reference`."""
    ids = [reference, *[r for r in runs if r != reference]]
    rows = [summary(client, r) for r in ids]
    cases = prompts(client, reference)
    for r in ids[1:]:
        if prompts(client, r) != cases:
            raise SystemExit(f"run {r} did not edit the reference run's cases in the same order: not paired")
    header = ["run", "n", *COLUMNS, "median s per edit", "value loss evals"]
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(r[h]) for h in header) + " |" for r in rows]
    base = case_successes(client, reference)
    name = rows[0]["run"]
    lines += ["", f"| run | {' | '.join(f'{s} − {name} [95 % CI]' for s in SUCCESS)} |", "|---|---|---|---|"]
    for r, rid in zip(rows[1:], ids[1:]):
        m, lo, hi = paired_difference(case_successes(client, rid), base)
        lines.append(f"| {r['run']} | " + " | ".join(f"{m[i]:+.2f} [{lo[i]:+.2f}, {hi[i]:+.2f}]"
                                                      for i in range(len(SUCCESS))) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="run id the others are compared with")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("runs", nargs="+")
    args = p.parse_args()
    print(compare(MlflowClient(args.tracking_uri or tracking.tracking_uri()), args.reference, args.runs))


if __name__ == "__main__":
    main()
