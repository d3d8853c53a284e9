"""Stage 7, report: built from the study folder alone. ``report/report.md``, the same as a
self-contained ``report/report.html``, the figures, ``runs.parquet`` (every run of the study)
and ``summary.json`` (each claim's numbers and verdict, for MLflow and for scripts).

The page opens with a one-paragraph verdict per claim, then each stage's own section, in DAG
order: every stage writes its section (and its verdicts) in its own module; this one only
assembles them.
"""

from __future__ import annotations

import datetime
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..doc import Doc, Figure, Findings
from ..scaling import HP_KINDS
from ..study import Study, plain_name_problem, read_json, write_json, write_text
from .base import Context, Outputs, ReportContext, Stage, StagePlan, read_record, read_runs_table

if TYPE_CHECKING:
    import polars as pl

    from ..spec import Spec


def runs_table(study: Study, stages: Sequence[Stage]) -> pl.DataFrame:
    """Every run of a study: one row per (stage, role) from the training stages' tables,
    joined with what the run folder says (base HPs, table, best loss); runs in no stage table
    (trained with ``cpt train``) appear once with a null stage."""
    import polars as pl

    folders = []
    runs_dir = study.runs_dir
    for d in sorted(runs_dir.iterdir()) if runs_dir.exists() else []:
        if plain_name_problem(d.name):
            continue  # not a run's folder
        folder = study.run(d.name)
        result = folder.read_result()
        if result is None:
            continue
        losses = [e["val_loss"] for e in result.eval_curve if math.isfinite(e["val_loss"])]
        row: dict[str, Any] = {"run_id": d.name, "run_status": result.status,
                               "best_val_loss": min(losses) if losses else math.nan}
        written = folder.read_config()
        if written is not None:
            cfg = written["config"]
            factors = cfg.get("factors", cfg.get("multipliers", {}))
            row["table"] = cfg["parameterisation"]["name"]
            row.update({k: float(cfg["hps"][k]) for k in HP_KINDS})
            row["factored"] = bool(factors.get("per_type") or factors.get("per_layer"))
        folders.append(row)
    per_run = pl.DataFrame(folders, infer_schema_length=None)
    frames = []
    for stage in stages:
        path = study.stage_table(stage.name)
        if stage.trains and path.exists():
            df = read_runs_table(study, stage.name)
            # HP values come from each run's config (the same numbers for sweep rows).
            df = df.drop([c for c in HP_KINDS if c in df.columns])
            frames.append(df.with_columns(pl.lit(stage.name).alias("stage")))
    if not frames:
        return per_run.with_columns(pl.lit(None, pl.String).alias("stage"))
    staged = pl.concat(frames, how="diagonal_relaxed")
    joined = staged.join(per_run, on="run_id", how="left")
    orphans = per_run.join(staged.select("run_id").unique(), on="run_id", how="anti")
    out = pl.concat([joined, orphans], how="diagonal_relaxed")
    if "parameterisation" in out.columns and "table" in out.columns:
        out = out.with_columns(pl.coalesce("parameterisation", "table").alias("parameterisation"))
    if "status" in out.columns:
        out = out.with_columns(pl.coalesce("status", "run_status").alias("status"))
    first = [c for c in ("stage", "run_id", "parameterisation") if c in out.columns]
    return out.select(first + [c for c in out.columns if c not in first])


def runs_section(rc: ReportContext, stages: Sequence[Stage]) -> None:
    import polars as pl

    table = runs_table(rc.study, stages)
    if table.is_empty():
        return
    table.write_parquet(rc.study.report_runs)
    rc.doc.h(1, "Runs")
    status = "status" if "status" in table.columns else "run_status"  # no stage table yet
    counts = (table.with_columns(pl.col("stage").fill_null("(none)"))
              .group_by("stage", maintain_order=True)
              .agg(pl.col("run_id").n_unique().alias("runs"),
                   *(pl.col("run_id").filter(pl.col(status) == s).n_unique().alias(s)
                     for s in ("completed", "diverged", "failed"))))
    rc.doc.p(f"Every run of the study, one row per (stage, role), is in "
             f"`{rc.study.report_runs.name}` beside this report (`cp.stages.runs_table`).")
    rc.doc.table(["stage", "runs", "completed", "diverged", "failed"],
                 [[str(r["stage"]), str(r["runs"]), str(r["completed"]), str(r["diverged"]),
                   str(r["failed"])] for r in counts.to_dicts()])


