#!/usr/bin/env bash
# Create .venv with CPU torch and cp (with the pipeline extras). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q torch==2.13.0   # CPU build; a GPU user installs their own torch first
python -m pip install -q -e ".[pipeline]"
echo "ready: . .venv/bin/activate"
