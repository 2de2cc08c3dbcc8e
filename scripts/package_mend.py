"""Ship a trained MEND hypernetwork inside the package, where `method.hypernetwork=auto` finds it after the
tracking store and before training:

    python scripts/package_mend.py runs:/<run_id>/mend --name smollm2-135m [--tracking-uri sqlite:///mlflow.db]

Copies the run's `mend/` artifact (mend.json, mend.safetensors, train_prompts.txt) to
`src/editharm/hypernetworks/<name>/`, with the train-mend run's matching tags (model identity, inner
parameters, architecture, data choice) and its training figures recorded in the spec's `meta`.
"""
import argparse
import json
import shutil
from pathlib import Path

import mlflow

from editharm import models, tracking
from editharm.methods.mend_net import SPEC_FILE

MATCHED = ("model_identity", "mend.params", "mend.arch", "mend.data")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("uri", help="runs:/<run_id>/mend of a finished train-mend run")
    p.add_argument("--name", required=True, help="folder name under src/editharm/hypernetworks/")
    p.add_argument("--tracking-uri", default=None)
    args = p.parse_args()
    uri = args.tracking_uri or tracking.tracking_uri()
    run = mlflow.MlflowClient(uri).get_run(args.uri.split("/")[1])
    if run.data.tags.get("kind") != "train-mend" or run.info.status != "FINISHED":
        raise SystemExit(f"{args.uri}: not a finished train-mend run")
    src = tracking.fetch_artifact(args.uri, models.cache_root() / "mend", uri)
    dst = Path(__file__).resolve().parents[1] / "src" / "editharm" / "hypernetworks" / args.name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    spec = json.loads((dst / SPEC_FILE).read_text(encoding="utf-8"))
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith(("val/", "train/", "time/"))}
    spec["meta"] = {**spec["meta"], "tags": {k: run.data.tags[k] for k in MATCHED}, "run_id": run.info.run_id,
                    "git_commit": run.data.tags.get("git_commit"), "final_metrics": metrics}
    (dst / SPEC_FILE).write_text(json.dumps(spec, indent=1), encoding="utf-8")
    size = sum(f.stat().st_size for f in dst.iterdir())
    print(f"packaged {args.uri} as {dst} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
