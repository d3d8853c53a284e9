"""The stages of a study. Each reads what earlier stages left in the study folder, runs its
batch of runs through `cp.launch`, and writes its outputs atomically. Snakemake calls them
through ``cpt stage NAME SPEC``; each is safe to re-run (finished runs are never trained twice).

    check -> sweep -> select -> search -> transfer -> target -> report
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Optional

from .analysis import loss_or_inf, select_optimum
from .config import RunConfig, RunResult, load_result
from .launch import Launcher, ResultHook, launch
from .plan import PlannedRun, arm_run, grid_points, search_run, sweep_runs, sweep_tables
from .scaling import Multipliers, expand_groups
from .spec import Spec
from .study import Study, read_json, write_json, write_parquet, write_text

STAGES = ("check", "sweep", "select", "search", "transfer", "target", "report")
Echo = Callable[[str], None]


class StageFailed(Exception):
    """A stage that cannot succeed (e.g. the coordinate check failed): stops the study."""


def record_spec(spec: Spec, study: Study) -> None:
    """Keep the resolved spec (defaults filled in) in the study folder."""
    from omegaconf import OmegaConf

    write_text(study.spec_file, OmegaConf.to_yaml(OmegaConf.structured(spec)))


def _result_row(pr: PlannedRun, result: RunResult) -> dict:
    sc = pr.config.scale
    return {**pr.tags, "run_id": pr.run_id, "width": sc.width, "depth": sc.depth,
            "batch": sc.batch, "tokens": sc.tokens, "seq_len": sc.seq_len,
            "status": result.status, "diverged": result.diverged,
            "final_val_loss": result.final_val_loss, "loss": loss_or_inf(result),
            "steps": result.steps, "tokens_per_s": result.tokens_per_s,
            "wall_s": result.wall_s, "n_params": result.n_params}


# ---------------------------------------------------------------------------------------------


def run_check(spec: Spec, study: Study, echo: Echo = print) -> dict:
    """The coordinate check as a guard: raises StageFailed when a judged slope is off."""
    from .coord import CoordConfig, coord_check, write_outputs

    if not spec.check.enabled:
        verdict = {"status": "skipped"}
        write_json(study.check_verdict, verdict)
        echo("[check] disabled in the spec")
        return verdict
    fields = {f.name for f in dataclasses.fields(CoordConfig)}
    ccfg = CoordConfig(**{k: v for k, v in dataclasses.asdict(spec.check).items()
                          if k in fields})
    echo(f"[check] coordinate check of {spec.parameterisation.name} at "
         f"width x{ccfg.width_mults}, depth x{ccfg.depth_mults}")
    result = coord_check(spec.run_config(spec.base), ccfg,
                         progress=lambda i, n, axis, m: echo(f"[check] {i}/{n} models "
                                                             f"({axis} x{m:g})"))
    paths = write_outputs(result, study.check_dir)
    if not result.passed:
        bad = ", ".join(sorted({f"{f['group']} {f['quantity']} on {f['axis']} (slope "
                                f"{f['slope']:+.2f})" for f in result.failures()}))
        raise StageFailed(f"coordinate check failed for {result.parameterisation}: {bad}. "
                          f"See {paths['plot']}. Fix the parameterisation (or set "
                          "check.enabled: false to run anyway).")
    verdict = {"status": "pass", "parameterisation": result.parameterisation,
               "plot": str(paths["plot"]), "fits": result.fits}
    write_json(study.check_verdict, verdict)
    echo(f"[check] pass: every judged coordinate is flat ({paths['plot']})")
    return verdict


def run_sweep(spec: Spec, study: Study, on_result: Optional[ResultHook] = None,
              echo: Echo = print) -> list[dict]:
    runs = sweep_runs(spec)
    if not runs:
        echo("[sweep] no grid in the spec: nothing to sweep")
    results = launch(runs, study, spec.launcher, "sweep", on_result, echo)
    rows = [_result_row(pr, results[pr.run_id]) for pr in runs]
    write_parquet(study.sweep_table, rows)
    return rows


def run_select(spec: Spec, study: Study, echo: Echo = print) -> dict:
    """The global optimum per swept parameterisation, from the base-model grid."""
    import polars as pl

    kinds = list(spec.sweeps.grid)
    selected: dict[str, dict] = {}
    if not kinds:
        selected[spec.parameterisation.name] = {"values": {}, "argmin": {}, "loss": math.nan,
                                                "method": "spec", "fitted": {}}
    else:
        df = pl.read_parquet(study.sweep_table).filter(pl.col("axis") == "base")
        for table in sweep_tables(spec):
            sub = df.filter(pl.col("parameterisation") == table)
            points = []
            for point in grid_points(spec.sweeps.grid):
                rows = sub.filter(pl.all_horizontal(pl.col(k) == v for k, v in point.items()))
                losses = rows["loss"].to_list()
                mean = sum(losses) / len(losses) if losses else math.inf
                points.append({**point, "loss": mean})
            try:
                selected[table] = select_optimum(points, kinds, spec.select.method)
            except ValueError as e:
                raise StageFailed(f"select: {table}: {e}") from None
            vals = ", ".join(f"{k}={v:.4g}" for k, v in selected[table]["values"].items())
            echo(f"[select] {table}: {vals} (grid best loss {selected[table]['loss']:.4f}, "
                 f"{spec.select.method})")
    write_json(study.select_file, selected)
    return selected


def _search_space(spec: Spec):
    """The per-module space of the spec, without (kind, group) pairs that cannot act: the
    init scale of a norm gain (initialised to 1), and kinds whose base value is 0 there (a
    multiple of 0 is 0, e.g. weight decay on gains)."""
    from .config import model_groups
    from .scaling import GAIN_GROUPS
    from .search import SearchSpace

    s = spec.search
    groups = model_groups(spec.arch)
    exclude = {("init_std", g) for g in GAIN_GROUPS}
    exclude |= {(k, g) for k in s.kinds for g in groups if spec.hps.value(g, k) == 0.0}
    wanted = s.groups or groups
    per_kind = {k: [g for g in expand_groups(v) if g in groups]
                for k, v in s.groups_per_kind.items()}
    return SearchSpace.build(s.kinds, [g for g in expand_groups(wanted) if g in groups],
                             spec.models[spec.base].depth, s.per_layer, s.log2_radius,
                             groups_per_kind=per_kind, exclude=exclude)


def run_search(spec: Spec, study: Study, on_result: Optional[ResultHook] = None,
               echo: Echo = print) -> dict:
    """Per-module search at the base model, from the global optimum; resumable."""
    import statistics

    from .search import make_searcher
    from .search.driver import drive

    if not spec.search.enabled:
        best = {"status": "disabled", "multipliers": None}
        write_json(study.search_best, best)
        echo("[search] disabled in the spec")
        return best
    s = spec.search
    selected = read_json(study.select_file)
    global_values = selected.get(spec.parameterisation.name, {}).get("values", {})
    space = _search_space(spec)
    trrs = dataclasses.replace(s.trrs, round_size=s.trrs.round_size or s.batch)
    state_file = study.search_dir / "state.json"
    searcher = make_searcher(s.algorithm, space, s.seed, explore_seed=spec.seed,
                             workdir=study.search_dir, trrs=trrs, resume=state_file.exists())
    if state_file.exists():
        searcher.load_state_dict(read_json(state_file))
        echo(f"[search] resuming: {len(searcher.trials)} trials asked, "
             f"{sum(not t.pending for t in searcher.trials)} told")
    counts = ", ".join(f"{k}: {c['type']} types + {c['layer']} layers"
                       for k, c in space.counts().items())
    echo(f"[search] {s.algorithm} over {space.dim} log2 multipliers in +-{s.log2_radius} "
         f"({counts}); budget {s.trials} trials, {s.batch} in flight")

    def planned(trial) -> PlannedRun:
        return search_run(spec, global_values, space.multipliers(trial.x), trial.seed,
                          {"trial": trial.id, "purpose": trial.purpose})

    def save() -> None:
        write_json(state_file, searcher.state_dict())

    def evaluate(trials) -> list[float]:
        runs = [planned(t) for t in trials]
        results = runner.run(runs)
        for t, pr in zip(trials, runs, strict=True):
            t.run_id = pr.run_id
        return [loss_or_inf(results[pr.run_id]) for pr in runs]

    def told(_trials) -> None:
        save()
        rec = searcher.recommend()
        echo(f"[search] {len(searcher.trials)}/{s.trials} trials; recommended point's loss "
             f"{rec[1] if rec else math.inf:.4f}" + (
                 f", trust radius {searcher.radius:.3g}" if hasattr(searcher, "radius") else ""))

    runner = Launcher(study, spec.launcher, "search", max_parallel=s.batch,
                      on_result=on_result, echo=echo)
    with runner:
        # The asked points are on disk before their runs start, the told ones after.
        drive(searcher, evaluate, s.trials, s.batch, before=lambda _: save(), after=told)
        rec = searcher.recommend()
        if rec is None or not math.isfinite(rec[1]):
            raise StageFailed("search: every trial diverged or failed")
        best_x, best_loss = rec
        # Re-evaluate the recommended point and the global optimum on the same fresh seeds,
        # so the per-module gain at the proxy comes with its seed spread.
        reeval = {}
        reeval_rows = []
        for label, x in (("best", best_x), ("global", space.center())):
            runs = [search_run(spec, global_values, space.multipliers(x), seed,
                               {"trial": f"{label}-reeval", "purpose": "reeval"})
                    for seed in s.reeval_seeds]
            results = runner.run(runs)
            reeval_rows += [_result_row(r, results[r.run_id]) for r in runs]
            losses = [loss_or_inf(results[r.run_id]) for r in runs]
            finite = [v for v in losses if math.isfinite(v)]
            reeval[label] = {"seeds": list(s.reeval_seeds), "losses": losses,
                             "mean": statistics.fmean(finite) if finite else math.inf,
                             "std": statistics.stdev(finite) if len(finite) > 1 else 0.0}
    best_trial = next((t.id for t in searcher.trials if t.x == list(best_x)), None)
    out = {"status": "done", "algorithm": s.algorithm, "trials": len(searcher.trials),
           "best_trial": best_trial, "best_loss": best_loss, "x": best_x,
           "dims": [d.name for d in space.dims],
           "multipliers": dataclasses.asdict(space.multipliers(best_x)),
           "global_values": global_values, "reeval": reeval["best"],
           "global_reeval": reeval["global"]}
    write_parquet(study.search_dir / "trials.parquet", [
        {"trial": t.id, "purpose": t.purpose, "seed": t.seed, "loss": t.loss,
         "run_id": t.run_id, **{d.name: v for d, v in zip(space.dims, t.x, strict=True)}}
        for t in searcher.trials])
    # Every search run with its tags, like the sweep's and target's tables (tracking and the
    # study's runs table read it). Trials told before a restart have their results on disk.
    trial_rows = []
    for t in searcher.trials:
        result = load_result(study.run_dir(t.run_id)) if t.run_id else None
        if result is not None:
            trial_rows.append(_result_row(planned(t), result))
    rows = [{**r, "trial": str(r["trial"])} for r in trial_rows + reeval_rows]
    write_parquet(study.search_table, rows)
    write_json(study.search_best, out)
    from .plots import plot_search_progress

    plot_search_progress([t.loss for t in searcher.trials], study.search_dir /
                         "best_so_far.png", title=f"{s.algorithm} search at {spec.base}")
    echo(f"[search] recommended point (trial {best_trial}): loss {best_loss:.4f}; re-evaluated "
         f"{reeval['best']['mean']:.4f} +- {reeval['best']['std']:.4f} vs global optimum "
         f"{reeval['global']['mean']:.4f} +- {reeval['global']['std']:.4f} "
         f"(seeds {list(s.reeval_seeds)})")
    return out


def target_plans(spec: Spec, study: Study) -> list[PlannedRun]:
    """Every (target, arm, seed) run, with HPs from the select and search outputs."""
    selected = read_json(study.select_file)
    search_multipliers = None
    if study.search_best.exists():
        best = read_json(study.search_best)
        if best.get("multipliers"):
            search_multipliers = Multipliers(**best["multipliers"])
    return [arm_run(spec, arm, model, seed, selected, search_multipliers)
            for model in spec.target_models() for arm in spec.arms
            for seed in spec.targets.seeds]


def run_transfer(spec: Spec, study: Study, echo: Echo = print) -> list[dict]:
    """Write each (target, arm)'s resolved settings (cpt describe --json) and run configs."""
    plans = target_plans(spec, study)
    index = []
    for model in spec.target_models():
        for arm in spec.arms:
            mine = [p for p in plans if p.tags["model"] == model and p.tags["arm"] == arm.name]
            folder = study.transfer_dir(model, arm.name)
            write_json(folder / "settings.json", mine[0].config.describe())
            write_json(folder / "runs.json", [{"run_id": p.run_id, "seed": p.tags["seed"],
                                               "tags": p.tags, "config": p.config.to_dict()}
                                              for p in mine])
            index.append({"model": model, "arm": arm.name, "folder": str(folder),
                          "runs": [p.run_id for p in mine]})
            echo(f"[transfer] {model}/{arm.name}: settings in {folder / 'settings.json'}")
    write_json(study.transfer_done, index)
    return index


