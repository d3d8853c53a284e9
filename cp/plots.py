"""Figures (matplotlib, PNG). Each function takes plain data and a path, so the report, the
CLI and notebooks can all call them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


def _plt():
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
    the kind's value and ``loss`` (seed-averaged; inf = diverged, drawn as a cross at the top).
    ``optima`` maps (parameterisation, axis_value) -> fitted optimal value (a dot)."""
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
            div = [p[0] for p in pts if not math.isfinite(p[1])]
            ax.plot(div, [top] * len(div), "x", color=colour)
            if optima and (table, v) in optima and optima[table, v] is not None:
                ax.axvline(optima[table, v], color=colour, lw=0.8, ls="--", alpha=0.7)
        ax.set_xscale("log", base=2)
        ax.set_title(table)
        ax.set_xlabel(kind)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("final validation loss")
    if finite:
        axes[0][0].set_ylim(lo - 0.02 * (top - lo), top + 0.03 * (top - lo))
    fig.suptitle(f"{kind} transfer across {AXIS_LABEL.get(axis, axis)} "
                 "(x: diverged; dashed: fitted optimum)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_target_curves(curves: dict[str, list[tuple[float, float]]], path: Path, title: str,
                       speedups: Optional[dict[str, float]] = None,
                       reference: Optional[str] = None) -> None:
    """Validation loss against steps, one line per arm (seed means); the reference arm's final
    loss is drawn across, and each other arm's speedup is in its label."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for arm, curve in curves.items():
        label = arm
        if speedups and arm in speedups and not math.isnan(speedups[arm]):
            label += f" ({speedups[arm]:.2f}x vs {reference})"
        ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label=label)
    if curves.get(reference):
        ax.axhline(curves[reference][-1][1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    finals = [c[-1][1] for c in curves.values() if c]
    firsts = [c[min(1, len(c) - 1)][1] for c in curves.values() if c]
    if finals and firsts:
        ax.set_ylim(min(finals) - 0.05, max(firsts) + 0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
