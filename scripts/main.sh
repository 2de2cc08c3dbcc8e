#!/usr/bin/env bash
# Install (if needed) and run the main job on the embedded default model: one MLflow run in ./mlflow.db.
# Extra arguments are config overrides, e.g. `bash scripts/main.sh edits.n=4`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec .venv/bin/python -m editharm edit "$@"