def run_target(spec: Spec, study: Study, on_result: Optional[ResultHook] = None,
               echo: Echo = print) -> list[dict]:
    plans = []
    for entry in read_json(study.transfer_done):
        for r in read_json(study.root / "transfer" / entry["model"] / entry["arm"] /
                           "runs.json"):
            plans.append(PlannedRun(RunConfig.from_dict(r["config"]), r["tags"]))
    results = launch(plans, study, spec.launcher, "target", on_result, echo)
    rows = [_result_row(pr, results[pr.run_id]) for pr in plans]
    write_parquet(study.target_table, rows)
    return rows


def run_report(spec: Spec, study: Study, echo: Echo = print) -> str:
    from .report import build_report

    path = build_report(spec, study)
    echo(f"[report] {path}")
    return str(path)


def _dispatch(name: str, spec: Spec, study: Study, on_result: Optional[ResultHook],
              echo: Echo):
    runners = {
        "check": lambda: run_check(spec, study, echo),
        "sweep": lambda: run_sweep(spec, study, on_result, echo),
        "select": lambda: run_select(spec, study, echo),
        "search": lambda: run_search(spec, study, on_result, echo),
        "transfer": lambda: run_transfer(spec, study, echo),
        "target": lambda: run_target(spec, study, on_result, echo),
        "report": lambda: run_report(spec, study, echo),
    }
    return runners[name]()


def run_stage(name: str, spec: Spec, study: Study, on_result: Optional[ResultHook] = None,
              echo: Echo = print):
    """Run stage ``name``: its provenance goes to ``<stage>/stage.json`` and, as the spec's
    ``tracking`` section says, the stage and its training runs to MLflow (which never fails
    the stage)."""
    import time

    from .provenance import STAGE_RECORD, stage_record
    from .track import stage_tracker

    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    record_spec(spec, study)
    record_file = study.stage_dir(name) / STAGE_RECORD
    started = time.time()
    record = stage_record(name, "running", started)
    write_json(record_file, record)
    with stage_tracker(spec, study, name, record) as tracker:

        def hook(pr: PlannedRun, result: RunResult) -> None:
            tracker.on_result(pr, result)
            if on_result is not None:
                on_result(pr, result)

        try:
            out = _dispatch(name, spec, study, hook, echo)
        except BaseException as e:
            record = stage_record(name, "failed", started, time.time(),
                                  f"{type(e).__name__}: {e}"[:2000])
            write_json(record_file, record)
            tracker.finish(record)
            raise
        record = stage_record(name, "done", started, time.time())
        write_json(record_file, record)
        tracker.finish(record)
    return out
