"""The study report: ``results/<study>/report/report.md`` with its figures, built from the
study folder alone."""

from __future__ import annotations

import datetime
import math
import statistics
from pathlib import Path

from .analysis import eval_curve, fit_log2_optimum, mean_curve, speedup
from .config import load_result
from .spec import Spec
from .study import Study, read_json, write_text


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "diverged"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{digits}f}"


def _seed_mean(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Rows grouped by ``keys`` with ``loss`` averaged over seeds (inf if any seed is inf)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        losses = [r["loss"] for r in rs]
        out.append({**dict(zip(keys, key, strict=True)),
                    "loss": math.inf if any(math.isinf(v) for v in losses)
                    else statistics.fmean(losses)})
    return out


def transfer_section(spec: Spec, study: Study, lines: list[str]) -> None:
    import polars as pl

    from .plots import plot_transfer_curves

    if not study.sweep_table.exists() or not spec.sweeps.axes:
        return
    df = pl.read_parquet(study.sweep_table).filter(pl.col("block") == "main")
    kinds = [k for k in spec.sweeps.axes_kinds if k in spec.sweeps.grid]
    lines += ["## Transfer sweeps", "",
              "Final validation loss against the base value of each swept HP, at several "
              "points of each axis, with HPs transferred from the base model by each "
              "parameterisation. Where transfer holds, the curves' minima line up.", ""]
    base_value = {ax: getattr(spec.models[spec.base], ax) for ax in spec.sweeps.axes}
    for axis in spec.sweeps.axes:
        sub = df.filter((pl.col("axis") == axis) | (pl.col("axis") == "base"))
        for kind in kinds:
            rows = []
            for r in sub.to_dicts():
                if r["axis"] == "base":
                    # The base model is the axis's point at the base value, when the other
                    # grid kinds sit at the spec's values.
                    if any(r[k] != getattr(spec.hps, k) for k in spec.sweeps.grid
                           if k != kind and k in r):
                        continue
                    r = {**r, "axis_value": base_value[axis]}
                rows.append(r)
            means = _seed_mean(rows, ("parameterisation", "axis_value", kind))
            optima, table_rows = {}, []
            for table in dict.fromkeys(m["parameterisation"] for m in means):
                for v in sorted({m["axis_value"] for m in means
                                 if m["parameterisation"] == table}):
                    pts = [m for m in means if m["parameterisation"] == table
                           and m["axis_value"] == v]
                    fit = fit_log2_optimum([p[kind] for p in pts], [p["loss"] for p in pts])
                    best = min(pts, key=lambda p: p["loss"])
                    optima[table, v] = fit[0] if fit else None
                    table_rows.append((table, v, fit[0] if fit else None, best[kind],
                                       best["loss"]))
            fig = study.report_dir / f"transfer_{axis}_{kind}.png"
            plot_transfer_curves(means, axis, fig, kind=kind, optima=optima)
            lines += [f"### {kind} across {axis}", "", f"![{kind} across {axis}]({fig.name})",
                      "", f"| parameterisation | {axis} | fitted optimal {kind} | grid argmin "
                      "| best loss |", "|---|---|---|---|---|"]
            for table, v, opt, arg, loss in table_rows:
                lines.append(f"| {table} | {v} | {_fmt(opt)} | {_fmt(arg)} | {_fmt(loss)} |")
            lines.append("")


def select_section(study: Study, lines: list[str]) -> None:
    if not study.select_file.exists():
        return
    selected = read_json(study.select_file)
    lines += ["## Global optimum at the base model", "",
              "| parameterisation | values | grid best loss | method |", "|---|---|---|---|"]
    for table, s in selected.items():
        vals = ", ".join(f"{k} = {_fmt(v)}" for k, v in s["values"].items()) or "spec's hps"
        lines.append(f"| {table} | {vals} | {_fmt(s['loss'])} | {s['method']} |")
    lines.append("")


def search_section(study: Study, lines: list[str]) -> None:
    if not study.search_best.exists():
        return
    best = read_json(study.search_best)
    if best.get("status") != "done":
        lines += ["## Per-module search", "", "Disabled in the spec.", ""]
        return
    b, g = best["reeval"], best["global_reeval"]
    lines += ["## Per-module search", "",
              f"{best['algorithm']} search, {best['trials']} trials over "
              f"{len(best['dims'])} log2 multipliers. Best trial {best['best_trial']}: loss "
              f"{_fmt(best['best_loss'])}. Re-evaluated on seeds {b['seeds']}: "
              f"**{_fmt(b['mean'])} ± {_fmt(b['std'], 2)}** against the global optimum's "
              f"{_fmt(g['mean'])} ± {_fmt(g['std'], 2)}.", "",
              "![search progress](../search/best_so_far.png)", ""]
    if not any(best["x"]):
        lines += ["No trial beat the global optimum: the best point is the global optimum "
                  "itself (every multiplier 1), so the per-module arm equals the global one.",
                  ""]
        return
    lines += ["Largest multipliers found (log2, 0 = the global optimum):", "",
              "| coordinate | log2 multiplier |", "|---|---|"]
    ranked = sorted(zip(best["dims"], best["x"], strict=True), key=lambda p: -abs(p[1]))
    for name, v in ranked[:10]:
        lines.append(f"| {name} | {v:+.2f} |")
    lines.append("")


def target_section(spec: Spec, study: Study, lines: list[str]) -> None:
    from .plots import plot_target_curves

    if not study.transfer_done.exists():
        return
    entries = read_json(study.transfer_done)
    baseline = next((a.name for a in spec.arms if a.multipliers == "none"), spec.arms[0].name)
    lines += ["## Targets", "",
              f"Each arm's HPs transferred to each target; speedup = steps the `{baseline}` "
              "arm needs to reach its final loss / steps the arm needs to reach it (seed-mean "
              "curves).", ""]
    for model in spec.target_models():
        curves, finals = {}, {}
        for e in (e for e in entries if e["model"] == model):
            results = [load_result(study.run_dir(rid)) for rid in e["runs"]]
            done = [r for r in results if r is not None and r.ok]
            finals[e["arm"]] = ([r.final_val_loss for r in done], len(results))
            if done and len(done) == len(results):
                curves[e["arm"]] = mean_curve([eval_curve(r.to_dict()) for r in done])
        ups = {arm: speedup(curves[baseline], c) for arm, c in curves.items()
               if baseline in curves and arm != baseline}
        fig = study.report_dir / f"target_{model}.png"
        if curves:
            plot_target_curves(curves, fig, f"{model}: validation loss per arm", ups, baseline)
            lines += [f"### {model}", "", f"![{model}]({fig.name})", ""]
        lines += ["| arm | final val loss (mean ± std over seeds) | runs completed | speedup |",
                  "|---|---|---|---|"]
        for arm, (losses, n) in finals.items():
            mean = statistics.fmean(losses) if losses else math.nan
            std = statistics.stdev(losses) if len(losses) > 1 else 0.0
            up = "1 (reference)" if arm == baseline else (f"{ups[arm]:.2f}x" if arm in ups
                                                          else "-")
            lines.append(f"| {arm} | {_fmt(mean)} ± {_fmt(std, 2)} | {len(losses)}/{n} | {up} |")
        lines.append("")


def build_report(spec: Spec, study: Study) -> Path:
    study.report_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Study `{spec.name}`", "", spec.description.strip(), "",
             f"Built {datetime.datetime.now().isoformat(timespec='seconds')} from "
             f"`{study.root}`. Parameterisation: **{spec.parameterisation.name}**; base model "
             f"`{spec.base}`; targets: {', '.join(spec.target_models()) or '-'}.", ""]
    if study.check_verdict.exists():
        v = read_json(study.check_verdict)
        lines += ["## Coordinate check", ""]
        if v["status"] == "pass":
            lines += [f"**Pass** for {v['parameterisation']}: every judged coordinate stays "
                      "flat across width and depth.", "", "![coordinate check](../check/"
                      "coord_check.png)", ""]
        else:
            lines += ["Skipped (disabled in the spec).", ""]
    select_section(study, lines)
    transfer_section(spec, study, lines)
    search_section(study, lines)
    target_section(spec, study, lines)
    write_text(study.report_file, "\n".join(lines) + "\n")
    return study.report_file
