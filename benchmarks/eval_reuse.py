"""What reusing the unedited model's evaluation (`tasks.reuse`, `editharm.replay`) saves a grid cell: two edit runs
with the same model, tasks and settings, one after the other, each one FT edit; the first scores its step-0
evaluation, the second replays it.

    python benchmarks/eval_reuse.py                          # SmolLM2, the eight gu2024 tasks at limit 100
    python benchmarks/eval_reuse.py --limit 30 --model tiny-llama

Prints each run's step-0 evaluation seconds (`time/eval_s`) and their ratio, and checks that the two step-0 tables
(every score, interval and constant) are equal. A fresh cache folder is used, so the first run cannot replay.
Figures are logged to MLflow (experiment `editharm-benchmarks`) unless --no-log.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def step0(client, run_id: str) -> dict:
    table = json.loads(Path(client.download_artifacts(run_id, "evaluations/edits_0.json", tempfile.mkdtemp()))
                       .read_text())
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--no-log", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDITHARM_CACHE_DIR"] = str(Path(tmp) / "cache")  # models convert again; no recorded evaluation
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        from mlflow import MlflowClient

        from editharm.runs import edit

        argv = [f"model={args.model}", "method=ft", "edits.n=1", "edits.eval_every=1", f"tasks.limit={args.limit}",
                "tracking.log_checkpoint=false", "tracking.log_model=false", "tracking.log_report=false"]
        runs = [edit(argv), edit(argv)]
        client = MlflowClient()
        tables = [step0(client, r) for r in runs]
        seconds = [t.pop("time/eval_s") for t in tables]
    same = tables[0] == tables[1]
    figures = {"scored_s": seconds[0], "replayed_s": seconds[1], "ratio": seconds[0] / seconds[1], "equal": same,
               "n_values": len(tables[0])}
    print(f"step-0 evaluation, {args.model}, limit {args.limit}: scored {seconds[0]:.1f} s, replayed "
          f"{seconds[1]:.2f} s (x{figures['ratio']:.0f}); the two tables' {len(tables[0])} values equal: {same}")
    if not args.no_log:
        import mlflow

        mlflow.set_tracking_uri(os.environ.get("EDITHARM_BENCH_URI", "sqlite:///mlflow.db"))
        mlflow.set_experiment("editharm-benchmarks")
        with mlflow.start_run(run_name=f"eval-reuse-{args.model}"):
            mlflow.log_params(vars(args))
            mlflow.log_metrics({f"bench/{k}": float(v) for k, v in figures.items()})


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
