"""`cpt`: the command line over cp. Thin: parse, call the library, print.

User errors (a bad spec, a missing file) print a message and exit 2, without a traceback.
torch is imported only by the commands that build a model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .execute import LaunchError
from .lock import StudyLocked, hold
from .schema import SpecError
from .spec import Spec, load_spec
from .study import CorruptFile, StorageError, Study

if TYPE_CHECKING:
    from rich.console import Console

    from .config import RunConfig

EXIT_USER_ERROR = 2
EXIT_FAULT = 1


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


class FolderFault(Exception):
    """A fault of the study folder (a corrupt file) that this command cannot redo; printed
    with what to run, without a traceback."""


def _console() -> Console:
    from rich.console import Console

    # Piped output (logs, CI) gets room for the settings tables instead of rich's 80 columns.
    return Console(width=None if sys.stdout.isatty() else 150)


def _load(args: argparse.Namespace) -> Spec:
    return load_spec(args.spec, overrides=args.set)


def _count(n: int) -> str:
    """A parameter count in words: 24.4K, 1.3M, 2.70B."""
    if n < 1e6:
        return f"{n / 1e3:.1f}K"
    return f"{n / 1e6:,.1f}M" if n < 1e9 else f"{n / 1e9:,.2f}B"


def _fmt(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.4g}"


# ---------------------------------------------------------------------------------------------
# describe


def describe_json(spec: Spec, model: str) -> dict:
    """The stable contract of ``cpt describe --json``."""
    return _run_config(spec, model).describe()


def _run_config(spec: Spec, model: str) -> RunConfig:
    if model not in spec.models:
        import difflib

        close = difflib.get_close_matches(model, list(spec.models), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"no model {model!r} in {spec.name}{hint} (models: "
                        f"{', '.join(spec.models)})")
    return spec.run_config(model)


def _collapse_layers(groups: list[dict]) -> list[dict]:
    """Consecutive layers of a group with identical settings become one row labelled 'a-b'."""
    keys = ("init_std", "multiplier", "lr", "eps", "weight_decay", "beta1", "beta2")
    by_group: dict[str, list[dict]] = {}
    for g in groups:  # dicts keep first-appearance order: embedding, block groups, head
        by_group.setdefault(g["group"], []).append(g)
    out: list[dict] = []
    for rows in by_group.values():
        runs = [[rows[0]]]
        for r in rows[1:]:
            if all(r[k] == runs[-1][0][k] for k in keys):
                runs[-1].append(r)
            else:
                runs.append([r])
        for run in runs:
            first, last = run[0]["layer"], run[-1]["layer"]
            label = None if first is None else str(first) if first == last else f"{first}-{last}"
            out.append({**run[0], "layer": label})
    return out


def cmd_describe(args: argparse.Namespace) -> int:
    spec = _load(args)
    info = describe_json(spec, args.model)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    from rich.table import Table

    from .config import count_params
    from .scaling import scale_ratios

    run = _run_config(spec, args.model)
    m = scale_ratios(run.base_scale, run.scale)
    con = _console()
    if spec.arch.factory is None:
        n = count_params(run.model_config(spec.data.vocab_size or 256))
        model = f"~{n / 1e6:.2f}M params"
    else:
        model = f"model from {spec.arch.factory}, roles {spec.arch.roles}"
    con.print(f"[bold]{spec.name}[/] / model [bold]{args.model}[/]: "
              f"{info['parameterisation']} (alpha={info['alpha']:g}), "
              f"{model}, {run.scale.steps} steps")
    scale_tab = Table(show_header=True, header_style="bold")
    for col in ("", "width", "depth", "batch", "tokens", "seq_len", "tokens/step"):
        scale_tab.add_column(col, justify="right")
    for label, key in (("base (" + spec.base + ")", "base_scale"), (args.model, "scale")):
        scale_tab.add_row(label, *(str(v) for v in info[key].values()),
                          str(getattr(run, key).tokens_per_step))
    scale_tab.add_row("ratio", f"m_N={m['width']:g}", f"m_L={m['depth']:g}",
                      f"m_B={m['batch']:g}", f"m_D={m['tokens']:g}", "",
                      f"rho={m['batch'] / m['tokens']:g}")
    con.print(scale_tab)
    tab = Table(title="resolved settings per (group, layer)", header_style="bold")
    for col in ("group", "layer", "init_std", "multiplier", "lr", "eps", "weight_decay",
                "beta1", "beta2"):
        tab.add_column(col, justify="left" if col == "group" else "right")
    rows = info["groups"] if args.all_layers else _collapse_layers(info["groups"])
    for r in rows:
        tab.add_row(r["group"], "-" if r["layer"] is None else str(r["layer"]),
                    *(_fmt(r[k]) for k in ("init_std", "multiplier", "lr", "eps",
                                           "weight_decay", "beta1", "beta2")))
    con.print(tab)
    return 0


# ---------------------------------------------------------------------------------------------
# rules


def cmd_rules(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .config import ParamConfig
    from .scaling import GROUPS, HP_KINDS

    target = args.target
    if Path(target).exists():
        spec = load_spec(target, overrides=args.set)
        table = spec.parameterisation.build()
    else:
        try:
            table = ParamConfig(name=target, alpha=args.alpha).build()
        except ValueError as e:
            raise UserError(str(e)) from None
    tab = Table(title=f"{table.name} (alpha={table.alpha:g}): HP = base x ...",
                header_style="bold", caption="ratios to the base model: m_N width, m_L depth, "
                "m_B batch (in tokens), m_D training tokens, rho = m_B/m_D; betas: the factor "
                "applies to (1 - beta)")
    tab.add_column("group")
    for kind in HP_KINDS:
        tab.add_column(kind)
    for g in GROUPS:
        tab.add_row(g, *(table.rule(g, k).describe(table.alpha) for k in HP_KINDS))
    con = _console()
    con.print(tab)
    if args.doc:
        con.print(table.doc)
    return 0


# ---------------------------------------------------------------------------------------------
# train


def cmd_train(args: argparse.Namespace) -> int:
    """One run of a spec's model, through the same launcher and run folder as the pipeline."""
    import dataclasses

    from .study import Study

    spec = _load(args)
    run = _run_config(spec, args.model)
    if args.seed is not None:
        run = dataclasses.replace(run, seed=args.seed)
    study = Study.at(args.results, spec.name)
    with hold(study, f"cpt train {args.model}"):
        return _train(args, spec, run, study)


