#!/usr/bin/env bash
# Reproduce docs/results.md from a fresh clone: specs/cpu-study.yaml end to end through the
# pipeline (1.5-2 hours on 2 CPU cores), the search algorithms compared
# (docs/search-comparison.md),
# and the report published into docs/ with its figures. Finished runs are kept in
# results/cpu-study/, so an interrupted call picks up where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
snakemake --profile profiles/local --config spec=specs/cpu-study.yaml
python benchmarks/search_comparison.py --search-seeds 0 1 2 --trials 32 --quiet \
  --out docs/search-comparison.md
cpt report results/cpu-study --publish docs/results.md