def document(spec: Spec, study: Study, stages: Sequence[Stage]) -> tuple[Doc, Findings]:
    """The report of ``study`` as a document (figures written to the report folder)."""
    study.report_dir.mkdir(parents=True, exist_ok=True)
    body, found = Doc(""), Findings()
    rc = ReportContext(spec, study, body, found)
    for stage in stages:
        if stage.report is not None:
            stage.report(rc)
    runs_section(rc, stages)

    doc = Doc(f"Study `{spec.name}`")
    doc.p(spec.description.strip())
    doc.p(f"Built {datetime.datetime.now().isoformat(timespec='seconds')} from "
          f"`{study.root}`. Parameterisation: **{spec.parameterisation.name}**; base model "
          f"`{spec.base}`; targets: {', '.join(spec.target_models()) or '-'}.")
    doc.h(1, "Verdicts")
    if not found.claims:
        doc.p("No claim can be judged yet: the study has no finished stage with results.")
    for c in found.claims:
        doc.p(c["text"])
    doc.blocks += body.blocks
    return doc, found


def build_report(spec: Spec, study: Study, stages: Sequence[Stage]) -> Path:
    """Write the report of ``study`` (report.md, report.html, figures, summary.json); return
    the Markdown file's path."""
    doc, found = document(spec, study, stages)
    write_text(study.report_file, doc.markdown(study.report_dir))
    write_text(study.report_html, doc.html())
    write_json(study.report_summary,
               {"study": spec.name, "claims": found.claims, "metrics": found.metrics})
    return study.report_file


def provenance(study: Study, stages: Sequence[Stage]) -> str:
    """Where a study's numbers came from: the machines and commits in its stage records."""
    records = [r for s in stages if (r := read_record(study, s.name)) is not None]
    commits = sorted({r["git_commit"] for r in records if r.get("git_commit")})
    machines = sorted({r.get("machine") or r.get("host", "?") for r in records})
    ran = [r["started"] for r in records if r.get("started")]
    days = sorted({datetime.date.fromtimestamp(t).isoformat() for t in ran})
    when = ("on unknown dates" if not days else f"on {days[0]}" if len(days) == 1
            else f"from {days[0]} to {days[-1]}")
    return (f"The study ran {when}, on {'; '.join(machines) or 'an unrecorded machine'}, "
            f"from commit {', '.join(c[:12] for c in commits) or 'unknown'}.")


def publish(spec: Spec, study: Study, stages: Sequence[Stage], path: str | Path) -> Path:
    """The report as ``path`` (Markdown) with its figures in a folder beside it (``results.md``
    -> ``results/``), headed by where the numbers came from: for a repository's docs."""
    path = Path(path)
    figures = path.with_suffix("")
    if figures.exists():
        shutil.rmtree(figures)
    figures.mkdir(parents=True)
    doc, _ = document(spec, study, stages)
    for i, b in enumerate(doc.blocks):
        if isinstance(b, Figure):
            dest = figures / b.path.name
            shutil.copyfile(b.path, dest)
            doc.blocks[i] = Figure(dest, b.alt)
    text = doc.markdown(path.parent)
    head, _, rest = text.partition("\n\n")
    note = (f"Generated by `cpt report {study.root} --publish {path}` on "
            f"{datetime.date.today().isoformat()}, from the study folder alone (not typed by "
            f"hand). {provenance(study, stages)}")
    write_text(path, f"{head}\n\n{note}\n\n{rest}")
    return path


def run(ctx: Context) -> str:
    path = build_report(ctx.spec, ctx.study, ctx.stages)
    ctx.echo(f"[report] {path}")
    return str(path)


def plan(spec: Spec) -> StagePlan:
    return StagePlan("report", 0, 0)


def outputs(study: Study) -> Outputs:
    out = Outputs()  # the whole folder, its stage record included
    out.add(study.spec_file, None)
    out.add(study.stage_dir("report"), None)
    if study.report_summary.exists():
        out.metrics += [(k, float(v), 0) for k, v in
                        read_json(study.report_summary, "metrics")["metrics"].items()
                        if isinstance(v, (int, float)) and math.isfinite(v)]
    return out


STAGE = Stage(name="report", summary="verdicts, figures and tables: transfer curves, optimum "
              "shift, search, speedup", after=("sweep", "search", "target"), run=run,
              done=lambda study: study.report_file, plan=plan, outputs=outputs)