def _train(args: argparse.Namespace, spec: Spec, run: RunConfig, study: Study) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from .config import PlannedRun
    from .launch import Launcher
    from .resources import LauncherSpec

    pr = PlannedRun(run, {"stage": "train", "model": args.model, "seed": run.seed})
    folder = study.run(pr.run_id)
    con = _console()
    existing = folder.load_result()
    if existing is not None and not args.force:
        con.print(f"run {pr.run_id} already has a result ({existing.status}, final val loss "
                  f"{existing.final_val_loss:.4f}) in {folder.path}; --force retrains it")
        return 0
    con.print(f"training [bold]{args.model}[/] of {spec.name} "
              f"(run {pr.run_id}, {run.scale.steps} steps) -> {folder.path}")
    last = {"train": math.nan, "val": math.nan}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.completed}/{task.total} steps"), TimeRemainingColumn(), console=con,
            transient=False) as bar:
        task = bar.add_task("train", total=run.scale.steps)

        def log(rec: dict) -> None:
            if "train_loss" in rec:
                last["train"] = rec["train_loss"]
            if "val_loss" in rec:
                last["val"] = rec["val_loss"]
            if "step" in rec:
                bar.update(task, completed=rec["step"], description=(
                    f"train {last['train']:.3f}  val {last['val']:.3f}"))

        launcher = Launcher(study, LauncherSpec(kind="inline", threads_per_run=run.runtime.threads),
                            "train", echo=lambda _: None, force=args.force, progress=log)
        result = launcher.run([pr])[pr.run_id]
    style = "green" if result.ok else "red"
    con.print(f"[{style}]{result.status}[/]: final val loss {result.final_val_loss:.4f}, "
              f"{result.tokens_per_s:,.0f} tokens/s, {result.wall_s:.1f} s"
              + (f" -- {result.reason}" if result.reason else ""))
    con.print(f"result: {folder.result}")
    return 0 if result.status == "completed" else 1


# ---------------------------------------------------------------------------------------------
# coord-check


