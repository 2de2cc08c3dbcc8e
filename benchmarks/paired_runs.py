"""Paired comparison of single-mode CounterFact runs on the same cases: each run against a reference run.

    python benchmarks/paired_runs.py --reference RUN_ID RUN_ID [RUN_ID ...]

For two settings of one method (bfloat16 against float32, a code change before against after), run each as
`editharm edit ... edits=counterfact edits.mode=single edits.n=100 edits.eval_every=1 tasks.names=[]
probe.perplexity=false`, then give the run ids here. A single-mode run logs the running mean of every edit
metric after each edit, so each case's own success is recovered from the history
(x_s = s · mean_s − (s − 1) · mean_{s−1}); runs that were stopped early are compared on the cases all of them
reached (the `n` column says how many). Runs must draw the same edits (equal `edits.*` params).

Prints one row per run (its MLflow run name and status): efficacy / generalization / specificity success,
token accuracies and the share of locality answer tokens unchanged over the compared cases, median seconds per
edit, mean value-step loss evaluations; then each run's per-case values minus the reference run's, with a
paired bootstrap 95 % interval
(`layer_sweep.paired_difference`). Tracking store: $MLFLOW_TRACKING_URI or `--tracking-uri`.
"""
from __future__ import annotations

import argparse
import statistics as st

import torch
from layer_sweep import COLUMNS, paired_difference
from mlflow import MlflowClient

from editharm import tracking

KEYS = {**COLUMNS, "locality unchanged": "edit/counterfact/locality_unchanged"}
SAME = ("edits.dataset", "edits.split", "edits.n", "edits.shuffle", "edits.seed", "edits.mode")


def per_case(client: MlflowClient, run_id: str, key: str) -> list[float]:
    """Each edited case's own value of a single-mode running-mean metric, in edit order."""
    means = {m.step: m.value for m in client.get_metric_history(run_id, key) if m.step > 0}
    steps = range(1, 1 + next(s for s in range(len(means) + 1) if s + 1 not in means))  # the unbroken prefix
    return [s * means[s] - (s - 1) * means.get(s - 1, 0.0) for s in steps]


def cases(client: MlflowClient, run_id: str) -> torch.Tensor:
    """(cases × columns) of `KEYS`, per case, for the cases this run has finished."""
    cols = [per_case(client, run_id, key) for key in KEYS.values()]
    n = min(len(c) for c in cols)
    return torch.tensor([c[:n] for c in cols], dtype=torch.float64).T.round(decimals=6)


def compare(client: MlflowClient, reference: str, runs: list[str]) -> str:
    """The two tables: one row per run, then each run's paired per-case differences from `reference`."""
    ids = [reference, *[r for r in runs if r != reference]]
    info = {r: client.get_run(r) for r in ids}
    ref_params = {k: info[reference].data.params.get(k) for k in SAME}
    for r in ids[1:]:
        if (got := {k: info[r].data.params.get(k) for k in SAME}) != ref_params:
            raise SystemExit(f"run {r} drew other edits than the reference ({got} vs {ref_params}): not paired")
    values = {r: cases(client, r) for r in ids}
    n = min(len(v) for v in values.values())
    if n == 0:
        raise SystemExit("no case was finished by every run")
    header = ["run", "status", "n", *KEYS, "median s per edit", "value loss evals"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in ids:
        edit_s = [m.value for m in client.get_metric_history(r, "time/edit_s")][:n]
        evals = [m.value for m in client.get_metric_history(r, "value/loss_evals")][:n]
        means = values[r][:n].mean(0).tolist()
        lines.append(f"| {info[r].info.run_name} | {info[r].info.status} | {n} | "
                     + " | ".join(f"{v:.2f}" for v in means)
                     + f" | {st.median(edit_s):.1f} | {st.mean(evals) if evals else float('nan'):.1f} |")
    name = info[reference].info.run_name
    lines += ["", f"| run | {' | '.join(f'{k} − {name} [95 % CI]' for k in KEYS)} |", "|" + "---|" * (len(KEYS) + 1)]
    for r in ids[1:]:
        m, lo, hi = paired_difference(values[r][:n], values[reference][:n])
        lines.append(f"| {info[r].info.run_name} | " + " | ".join(f"{m[i]:+.2f} [{lo[i]:+.2f}, {hi[i]:+.2f}]"
                                                               for i in range(len(KEYS))) + " |")
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
