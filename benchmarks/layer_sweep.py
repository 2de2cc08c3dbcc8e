"""Layer sweep for a locate-then-edit method: one single-mode CounterFact run per layer, and the table.

    python benchmarks/layer_sweep.py --layers 2 4 6 8 12 --n 100     # runs nested under one parent run
    python benchmarks/layer_sweep.py --runs ID [ID ...]               # the table of runs that already exist

Each layer is an ordinary `editharm edit` run (method=<method>, method.layer=L, edits=counterfact,
edits.mode=single, no ability tasks), created as a child of a parent run so the MLflow UI groups the sweep and
compares the children. The table (efficacy / generalization / specificity success, token accuracies,
median seconds per edit) is printed and, for a new sweep, logged to the parent as `sweep.md` and metrics
with step = layer. With `--reference L`, a second table gives each layer's per-case success minus layer L's
on the same cases, with a paired bootstrap 95 % interval (from the runs' `predictions/edit/` rows).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics as st
import subprocess
import sys
import tempfile

import torch
from mlflow import MlflowClient

from editharm import config, tracking
from editharm.errors import EditharmError
from editharm.tasks.metrics import bootstrap, interval95

COLUMNS = {  # header: metric key of the final (running-mean) single-mode evaluation
    "efficacy": "edit/counterfact/efficacy_success",
    "generalization": "edit/counterfact/generalization_success",
    "specificity": "edit/counterfact/locality_success",
    "efficacy token acc": "edit/counterfact/efficacy_token_acc",
    "generalization token acc": "edit/counterfact/generalization_token_acc",
}


def row(client: MlflowClient, run_id: str) -> dict[str, float | str]:
    """The sweep's figures for one finished run: final edit metrics and the median edit time."""
    run = client.get_run(run_id)
    if run.info.status != "FINISHED":
        return {"layer": run.data.params.get("method.layer", "?"), "status": run.info.status}
    out: dict[str, float | str] = {"layer": run.data.params["method.layer"], "n": run.data.params["edits.n"]}
    out.update({name: run.data.metrics[key] for name, key in COLUMNS.items()})
    edit_s = [m.value for m in client.get_metric_history(run_id, "time/edit_s")]
    out["median s per edit"] = st.median(edit_s) if edit_s else float("nan")
    return out


def before(client: MlflowClient, run_id: str) -> dict[str, float | str]:
    """The unedited model's figures on the same cases: a run's step-0 evaluation."""
    out: dict[str, float | str] = {"layer": "before editing", "n": client.get_run(run_id).data.params["edits.n"]}
    for name, key in COLUMNS.items():
        out[name] = next(m.value for m in client.get_metric_history(run_id, key) if m.step == 0)
    return out


SUCCESS = ("efficacy", "generalization", "specificity")


def case_successes(client: MlflowClient, run_id: str) -> torch.Tensor:
    """(cases × 3) per-case efficacy / generalization / specificity success of a finished single-mode run,
    in case order, from its final `predictions/edit/edits_<n>.jsonl`."""
    n = client.get_run(run_id).data.params["edits.n"]
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, f"predictions/edit/edits_{n}.jsonl", tmp)
        rows = sorted((json.loads(line) for line in open(path)), key=lambda r: r["index"])
    keys = [COLUMNS[name].rsplit("/", 1)[1] for name in SUCCESS]
    return torch.tensor([[r[k] for k in keys] for r in rows], dtype=torch.float64)


def paired_difference(a: torch.Tensor, b: torch.Tensor, n_bootstrap: int = 1000, seed: int = 0) -> torch.Tensor:
    """Mean of a − b over cases (columns kept) with a paired bootstrap 95 % interval: (3, columns) = mean, lo, hi."""
    d = a - b
    return torch.cat([d.mean(0, keepdim=True), interval95(bootstrap(d, n_bootstrap, seed).mean(1))])