def cmd_coord_check(args: argparse.Namespace) -> int:
    """The check stage of the pipeline, with its table of slopes printed."""
    import polars as pl

    from .pipeline import run_stage
    from .stages import StageFailed
    from .study import Study

    overrides = list(args.set)
    for flag, key in ((args.width_ratios, "check.width_ratios"),
                      (args.depth_ratios, "check.depth_ratios")):
        if flag:
            overrides.append(f"{key}=[{','.join(str(r) for r in flag)}]")
    if args.steps:
        overrides.append(f"check.steps={args.steps}")
    if args.tolerance:
        overrides.append(f"check.tolerance={args.tolerance}")
    spec = load_spec(args.spec, overrides=[*overrides, "check.enabled=true"])
    study = Study.at(args.results, spec.name)
    con = _console()
    try:
        with hold(study, "cpt coord-check"):
            run_stage("check", spec, study, echo=lambda m: con.print(f"  {m}"))
        failed = None
    except StageFailed as e:
        failed = str(e)
    from rich.table import Table

    tab = Table(title="fitted log-log slopes (judged ones must be within "
                f"{spec.check.tolerance} of expected)", header_style="bold")
    for col in ("axis", "group", "quantity", "slope", "expected", "verdict"):
        tab.add_column(col)
    colours = {"pass": "green", "fail": "bold red", "info": "dim"}
    for f in pl.read_csv(study.check_fits).to_dicts():
        if f["verdict"] == "info" and not args.verbose:
            continue
        tab.add_row(f["axis"], f["group"], f["quantity"], f"{f['slope']:+.2f}",
                    "-" if f["expected"] is None else f"{f['expected']:+.2f}",
                    f"[{colours[f['verdict']]}]{f['verdict']}[/]")
    con.print(tab)
    if failed is None:
        con.print(f"[green]PASS[/]: {spec.parameterisation.name} keeps every judged "
                  f"coordinate flat. Plot: {study.check_plot}")
        return 0
    con.print(f"[bold red]FAIL[/]: {failed}")
    return 1


# ---------------------------------------------------------------------------------------------
# spec check, plan, stage


def _size_warnings(spec: Spec) -> None:
    from .spec import size_warnings

    for w in size_warnings(spec):
        print(f"cpt: warning: {w}", file=sys.stderr)


def cmd_spec_check(args: argparse.Namespace) -> int:
    spec = _load(args)
    spec.check_models(args.spec)  # a factory: every model built on the meta device
    n_runs = sum(p.runs for p in _plan(spec))
    model = f", model from {spec.arch.factory} (roles fit)" if spec.arch.factory else ""
    print(f"{args.spec}: ok -- study {spec.name!r}, models {', '.join(spec.models)}, base "
          f"{spec.base}, {spec.parameterisation.name}{model}; {n_runs} training runs planned")
    _size_warnings(spec)
    return 0


def cmd_spec_docs(args: argparse.Namespace) -> int:
    from .spec_docs import reference

    print(reference())
    return 0


def _plan(spec: Spec) -> list:
    from .pipeline import plan

    return plan(spec)


def cmd_plan(args: argparse.Namespace) -> int:
    spec = _load(args)
    from rich.table import Table

    tab = Table(title=f"plan of study {spec.name!r}", header_style="bold")
    for col in ("stage", "runs", "tokens", "notes"):
        tab.add_column(col, justify="left" if col in ("stage", "notes") else "right")
    total_runs = total_tokens = 0
    for p in _plan(spec):
        tab.add_row(p.stage, str(p.runs) if p.runs else "-",
                    f"{p.tokens / 1e6:,.1f}M" if p.tokens else "-", p.note)
        total_runs += p.runs
        total_tokens += p.tokens
    tab.add_row("[bold]total", f"[bold]{total_runs}", f"[bold]{total_tokens / 1e6:,.1f}M", "")
    con = _console()
    con.print(tab)
    con.print(_memory_table(spec))
    _size_warnings(spec)
    return 0


