"""Stage 6, target: train every (target, arm, seed) the transfer stage wrote; the report's
target section: each arm's curves and its speedup over the reference arm, with an interval."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Optional

from ..analysis import eval_curve, mean_curve, speedup_ci, steps_to_reach
from ..doc import fmt
from ..launch import launch
from ..study import Study
from .base import (
    Context,
    Outputs,
    ReportContext,
    Stage,
    StagePlan,
    read_runs_table,
    result_row,
    table_outputs,
    write_runs_table,
)
from .transfer import read_index, read_runs

if TYPE_CHECKING:
    from ..spec import Spec


def run(ctx: Context) -> list[dict]:
    study = ctx.study
    plans = [pr for entry in read_index(study)
             for pr in read_runs(study, entry["model"], entry["arm"])]
    results = launch(plans, study, ctx.spec.launcher, "target", ctx.on_result, ctx.echo)
    rows = [result_row(pr, results[pr.run_id]) for pr in plans]
    write_runs_table(study, "target", rows)
    return rows


def plan(spec: Spec) -> StagePlan:
    n_runs = tokens = 0
    for model in spec.target_models():
        scale = spec.models[model]
        k = len(spec.arms) * len(spec.targets.seeds)
        n_runs += k
        tokens += k * scale.steps * scale.tokens_per_step
    return StagePlan("target", n_runs, tokens, ", ".join(a.name for a in spec.arms))


def outputs(study: Study) -> Outputs:
    import polars as pl

    out = table_outputs(study, "target")
    if study.target_table.exists():
        df = read_runs_table(study, "target").filter(pl.col("status") == "completed")
        for r in df.group_by("model", "arm").agg(pl.col("final_val_loss").mean()).to_dicts():
            out.metrics.append((f"{r['model']}.{r['arm']}.final_val_loss",
                                float(r["final_val_loss"]), 0))
    return out


# ---------------------------------------------------------------------------------------------
# Report.


def _arm_curves(study: Study, run_ids: list[str]) -> tuple[dict[int, list], list[float], int]:
    """(curve by seed of the completed runs, their final losses, runs planned)."""
    curves: dict[int, list] = {}
    finals: list[float] = []
    for rid in run_ids:
        folder = study.run(rid)
        r = folder.read_result()
        if r is None or not r.ok:
            continue
        cfg = folder.read_config()
        seed = cfg["config"]["seed"] if cfg is not None else len(curves)
        curves[seed] = eval_curve(r.to_dict())
        finals.append(r.final_val_loss)
    return curves, finals, len(run_ids)


def _band(curves: dict[int, list]) -> Optional[tuple[list, list, list]]:
    cs = list(curves.values())
    if len(cs) < 2 or any([s for s, _ in c] != [s for s, _ in cs[0]] for c in cs):
        return None
    steps = [s for s, _ in cs[0]]
    return (steps, [min(c[i][1] for c in cs) for i in range(len(steps))],
            [max(c[i][1] for c in cs) for i in range(len(steps))])


def report(rc: ReportContext) -> None:
    from ..plots import plot_target_curves

    spec, study, doc, found = rc.spec, rc.study, rc.doc, rc.found
    if not study.transfer_done.exists():
        return
    entries = read_index(study)
    baseline = next((a.name for a in spec.arms if a.factors == "none"), spec.arms[0].name)
    doc.h(1, "Targets")
    doc.p(f"Each arm's HPs transferred to each target. Speedup = steps the `{baseline}` arm "
          "needs to reach its final loss / steps the arm needs to reach it, on seed-mean "
          "curves with linear interpolation between evaluations; ▼ marks where each arm gets "
          "there. The interval is over seeds: a Student-t interval on the log speedups of seed "
          "pairs (the same seed in both arms), exponentiated.")
    for model in spec.target_models():
        arms = {e["arm"]: _arm_curves(study, e["runs"]) for e in entries
                if e["model"] == model}
        means = {arm: mean_curve(list(c.values())) for arm, (c, _, _) in arms.items()
                 if c and len({len(x) for x in c.values()}) == 1}
        ref = means.get(baseline)
        stats = {arm: speedup_ci(arms[baseline][0], c) for arm, (c, _, _) in arms.items()
                 if baseline in arms and arm != baseline and c}
        marks = {arm: steps_to_reach(curve, ref[-1][1]) for arm, curve in means.items()
                 if ref and arm != baseline}
        fig = study.report_figure(f"target_{model}")
        if means:
            plot_target_curves(means, fig, f"{model}: validation loss per arm",
                               {a: s["speedup"] for a, s in stats.items()}, baseline,
                               bands={a: b for a, (c, _, _) in arms.items()
                                      if (b := _band(c)) is not None},
                               marks=marks)
        doc.h(2, model)
        doc.fig(fig, f"{model}: validation loss against steps per arm (seed means; band: "
                "lowest to highest seed)")
        rows = []
        for arm, (_, finals, n) in arms.items():
            mean = statistics.fmean(finals) if finals else math.nan
            std = statistics.stdev(finals) if len(finals) > 1 else 0.0
            s = stats.get(arm)
            if arm == baseline:
                up, ci = "1 (reference)", "-"
            elif s is None:
                up, ci = "-", "-"
            else:
                up = fmt(s["speedup"], 3) + "x"
                ci = (f"{fmt(s['geo_mean'], 3)}x [{fmt(s['ci_low'], 3)}, "
                      f"{fmt(s['ci_high'], 3)}]" if s["ci_low"] is not None
                      else f"{fmt(s['geo_mean'], 3)}x (one seed)")
            rows.append([arm, f"{fmt(mean)} ± {fmt(std, 2)}", f"{len(finals)}/{n}", up, ci])
        doc.table(["arm", "final val loss (mean ± std over seeds)", "runs completed",
                   "speedup (seed-mean curves)", "per-seed geometric mean [95% CI]"], rows)
        for arm, s in stats.items():
            found.metric(f"speedup.{model}.{arm}", s["speedup"])
            if s["ci_low"] is not None:
                found.metric(f"speedup.{model}.{arm}.ci_low", s["ci_low"])
                found.metric(f"speedup.{model}.{arm}.ci_high", s["ci_high"])
            found.claim("speedup", _speedup_verdict(model, arm, baseline, s, ref, marks.get(arm),
                                                    len(spec.targets.seeds)),
                        model=model, arm=arm, reference=baseline, speedup=s["speedup"],
                        ci_low=s["ci_low"], ci_high=s["ci_high"], seeds=s["n"])
        _tuned_directly(rc, model)


def _speedup_verdict(model: str, arm: str, ref_arm: str, s: dict, ref: Optional[list],
                     mark: Optional[float], n_seeds: int) -> str:
    z = s["speedup"]
    if z is None or not math.isfinite(z):
        return (f"**No speedup measurable for {arm} at {model}**: neither {arm} nor "
                f"{ref_arm} reaches the other's final loss.")
    steps = ""
    if ref and mark:
        steps = (f": {ref_arm} needs {ref[-1][0]:.0f} steps for its final loss "
                 f"{ref[-1][1]:.4f}, {arm} gets there at step {mark:.0f}")
    if s["ci_low"] is not None:
        ci = (f" Over {s['n']} seed pairs the speedup is {s['geo_mean']:.2f}x, 95% CI "
              f"[{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
              + ("; the interval excludes 1." if s["ci_low"] > 1 or s["ci_high"] < 1
                 else "; the interval includes 1, so the difference is within seed noise."))
    else:
        ci = (f" With {n_seeds} seed there is no interval; set targets.seeds to two or more "
              "to get one.")
    if abs(z - 1) < 0.005:
        head = f"**{arm} matches {ref_arm} at {model}**, speedup {z:.2f}x"
    elif z > 1:
        head = f"**{arm} reaches {ref_arm}'s final loss {z:.2f}x as fast at {model}**"
    else:
        head = (f"**{arm} is slower than {ref_arm} at {model}**: speedup {z:.2f}x (it needs "
                f"{1 / z:.2f}x the steps)")
    return head + steps + "." + ci


def _tuned_directly(rc: ReportContext, model: str) -> None:
    """Where the sweep also covers the target's scale, the target was tuned directly: how far
    the transferred HP is from its own optimum. Not for the base model, where nothing is
    transferred (every axis's sweep passes through it)."""
    spec = rc.spec
    m = spec.models[model]
    if model == spec.base:
        return
    for r in rc.notes.get("suboptimality", []):
        same = all(r.get(k) == getattr(m, k) for k in ("width", "depth", "batch", "tokens",
                                                       "seq_len"))
        if same and r.get("suboptimality") is not None:
            rc.found.metric(f"target_suboptimality.{model}.{r['kind']}.{r['parameterisation']}",
                            r["suboptimality"])
            rc.found.claim(
                "target_suboptimality",
                f"**{model} was also tuned directly** (the {r['axis']} sweep covers its "
                f"scale): under {r['parameterisation']} the transferred {r['kind']} "
                f"{fmt(r['transferred'])} gives {fmt(r['loss_transferred'])} against "
                f"{fmt(r['opt_loss'])} at its own optimum {fmt(r['opt'])}, "
                f"{r['suboptimality']:.3f} nats worse.",
                model=model, kind=r["kind"], parameterisation=r["parameterisation"],
                suboptimality=r["suboptimality"])


STAGE = Stage(name="target", summary="every (target, arm, seed)", after=("transfer",), run=run,
              done=lambda study: study.target_table, plan=plan, outputs=outputs, report=report,
              trains=True)
