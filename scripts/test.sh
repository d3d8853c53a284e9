#!/usr/bin/env bash
# Install cp and its test dependencies into .venv, then lint and run the test suite.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q -e ".[dev]"
ruff check cp tests benchmarks
mypy
python -m pytest "$@"