def _memory_table(spec: Spec) -> Any:
    """Each model's size, compute and estimated memory per GPU (`cp.memory`)."""
    from rich.table import Table

    from .memory import USABLE_FRACTION, gb, memory_plan, plan_vocab

    vocab, guessed = plan_vocab(spec)
    tab = Table(title="models: size, compute and memory per GPU", header_style="bold",
                caption=(
        f"GB = 2^30 bytes; vocabulary {vocab}{' (assumed: set data.vocab_size)' if guessed else ''}"
        "; state: fp32 parameters, gradients and AdamW moments (sharded by fsdp); buffers: "
        "gathered parameters, DDP buckets, autocast copies, the logits' gradient; activations "
        "at the micro-batch without / with activation checkpointing (* the one configured); "
        f"a model fits when its total is at most {USABLE_FRACTION:.0%} of its GPU"))
    for col in ("model", "stages", "ranks", "params", "FLOPs/token", "FLOPs", "state",
                "buffers", "acts", "acts ckpt", "micro", "total", "GPU", "fits"):
        tab.add_column(col, justify="left" if col in ("model", "stages", "ranks") else "right",
                       no_wrap=col == "model")
    for r in memory_plan(spec):
        e = r.estimate
        ckpt = r.parallel.activation_checkpointing
        tab.add_row(r.model, "+".join(r.stages), f"{r.ranks} {r.parallel.strategy}",
                    _count(r.n_params), f"{r.flops_per_token:.3g}",
                    f"{r.flops_per_token * r.tokens:.3g}", gb(e.params + e.grads + e.optimizer),
                    gb(e.buffers), gb(e.activations_without_checkpointing) + ("" if ckpt else "*"),
                    gb(e.activations_with_checkpointing) + ("*" if ckpt else ""),
                    str(e.micro_batch), f"[bold]{gb(e.total)}",
                    "-" if r.gpu_mem_gb is None else f"{r.gpu_mem_gb:g}",
                    {None: "-", True: "yes", False: "[red]no"}[r.fits])
    return tab


