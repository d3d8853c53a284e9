"""Figures (matplotlib, PNG). Each function takes plain data and a path, so the report, the
CLI and notebooks can all call them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Optional


def _plt() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


AXIS_LABEL = {"width": "width", "depth": "depth", "batch": "batch (sequences)",
              "tokens": "tokens (horizon)"}


def plot_transfer_curves(rows: Sequence[dict], axis: str, path: Path, kind: str = "lr",
                         optima: Optional[dict] = None) -> None:
    """The classic muP figure: final loss against ``kind`` (log2 x axis), one line per value
    of ``axis``, one panel per parameterisation. ``rows`` hold parameterisation, axis_value,
    the kind's value and ``loss`` (seed-averaged; inf = diverged, drawn as a cross at the top),
    and optionally ``loss_min``/``loss_max`` over seeds (error bars). ``optima`` maps
    (parameterisation, axis_value) -> the optimal value, or (value, low, high) with its
    interval (a dashed line and a shaded band)."""
    plt = _plt()
    tables = list(dict.fromkeys(r["parameterisation"] for r in rows))
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 4.2), squeeze=False,
                             sharey=True)
    finite = [r["loss"] for r in rows if math.isfinite(r["loss"])]
    if finite:
        lo, hi = min(finite), max(finite)
        top = hi + 0.1 * (hi - lo + 1e-9)
    else:
        lo, top = 0.0, 1.0
    cmap = plt.get_cmap("viridis")
    for ax, table in zip(axes[0], tables, strict=True):
        values = sorted({r["axis_value"] for r in rows if r["parameterisation"] == table})
        for i, v in enumerate(values):
            pts = sorted((r[kind], r["loss"]) for r in rows
                         if r["parameterisation"] == table and r["axis_value"] == v)
            colour = cmap(i / max(1, len(values) - 1))
            xs = [p[0] for p in pts if math.isfinite(p[1])]
            ys = [p[1] for p in pts if math.isfinite(p[1])]
            ax.plot(xs, ys, marker="o", ms=3, color=colour, label=f"{axis}={v}")
            spread = sorted((r[kind], r["loss_min"], r["loss_max"]) for r in rows
                            if r["parameterisation"] == table and r["axis_value"] == v
                            and r.get("loss_min") is not None and math.isfinite(r["loss"])
                            and r["loss_max"] > r["loss_min"])
            if spread:
                ax.vlines([p[0] for p in spread], [p[1] for p in spread],
                          [p[2] for p in spread], color=colour, lw=0.8, alpha=0.6)
            div = [p[0] for p in pts if not math.isfinite(p[1])]
            ax.plot(div, [top] * len(div), "x", color=colour)
            mark = (optima or {}).get((table, v))
            mark = mark if isinstance(mark, tuple) else (mark, None, None)
            if mark[0] is not None:
                ax.axvline(mark[0], color=colour, lw=0.8, ls="--", alpha=0.7)
                if mark[1] is not None and mark[2] is not None:
                    ax.axvspan(mark[1], mark[2], color=colour, alpha=0.08, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_title(table)
        ax.set_xlabel(kind)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("final validation loss")
    if finite:
        axes[0][0].set_ylim(lo - 0.02 * (top - lo), top + 0.03 * (top - lo))
    fig.suptitle(f"{kind} transfer across {AXIS_LABEL.get(axis, axis)} "
                 "(x: diverged; dashed: optimum, shaded: its 95% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_target_curves(curves: dict[str, list[tuple[float, float]]], path: Path, title: str,
                       speedups: Optional[dict[str, float]] = None,
                       reference: Optional[str] = None,
                       bands: Optional[dict[str, tuple[list, list, list]]] = None,
                       marks: Optional[dict[str, Optional[float]]] = None) -> None:
    """Validation loss against steps, one line per arm (seed means); the reference arm's final
    loss is drawn across, and each other arm's speedup is in its label. ``bands``: arm ->
    (steps, lowest, highest) over seeds, shaded. ``marks``: arm -> the step at which it
    reaches the reference's final loss, marked on that line (the speedup's numerator is the
    reference's last step, its denominator this step)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    ref_curve = curves.get(reference) if reference is not None else None
    for i, (arm, curve) in enumerate(curves.items()):
        colour = f"C{i}"
        label = arm
        if speedups and arm in speedups and not math.isnan(speedups[arm]):
            label += f" ({speedups[arm]:.2f}x vs {reference})"
        ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label=label,
                color=colour)
        if bands and arm in bands and len(bands[arm][0]) > 1:
            steps, lo, hi = bands[arm]
            ax.fill_between(steps, lo, hi, color=colour, alpha=0.15, lw=0)
        if marks and arm in marks and marks[arm] is not None and ref_curve:
            level = ref_curve[-1][1]
            ax.plot([marks[arm]], [level], marker="v", ms=9, color=colour, ls="none")
            ax.axvline(marks[arm], color=colour, lw=0.8, ls=":")
    if ref_curve:
        ax.axhline(ref_curve[-1][1], color="grey", lw=0.8, ls="--",
                   label=f"{reference}'s final loss")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    finals = [c[-1][1] for c in curves.values() if c]
    firsts = [c[min(1, len(c) - 1)][1] for c in curves.values() if c]
    if finals and firsts:
        ax.set_ylim(min(finals) - 0.05, max(firsts) + 0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_optimum_shift(optima: Sequence[dict], shifts: Sequence[dict], path: Path,
                       kind: str = "lr") -> None:
    """The optimal ``kind`` against each axis's value (log-log, base 2), one panel per axis,
    one line per parameterisation, with 95% intervals as error bars: flat lines are transfer
    that holds. Hollow markers are points whose lowest loss is at the grid's edge (the optimum
    may lie beyond)."""
    plt = _plt()
    axes_names = list(dict.fromkeys(r["axis"] for r in optima))
    fig, axes = plt.subplots(1, max(1, len(axes_names)), squeeze=False,
                             figsize=(4.6 * max(1, len(axes_names)), 3.8))
    tables = list(dict.fromkeys(r["parameterisation"] for r in optima))
    slope = {(r["parameterisation"], r["axis"]): r["shift_per_doubling"] for r in shifts}
    for ax, axis in zip(axes[0], axes_names, strict=False):
        for i, table in enumerate(tables):
            pts = sorted((r["axis_value"], r["opt"], not r["at_edge"], r.get("opt_low"),
                          r.get("opt_high"))
                         for r in optima if r["axis"] == axis and r["parameterisation"] == table
                         and r["opt"] is not None)
            if not pts:
                continue
            s = slope.get((table, axis))
            label = table + (f": {s:+.2f} octaves / doubling" if s is not None else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{i}", label=label)
            for x, y, ok, lo, hi in pts:
                ax.plot([x], [y], "o", color=f"C{i}", mfc=f"C{i}" if ok else "white")
                if lo is not None and hi is not None:
                    ax.vlines([x], [lo], [hi], color=f"C{i}", lw=1.2, alpha=0.7)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel(AXIS_LABEL.get(axis, axis))
        ax.set_ylabel(f"optimal base {kind}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"optimal {kind} along each axis with 95% intervals\n(flat: transfer "
                 "holds; hollow: at the grid's edge)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_multiplier_heatmap(dims: Sequence[str], x: Sequence[float], path: Path,
                            title: str = "") -> None:
    """The per-module multipliers a search found, as log2 multipliers per (type, layer): type
    factor + layer factor, one panel per HP kind (dims are named ``kind.group`` and
    ``kind.layerN``). Groups outside the blocks (embedding, final norm, unembedding) have one
    value, in the "no layer" column."""
    import numpy as np

    from .scaling import BLOCK_GROUPS

    plt = _plt()
    kinds = list(dict.fromkeys(d.split(".", 1)[0] for d in dims))
    panels = []
    for kind in kinds:
        types: dict[str, float] = {}
        layers: dict[int, float] = {}
        for d, v in zip(dims, x, strict=True):
            k, key = d.split(".", 1)
            if k != kind:
                continue
            if key.startswith("layer") and key[5:].isdigit():
                layers[int(key[5:])] = float(v)
            else:
                types[key] = float(v)
        n_layers = max(layers) + 1 if layers else 1
        outside = any(g not in BLOCK_GROUPS for g in types)
        cols = (["no layer"] if outside else []) + (
            [f"layer {i}" for i in range(n_layers)] if layers else ["blocks"])
        grid = np.full((len(types), len(cols)), np.nan)
        first = 1 if outside else 0
        for i, (g, t) in enumerate(types.items()):
            if g in BLOCK_GROUPS:
                for j in range(n_layers):
                    grid[i, first + j] = t + layers.get(j, 0.0)
            else:
                grid[i, 0] = t
        panels.append((kind, list(types), cols, grid))
    finite = [abs(v) for _, _, _, g in panels for v in g.flat if np.isfinite(v)]
    vmax = max([*finite, 1e-9])
    n_rows = max([len(rows) for _, rows, _, _ in panels] + [1])
    fig, axes = plt.subplots(1, max(1, len(panels)), squeeze=False,
                             figsize=(1.2 + 4.0 * max(1, len(panels)), 1.2 + 0.32 * n_rows))
    image = None
    for ax, (kind, rows, cols, grid) in zip(axes[0], panels, strict=False):
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * vmax else "black")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(f"{kind}: log2 multiplier")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label="log2 multiplier (0: global optimum)",
                     shrink=0.9)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_search_progress(losses: Sequence[Optional[float]], path: Path, title: str) -> None:
    """Each trial's loss and the best so far, against the trial number."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    best, trace = math.inf, []
    for v in losses:
        if v is not None and math.isfinite(v):
            best = min(best, v)
        trace.append(best)
    xs = list(range(1, len(losses) + 1))
    ok = [(x, v) for x, v in zip(xs, losses, strict=True) if v is not None and math.isfinite(v)]
    ax.scatter([p[0] for p in ok], [p[1] for p in ok], s=12, alpha=0.5, label="trial")
    ax.step(xs, trace, where="post", color="C1", label="best so far")
    if ok:
        lo = min(p[1] for p in ok)
        ax.set_ylim(lo - 0.02, min(max(p[1] for p in ok), lo + 1.0) + 0.02)
    ax.set_xlabel("trial")
    ax.set_ylabel("final validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
