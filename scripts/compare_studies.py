#!/usr/bin/env python
"""Whether two study folders hold the same study: the same run ids, the same numbers in every
run's result, in the stage tables (sweep, search, target), in the selected optimum, the search's
recommendation and the report's summary metrics. Timings (wall time, throughput), how a run
was executed (its torch threads) and the words of the verdicts are not compared; everything
else must match exactly (CPU runs are deterministic on one machine).

    python scripts/compare_studies.py results/smoke /tmp/before/results/smoke

Exit 0 when they match, 1 with the differences listed otherwise. Used to show that a
refactoring left a study's numbers unchanged.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

TIMING = {"wall_s", "tokens_per_s"}
# A result's config_hash binds it to its config.json, which also records how the run was
# executed (`runtime.threads`: a run trained alone after a resume gets all the cores, one of a
# batch gets its share). Execution settings are not part of a run; the run id, compared
# above, binds everything that is.
BOOKKEEPING = {"config_hash"}
# Keys renamed since older study folders were written: old -> new.
RENAMED = {"multipliers": "factors"}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        a = {RENAMED.get(k, k): v for k, v in a.items()}
        b = {RENAMED.get(k, k): v for k, v in b.items()}
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def compare(new: Path, old: Path) -> list[str]:
    import polars as pl

    diffs: list[str] = []
    new_runs = {p.name for p in (new / "runs").iterdir()}
    old_runs = {p.name for p in (old / "runs").iterdir()}
    if new_runs != old_runs:
        diffs.append(f"run ids differ: {len(new_runs - old_runs)} new only, "
                     f"{len(old_runs - new_runs)} old only")
    for rid in sorted(new_runs & old_runs):
        a, b = load(new / "runs" / rid / "result.json"), load(old / "runs" / rid / "result.json")
        for k in sorted(set(a) | set(b)):
            if k not in TIMING | BOOKKEEPING and not same(a.get(k), b.get(k)):
                diffs.append(f"runs/{rid}/result.json: {k} differs")
    for table in ("sweep/runs.parquet", "search/runs.parquet", "target/runs.parquet",
                  "search/trials.parquet"):
        if not (old / table).exists():
            continue
        a, b = pl.read_parquet(new / table), pl.read_parquet(old / table)
        cols = [c for c in b.columns if c not in TIMING]
        if set(cols) - set(a.columns):
            diffs.append(f"{table}: columns missing: {sorted(set(cols) - set(a.columns))}")
            continue
        if not a.select(cols).equals(b.select(cols)):
            diffs.append(f"{table}: rows differ")
    for name in ("select/global.json",):
        if not same(load(new / name), load(old / name)):
            diffs.append(f"{name} differs")
    a, b = load(new / "search/best.json"), load(old / "search/best.json")
    for k in ("x", "best_loss", "best_trial", "dims", "reeval", "global_reeval", "factors"):
        if not same(a.get(k, a.get("multipliers")), b.get(k, b.get("multipliers"))):
            diffs.append(f"search/best.json: {k} differs")
    a, b = load(new / "report/summary.json"), load(old / "report/summary.json")
    if not same(a["metrics"], b["metrics"]):
        keys = set(a["metrics"]) ^ set(b["metrics"])
        changed = [k for k in set(a["metrics"]) & set(b["metrics"])
                   if a["metrics"][k] != b["metrics"][k]]
        diffs.append(f"report/summary.json metrics differ: keys only on one side {sorted(keys)},"
                     f" values changed {sorted(changed)}")
    return diffs


def main() -> int:
    new, old = Path(sys.argv[1]), Path(sys.argv[2])
    diffs = compare(new, old)
    for d in diffs:
        print(d)
    n = len(list((new / "runs").iterdir()))
    print(f"{new} vs {old}: {'the same' if not diffs else f'{len(diffs)} difference(s)'} "
          f"({n} runs compared)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