def cmd_stage(args: argparse.Namespace) -> int:
    spec = _load(args)
    from .pipeline import StageFailed, run_stage
    from .study import Study

    study = Study.at(args.results, spec.name)
    try:
        with hold(study, f"cpt stage {args.stage}"):
            run_stage(args.stage, spec, study, echo=lambda m: print(m, flush=True))
    except StageFailed as e:
        print(f"cpt: stage {args.stage} failed: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from .spec import env_paths, read_study_spec
    from .study import Study
    from .tracking import sync

    study = Study(Path(args.study))
    spec = read_study_spec(study)
    try:
        with hold(study, "cpt sync"), _redo_elsewhere(study):
            rep = sync(study, spec.tracking, spec.name, uri=args.uri,
                       echo=lambda m: print(m, flush=True), hidden=env_paths(spec))
    except (FileNotFoundError, CorruptFile, FolderFault, StudyLocked, StorageError):
        raise  # reported by main()
    except Exception as e:  # the store is down or refuses: say so, no traceback
        print(f"cpt: sync of {study.root} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"synced {study.root} to {rep.uri} (experiment {rep.experiment!r}): "
          f"{len(rep.stages)} stage(s), {rep.logged} run(s) logged, {rep.replaced} replaced, "
          f"{rep.present} already there; outputs of {rep.outputs} stage(s) logged")
    return 0


def cmd_fit_rules(args: argparse.Namespace) -> int:
    """The exponents a study's sweeps want, as a ready ``tables:`` block."""
    from .spec import read_study_spec
    from .stages.sweep import fitted_rules_yaml, study_fitted_rules
    from .study import Study

    study = Study(Path(args.study))
    spec = read_study_spec(study)
    rows = study_fitted_rules(spec, study)
    table = args.table or spec.parameterisation.name
    if not any(r["table"] == table for r in rows):
        known = sorted({r["table"] for r in rows})
        raise UserError(f"no swept shift of table {table!r} in {study.root}"
                        + (f"; swept tables: {', '.join(known)}" if known else
                           " (the study has no transfer sweep along an axis yet)"))
    print(fitted_rules_yaml(rows, table, str(study.root)), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The report rebuilt from the study folder alone (its spec.yaml, tables, run folders)."""
    from .spec import read_study_spec
    from .stages import STAGES
    from .stages.report import build_report, publish
    from .study import Study

    study = Study(Path(args.study))
    spec = read_study_spec(study)
    with hold(study, "cpt report"), _redo_elsewhere(study):
        path = build_report(spec, study, STAGES)
        print(f"report: {path} and {study.report_html}")
        if args.publish:
            out = publish(spec, study, STAGES, args.publish)
            print(f"published: {out} (figures in {out.with_suffix('')}/)")
    return 0


@contextlib.contextmanager
def _redo_elsewhere(study: Study) -> Iterator[None]:
    """For commands that read a study but cannot redo it (report, sync: the corpus or the
    cluster may be elsewhere): a corrupt file is set aside, and the error says which stage to
    redo."""
    from .pipeline import redo_hint
    from .study import set_aside

    try:
        yield
    except CorruptFile as e:
        set_aside(e.path, e.reason, "not redone here")
        raise FolderFault(f"{e}. {redo_hint(study, e.path)}") from None


# ---------------------------------------------------------------------------------------------
# data prepare


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Text or JSONL into DIR/train.bin, val.bin, tokenizer.json, meta.json, with a progress
    bar per pass."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )

    from .prepare import PrepareError, prepare

    con = _console()
    tasks: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=con, transient=False) as bar:

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)

        try:
            meta = prepare(args.inputs, args.out, vocab_size=args.vocab_size,
                           tokenizer=args.tokenizer, val_fraction=args.val_fraction,
                           eos=args.eos, progress=progress)
        except PrepareError as e:
            raise UserError(str(e)) from None
    con.print(f"{args.out}: {meta['train_tokens']:,} training and {meta['val_tokens']:,} "
              f"validation tokens ({meta['train_documents']:,} + {meta['val_documents']:,} "
              f"documents), vocabulary {meta['vocab_size']:,}, {meta['dtype']}. "
              f"In a spec: data: {{tokens: {args.out}}}")
    return 0


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpt", description="Hyperparameter transfer studies "
                                "with Complete(d)P.")
    sub = p.add_subparsers(dest="command", required=True)

    def spec_cmd(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("spec", help="study spec (YAML)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec value, e.g. --set hps.lr=0.02 (repeatable)")
        return sp

    d = spec_cmd("describe", "Print every (group, layer)'s resolved settings for a model.")
    d.add_argument("--model", required=True, help="model name from the spec's models")
    d.add_argument("--json", action="store_true", help="print one JSON object (stable format)")
    d.add_argument("--all-layers", action="store_true",
                   help="one row per layer even where consecutive layers are identical")
    d.set_defaults(fn=cmd_describe)

    r = sub.add_parser("rules", help="Print a parameterisation's rule table (exponents).")
    r.add_argument("target", help="a built-in table name, or a spec file")
    r.add_argument("--alpha", type=float, default=None, help="residual exponent")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--doc", action="store_true", help="also print the table's notes")
    r.set_defaults(fn=cmd_rules)

    t = spec_cmd("train", "Train one model of a spec into RESULTS/<study>/runs/<run id>.")
    t.add_argument("--model", required=True)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--results", default="results", help="results root (default: results)")
    t.add_argument("--force", action="store_true", help="retrain even if a result exists")
    t.set_defaults(fn=cmd_train)

    c = spec_cmd("coord-check", "The study's check stage: coordinate check over width and "
                 "depth into RESULTS/<study>/check/; exit 1 on failure.")
    c.add_argument("--results", default="results")
    c.add_argument("--width-ratios", type=float, nargs="+", default=None,
                   help="widths as ratios to the base width (check.width_ratios)")
    c.add_argument("--depth-ratios", type=float, nargs="+", default=None,
                   help="depths as ratios to the base depth (check.depth_ratios)")
    c.add_argument("--steps", type=int, default=None, help="check.steps")
    c.add_argument("--tolerance", type=float, default=None, help="check.tolerance")
    c.add_argument("-v", "--verbose", action="store_true", help="also list unjudged slopes")
    c.set_defaults(fn=cmd_coord_check)

    sc = sub.add_parser("spec", help="Spec utilities.")
    sc_sub = sc.add_subparsers(dest="spec_command", required=True)
    chk = sc_sub.add_parser("check", help="Validate a spec (exit 2 with every problem).")
    chk.add_argument("spec")
    chk.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    chk.set_defaults(fn=cmd_spec_check)

    docs = sc_sub.add_parser("docs", help="Print the spec reference (Markdown).")
    docs.set_defaults(fn=cmd_spec_docs)

    pl = spec_cmd("plan", "Print each stage with its run count and training tokens, and "
                  "each model's parameters, FLOPs and estimated memory per GPU.")
    pl.set_defaults(fn=cmd_plan)

    da = sub.add_parser("data", help="Data utilities.")
    da_sub = da.add_subparsers(dest="data_command", required=True)
    prep = da_sub.add_parser(
        "prepare", help="Tokenise text or JSONL into memory-mapped token files.",
        description="Tokenise text files (documents: paragraphs between blank lines) or JSONL "
        "(documents: each line's 'text' field) into DIR/train.bin and DIR/val.bin (uint16 "
        "when the vocabulary fits, else uint32), DIR/tokenizer.json and DIR/meta.json. A "
        "document goes to validation when the first 8 bytes of the SHA-256 of its text are "
        "below VAL_FRACTION * 2^64 (deterministic, independent of order). A spec reads the "
        "directory with data: {tokens: DIR}.")
    prep.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="text or .jsonl files, or a bundled corpus name (shakespeare)")
    prep.add_argument("--out", required=True, metavar="DIR", help="output directory")
    how = prep.add_mutually_exclusive_group(required=True)
    how.add_argument("--vocab-size", type=int, metavar="N",
                     help="train a byte-level BPE tokenizer with N entries on the training "
                     "documents (offline, Hugging Face tokenizers)")
    how.add_argument("--tokenizer", metavar="FILE", help="a tokenizer.json to use instead")
    prep.add_argument("--val-fraction", type=float, default=0.05,
                      help="expected fraction of the documents held out (default 0.05)")
    prep.add_argument("--eos", default=None, metavar="TOKEN",
                      help="end-of-document token of a --tokenizer (default: the first of "
                      "<|endoftext|>, </s>, <|end_of_text|>, <eos> in its vocabulary)")
    prep.set_defaults(fn=cmd_data_prepare)

    from .stages import NAMES

    st = sub.add_parser("stage", help="Run one stage of a study (what Snakemake calls).")
    st.add_argument("stage", choices=NAMES)
    st.add_argument("spec")
    st.add_argument("--results", default="results", help="results root (default: results)")
    st.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    st.set_defaults(fn=cmd_stage)

    sy = sub.add_parser("sync", help="Log a study folder to MLflow: what is missing, nothing "
                        "twice.", description="Log a study folder (results/<study>) to MLflow: "
                        "every finished stage as a parent run, each of its training runs as a "
                        "child, its outputs as artifacts. Runs already in the store are "
                        "skipped. Reads only the study folder.")
    sy.add_argument("study", help="study folder, e.g. results/demo")
    sy.add_argument("--uri", default=None, help="tracking URI (default: the study's "
                    "tracking.uri, else MLFLOW_TRACKING_URI, else sqlite:///STUDY/mlflow.db)")
    sy.set_defaults(fn=cmd_sync)

    fr = sub.add_parser("fit-rules", help="Print the exponents a study's sweeps want, as a "
                        "tables: override block.", description="For each swept HP and axis, "
                        "the exponent that would have kept the optimum still (the table's "
                        "exponent plus the measured shift per doubling, with its 95% "
                        "interval), as a `tables:` block to paste into a spec.")
    fr.add_argument("study", help="study folder, e.g. results/cpu-study")
    fr.add_argument("--table", default=None, help="table whose exponents to fit (default: "
                    "the study's parameterisation)")
    fr.set_defaults(fn=cmd_fit_rules)

    rp = sub.add_parser("report", help="Rebuild a study's report from its folder alone.")
    rp.add_argument("study", help="study folder, e.g. results/demo")
    rp.add_argument("--publish", metavar="PATH.md", default=None,
                    help="also write the report to PATH.md with its figures in PATH/ and a "
                    "note of the machine and commit the numbers came from (e.g. "
                    "docs/results.md)")
    rp.set_defaults(fn=cmd_report)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SpecError as e:
        print(e.format(), file=sys.stderr)
        return EXIT_USER_ERROR
    except (UserError, FileNotFoundError, LaunchError, StudyLocked) as e:
        print(f"cpt: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (StorageError, CorruptFile, FolderFault) as e:  # the folder's fault, no traceback
        print(f"cpt: {e}", file=sys.stderr)
        return EXIT_FAULT
    except KeyboardInterrupt:
        print("cpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