def difference_table(client: MlflowClient, rows: list[dict], run_ids: list[str], reference: int) -> str:
    done = {int(r["layer"]): rid for r, rid in zip(rows, run_ids) if "status" not in r}
    if reference not in done:
        raise SystemExit(f"--reference {reference}: no finished run for that layer (finished: {sorted(done)})")
    base = case_successes(client, done[reference])
    lines = [f"| layer | {' | '.join(f'{s} − layer {reference} [95 % CI]' for s in SUCCESS)} |", "|---|---|---|---|"]
    for layer in sorted(done):
        if layer != reference:
            m, lo, hi = paired_difference(case_successes(client, done[layer]), base)
            lines.append(f"| {layer} | " + " | ".join(f"{m[i]:+.2f} [{lo[i]:+.2f}, {hi[i]:+.2f}]"
                                                       for i in range(len(SUCCESS))) + " |")
    return "\n".join(lines)


def table(rows: list[dict[str, float | str]]) -> str:
    header = ["layer", "n", *COLUMNS, "median s per edit"]
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: int(r["layer"]) if str(r["layer"]).isdigit() else -1):
        lines.append("| " + " | ".join(fmt(r.get(h, r.get("status", ""))) for h in header) + " |")
    return "\n".join(lines)


def overrides(args: argparse.Namespace, layer: int) -> list[str]:
    """The `editharm edit` arguments of one layer's run."""
    return [f"method={args.method}", f"method.layer={layer}", "edits=counterfact", "edits.mode=single",
            f"edits.n={args.n}", "edits.eval_every=1", "tasks.names=[]", "probe.perplexity=false",
            "tracking.log_checkpoint=false", f"tracking.experiment={args.experiment}", *args.overrides]


def sweep(client: MlflowClient, args: argparse.Namespace) -> tuple[str, list[str]]:
    """Create the parent run, run one child per layer (each joins its run through $MLFLOW_RUN_ID)."""
    exp = client.get_experiment_by_name(args.experiment) or client.get_experiment(
        client.create_experiment(args.experiment))
    parent = client.create_run(exp.experiment_id, run_name=f"{args.method}-layer-sweep-n{args.n}",
                               tags={"kind": "sweep", "method": args.method})
    pid = parent.info.run_id
    client.log_param(pid, "layers", " ".join(map(str, args.layers)))
    client.log_param(pid, "n", args.n)
    children = []
    for layer in args.layers:
        child = client.create_run(exp.experiment_id, run_name=f"{args.method}-layer{layer}",
                                  tags={"mlflow.parentRunId": pid})
        children.append(child.info.run_id)
        cmd = [sys.executable, "-m", "editharm", "edit", *overrides(args, layer)]
        print(f"layer {layer}: run {child.info.run_id}", flush=True)
        subprocess.run(cmd, env={**os.environ, "MLFLOW_RUN_ID": child.info.run_id}, check=False)
    return pid, children


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="rome", help="a method with a single `layer` setting")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6, 8, 12])
    p.add_argument("--n", type=int, default=100, help="CounterFact edit-split cases per layer")
    p.add_argument("--experiment", default="editharm-sweeps")
    p.add_argument("--reference", type=int, help="also tabulate paired differences against this layer")
    p.add_argument("--runs", nargs="+", help="summarize these existing runs instead of running a sweep")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every run, e.g. model=tiny-llama")
    args = p.parse_args()

    try:  # every layer's config is checked before any run is created
        for layer in [] if args.runs else args.layers:
            config.load(overrides(args, layer))
    except EditharmError as err:
        raise SystemExit(f"layer_sweep: error: {err}") from None
    client = MlflowClient(tracking.tracking_uri())
    parent, run_ids = (None, args.runs) if args.runs else sweep(client, args)
    rows = [row(client, r) for r in run_ids]
    finished = [rid for r, rid in zip(rows, run_ids) if "status" not in r]
    text = table(rows + [before(client, finished[0])] if finished else rows)
    if args.reference is not None:
        text += "\n\n" + difference_table(client, rows, run_ids, args.reference)
    print(text)
    if parent is not None:
        client.log_text(parent, text + "\n", "sweep.md")
        for r in rows:
            if "status" not in r:
                for name in COLUMNS:
                    client.log_metric(parent, f"sweep/{name.replace(' ', '_')}", r[name], step=int(r["layer"]))
        client.set_terminated(parent, "FINISHED" if all("status" not in r for r in rows) else "FAILED")


if __name__ == "__main__":
    main()
