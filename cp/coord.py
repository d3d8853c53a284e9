"""Coordinate check: do activations and their updates keep their size as width and depth grow?

For models at several widths (base depth) and several depths (base width), all with HPs
transferred from the base by the parameterisation under test -- a study's models
(`check_run`: our GPT or its ``arch.factory``), or any model builder (`coord_check`, exported
as ``cp.coord_check``; the same measuring, fits, verdicts and plot) -- we record on a fixed
probe batch the RMS of every group's output at initialisation and after a few Adam steps at
the base learning rate:

- ``act``: RMS of the output after the steps;
- ``delta``: RMS of the change of the output caused by the steps.

Each is averaged over layers and seeds, and a line is fitted to log(size) against log(width or
depth ratio to the base model) on each axis. A correct parameterisation keeps the judged slopes
near their expected value (see `expected_slope`); a wrong one shows slopes of about +-1/2 or 1
(SP's updates grow linearly with width under Adam, its residual stream as sqrt(depth)).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Union

import numpy as np

from .config import RunConfig
from .data import DataConfig, TokenData
from .scaling import BLOCK_GROUPS, RuleTable
from .schedule import ScheduleConfig
from .schema import Problems

if TYPE_CHECKING:
    from .runmodel import RunModel

# Pseudo-groups measured besides the parameter groups.
RESIDUAL = "residual"  # the residual stream entering the final norm
LOGITS = "logits"      # = the unembedding's output
BRANCH_OUT = ("attn_out", "mlp_down")  # outputs scaled by m_L^-alpha on purpose


def expected_slope(group: str, quantity: str, axis: str, alpha: float) -> Optional[float]:
    """The log-log slope a correct parameterisation shows, or None where nothing is claimed.

    Width: every activation and every update keeps its size (muP's desiderata).
    Depth: the residual stream and the logits keep their size, and so do the features inside a
    block (their inputs are normalised). The branch outputs shrink as m_L^-alpha by design and
    their updates as m_L^-1 (which, summed over the m_L-fold more blocks, is what keeps the
    residual update flat), and in-block updates go as m_L^(alpha-1): flat only for alpha = 1
    (CompleteP's "complete" feature learning). These are reported, not judged.
    """
    if axis == "width":
        return 0.0
    if group in (RESIDUAL, LOGITS, "embedding", "final_norm"):
        return 0.0
    if group in BLOCK_GROUPS and group not in BRANCH_OUT and quantity == "act":
        return 0.0
    return None


@dataclass
class CoordConfig:
    """What the coordinate check measures."""

    width_ratios: list[float] = field(default_factory=lambda: [1, 2, 4, 8])
    """Widths checked, as ratios to the base width m_N (at least 3 spanning 2x; 4 spanning 8x
    by default)."""
    depth_ratios: list[float] = field(default_factory=lambda: [1, 2, 4, 8])
    """Depths checked, as ratios to the base depth m_L (at least 3 spanning 2x)."""
    steps: int = 5
    """Adam steps (constant lr, no warmup) between the two measurements."""
    batch: int = 8
    """Sequences per step and in the probe batch."""
    seq_len: int = 64
    """Tokens per sequence (at most the base model's)."""
    seeds: int = 2
    """Seeds averaged (init and data)."""
    tolerance: float = 0.2
    """Largest allowed |slope - expected| for a judged (group, quantity, axis)."""

    RENAMED: ClassVar[dict[str, str]] = {"width_mults": "width_ratios",
                                         "depth_mults": "depth_ratios"}

    def check(self, at: str, problems: Problems) -> None:
        for k in ("width_ratios", "depth_ratios"):
            ratios = getattr(self, k)
            ok = len(set(ratios)) >= 3 and min(ratios, default=0) > 0 and \
                max(ratios) / min(ratios) >= 2
            problems.range(f"{at}.{k}", ratios, ok, "at least 3 distinct positive ratios "
                           "spanning at least 2x")
        for k in ("steps", "batch", "seq_len", "seeds"):
            problems.at_least(f"{at}.{k}", getattr(self, k), 1, "an integer >= 1")
        problems.positive(f"{at}.tolerance", self.tolerance)


Builder = Callable[[int, int], "RunModel"]
"""(width, depth) -> a model of the check, built on the CPU from torch's global generator."""


def measure(build: Callable[[], RunModel], data: TokenData, ccfg: CoordConfig, seq_len: int,
            seed: int) -> dict[tuple[str, str], float]:
    """{(group, quantity): size} for the model ``build`` makes, with one seed."""
    import torch

    from .optim import build_optimizer

    torch.manual_seed(seed)
    model = build()
    opt, sched = build_optimizer(model.tagged, model.settings,
                                 ScheduleConfig(warmup=0.0, decay="constant"), ccfg.steps)

    captured: dict[tuple[str, Optional[int]], torch.Tensor] = {}

    Key = tuple[str, Optional[int]]

    def hook(key: Key) -> Callable[[torch.nn.Module, tuple[Any, ...], Any], None]:
        def fn(_module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            captured[key] = output.detach().float().clone()
        return fn

    def pre_hook(key: Key) -> Callable[[torch.nn.Module, tuple[Any, ...]], None]:
        def fn(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            captured[key] = args[0].detach().float().clone()
        return fn

    # The embedding's output is what the first block's attention norm reads (a pre-norm
    # block); the residual stream at the end is what the final norm reads.
    by_key = {(g, layer): m for g, layer, m in model.modules}
    handles = [m.register_forward_hook(hook((g, layer))) for g, layer, m in model.modules]
    for (group, layer), key in ((("attn_norm", 0), ("embedding", None)),
                                (("final_norm", None), (RESIDUAL, None))):
        if (group, layer) in by_key:
            handles.append(by_key[group, layer].register_forward_pre_hook(pre_hook(key)))

    probe_x, _ = data.train_batch(10**6 + seed, ccfg.batch, seq_len, seed)

    def probe() -> dict:
        captured.clear()
        with torch.no_grad():
            model.module(probe_x)
        return dict(captured)

    before = probe()
    for step in range(ccfg.steps):
        x, y = data.train_batch(step, ccfg.batch, seq_len, seed)
        loss, _ = model.loss(model.module(x), y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    after = probe()
    for h in handles:
        h.remove()

    def rms(t: torch.Tensor) -> float:
        return float(t.pow(2).mean().sqrt())

    sums: dict[tuple[str, str], list[float]] = {}
    for (group, _layer), out in after.items():
        name = LOGITS if group == "unembedding" else group
        sums.setdefault((name, "act"), []).append(rms(out))
        sums.setdefault((name, "delta"), []).append(rms(out - before[group, _layer]))
    return {k: float(np.mean(v)) for k, v in sums.items()}


@dataclass
class CoordResult:
    """Measurements, fitted slopes and verdicts of a coordinate check."""

    parameterisation: str
    rows: list[dict] = field(default_factory=list)
    """One row per (axis, ratio, group, quantity): the measured size."""
    fits: list[dict] = field(default_factory=list)
    """One row per (axis, group, quantity): slope, expected, verdict (pass/fail/info)."""

    @property
    def passed(self) -> bool:
        return all(f["verdict"] != "fail" for f in self.fits)

    def failures(self) -> list[dict]:
        return [f for f in self.fits if f["verdict"] == "fail"]

    def plot(self, path: Path | str) -> Path:
        """The figure of `cpt coord-check` (PNG) at ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(self, path)
        return path


def _slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = np.log(xs), np.log(np.maximum(ys, 1e-30))
    return float(np.polyfit(lx, ly, 1)[0])


def _check(build: Builder, base_width: int, base_depth: int, widths: list[int],
           depths: list[int], ccfg: CoordConfig, data: TokenData, seq_len: int,
           table: RuleTable, progress: Optional[Callable[..., None]]) -> CoordResult:
    """Measure every model (widths at the base depth, depths at the base width), fit the
    slopes and judge them: what both `check_run` and `coord_check` do."""
    result = CoordResult(parameterisation=table.name)
    jobs = [("width", w, base_depth, w / base_width) for w in widths] + \
        [("depth", base_width, d, d / base_depth) for d in depths]
    for i, (axis, width, depth, ratio) in enumerate(jobs):
        at = functools.partial(build, width, depth)
        per_seed = [measure(at, data, ccfg, seq_len, seed) for seed in range(ccfg.seeds)]
        for key in per_seed[0]:
            group, quantity = key
            value = float(np.mean([m[key] for m in per_seed]))
            result.rows.append({"axis": axis, "ratio": float(ratio), "width": width,
                                "depth": depth, "group": group, "quantity": quantity,
                                "value": value})
        if progress:
            progress(i + 1, len(jobs), axis, ratio)
    for axis in ("width", "depth"):
        keys = sorted({(r["group"], r["quantity"]) for r in result.rows if r["axis"] == axis})
        for group, quantity in keys:
            pts = [(r["ratio"], r["value"]) for r in result.rows
                   if r["axis"] == axis and r["group"] == group and r["quantity"] == quantity]
            slope = _slope([p[0] for p in pts], [p[1] for p in pts])
            exp = expected_slope(group, quantity, axis, table.alpha)
            if exp is None:
                verdict = "info"
            else:
                verdict = "pass" if abs(slope - exp) <= ccfg.tolerance else "fail"
            result.fits.append({"axis": axis, "group": group, "quantity": quantity,
                                "slope": slope, "expected": exp, "verdict": verdict})
    return result


def check_run(run: RunConfig, ccfg: Optional[CoordConfig] = None,
              progress: Optional[Callable[..., None]] = None) -> CoordResult:
    """The coordinate check of ``run``'s model (our GPT or its ``arch.factory``) and
    parameterisation around its base scale: what the check stage and `cpt coord-check` run."""
    from .runmodel import build

    ccfg = ccfg or CoordConfig()
    data = TokenData(run.data)
    base = run.base_scale

    def build_at(width: int, depth: int) -> RunModel:
        scale = dataclasses.replace(base, width=width, depth=depth)
        return build(dataclasses.replace(run, scale=scale, base_scale=base), data.vocab_size)

    widths = [round(base.width * r) for r in ccfg.width_ratios]
    depths = [max(1, round(base.depth * r)) for r in ccfg.depth_ratios]
    return _check(build_at, base.width, base.depth, widths, depths, ccfg, data,
                  min(ccfg.seq_len, run.scale.seq_len), run.table(), progress)


def coord_check(build_model: Callable[[int, int, int, int], Any], widths: list[int],
                depths: list[int], *, roles: Any, table: Union[str, RuleTable] = "completed_p",
                base_width: Optional[int] = None, base_depth: Optional[int] = None,
                hps: Any = None, factors: Any = None, data: Optional[DataConfig] = None,
                steps: int = 5, batch: int = 8, seq_len: int = 64, seeds: int = 2,
                tolerance: float = 0.2, progress: Optional[Callable[..., None]] = None
                ) -> CoordResult:
    """The coordinate check of any model builder, with the verdicts and plot of
    ``cpt coord-check``.

    ``build_model(width, depth, vocab_size, seq_len)`` returns a module whose forward(idx)
    returns logits (the signature of ``arch.factory``). Each model is parameterised with
    ``table`` through ``roles`` (`cp.parameterise`), its base HPs ``hps`` given at the base
    model (default: the smallest of ``widths`` and of ``depths``). The width axis is checked
    at the base depth and the depth axis at the base width, ``steps`` Adam steps of ``batch``
    sequences of ``seq_len`` tokens of ``data`` (default: the bundled corpus, byte-level),
    averaged over ``seeds``. ``result.passed``, ``result.failures()``, ``result.plot(path)``.
    """
    import torch

    from .parameterisation import parameterise
    from .runmodel import FactoryError, RunModel

    ccfg = CoordConfig(width_ratios=[float(w) for w in widths],
                       depth_ratios=[float(d) for d in depths], steps=steps, batch=batch,
                       seq_len=seq_len, seeds=seeds, tolerance=tolerance)
    problems = Problems()
    ccfg.check("coord_check", problems)
    if problems:
        raise ValueError("; ".join(f"{p.key}: {p.message} ({p.allowed})"
                                   for p in problems.items))
    data_ = TokenData(data or DataConfig())
    if isinstance(table, str):
        from .scaling import build_table

        table = build_table(table)
    bw, bd = base_width or min(widths), base_depth or min(depths)
    tokens = batch * seq_len * max(1, steps)

    def build_at(width: int, depth: int) -> RunModel:
        model = build_model(width, depth, data_.vocab_size, seq_len)
        if not isinstance(model, torch.nn.Module):
            raise FactoryError(f"build_model returned {type(model).__name__}, not a "
                               "torch.nn.Module")
        scale = {"width": width, "depth": depth, "batch": batch, "tokens": tokens,
                 "seq_len": seq_len}
        p = parameterise(model, table, base={**scale, "width": bw, "depth": bd}, scale=scale,
                         roles=roles, hps=hps, factors=factors)
        p.init_()
        return RunModel(model, p.tagged, p.tagged_modules(), p.settings, 0.0, p)

    return _check(build_at, bw, bd, sorted(widths), sorted(depths), ccfg, data_, seq_len, table,
                  progress)


def write_outputs(result: CoordResult, measurements: Path, fits: Path, plot_file: Path) -> None:
    """Write the measurements and fits (CSV) and the plot (PNG) to the given files."""
    import polars as pl

    for path in (measurements, fits, plot_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(result.rows).write_csv(measurements)
    pl.DataFrame(result.fits).write_csv(fits)
    plot(result, plot_file)


def plot(result: CoordResult, path: Path) -> None:
    """Size against the width or depth ratio, one panel per (axis, quantity), one line per
    group; judged groups that fail are drawn thick and red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharex="col")
    verdicts = {(f["axis"], f["group"], f["quantity"]): f for f in result.fits}
    cmap = plt.get_cmap("tab20")
    groups = sorted({r["group"] for r in result.rows})
    for col, axis in enumerate(("width", "depth")):
        for row, quantity in enumerate(("act", "delta")):
            ax = axes[row][col]
            for gi, group in enumerate(groups):
                pts = sorted((r["ratio"], r["value"]) for r in result.rows
                             if r["axis"] == axis and r["group"] == group
                             and r["quantity"] == quantity)
                if not pts:
                    continue
                f = verdicts[axis, group, quantity]
                style = {"fail": dict(lw=3, color="red"), "info": dict(lw=1, ls=":")}.get(
                    f["verdict"], dict(lw=1.5))
                style.setdefault("color", cmap(gi % 20))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                        label=f"{group} ({f['slope']:+.2f})", **style)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{quantity} vs {axis} ratio")
            ax.set_xlabel(f"{axis} ratio m_{'N' if axis == 'width' else 'L'}")
            ax.set_ylabel("RMS" if quantity == "act" else "RMS of change after steps")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=6, ncol=2)
    verdict = "PASS" if result.passed else f"FAIL ({len(result.failures())} judged slopes)"
    fig.suptitle(f"coordinate check: {result.parameterisation} -- {verdict}\n"
                 "(slopes in legend; dotted: reported, not judged; red: failed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
