#!/usr/bin/env bash
# Install (if needed) and run the test suite. Extra arguments go to pytest (e.g. `-m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
