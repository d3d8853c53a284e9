"""A small document model for the report, written once and rendered twice: Markdown (for the
repository and MLflow) and a self-contained HTML page (figures inlined as data URIs, styles
inline, no scripts and nothing fetched from elsewhere).

Text may use two pieces of inline markup, ``**bold**`` and ```code```; everything else is
escaped in HTML. `Findings` collects the claims a report makes (verdict paragraphs and their
numbers) as its sections are written.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


def fmt(x: Any, digits: int = 4) -> str:
    """A number as a report shows it: ``-`` for missing, ``diverged`` for inf."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "diverged"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{digits}f}"


def decimals_for(half_width: Optional[float], at_least: int = 1) -> int:
    """Decimals that show a number to the precision its interval supports: two significant
    digits of the half-width (0.0456 -> 3 decimals, 0.23 -> 2)."""
    if half_width is None or not math.isfinite(half_width) or half_width <= 0:
        return 4
    return max(at_least, 1 - math.floor(math.log10(half_width)))


def fmt_interval(estimate: Optional[float], low: Optional[float], high: Optional[float],
                 signed: bool = False) -> str:
    """``0.123 [0.078, 0.169]`` with as many digits as the interval supports; the estimate
    alone (4 significant digits) when there is no interval."""
    if estimate is None or not math.isfinite(estimate):
        return "-"
    sign = "+" if signed else ""
    if low is None or high is None:
        return f"{estimate:{sign}.4g} (no interval: one seed)"
    d = decimals_for((high - low) / 2)
    return f"{estimate:{sign}.{d}f} [{low:{sign}.{d}f}, {high:{sign}.{d}f}]"


class Findings:
    """The claims found while writing a report's sections: verdict paragraphs and their
    numbers (``summary.json``). A metric from seeds has its interval beside it:
    ``<key>.ci_low`` and ``<key>.ci_high``."""

    def __init__(self) -> None:
        self.claims: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}

    def claim(self, what: str, text: str, **numbers: Any) -> None:
        self.claims.append({"claim": what, "text": text, **numbers})

    def metric(self, key: str, value: Optional[float], low: Optional[float] = None,
               high: Optional[float] = None) -> None:
        if value is not None and math.isfinite(value):
            self.metrics[key] = float(value)
            if low is not None and high is not None:
                self.metrics[f"{key}.ci_low"] = float(low)
                self.metrics[f"{key}.ci_high"] = float(high)


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Figure:
    path: Path
    """The PNG; Markdown links it relative to the document, HTML inlines it."""
    alt: str


@dataclass
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


Block = Union[Heading, Para, Figure, Table]


@dataclass
class Doc:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(Heading(level, text))

    def p(self, text: str) -> None:
        if text.strip():
            self.blocks.append(Para(text))

    def fig(self, path: Path, alt: str) -> None:
        if Path(path).exists():
            self.blocks.append(Figure(Path(path), alt))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if rows:
            self.blocks.append(Table(list(header), [list(r) for r in rows]))

    # -- rendering ---------------------------------------------------------------------------
    def markdown(self, base: Path) -> str:
        """Markdown; figure links relative to ``base`` (the folder the file is written to)."""
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if isinstance(b, Heading):
                out += [f"{'#' * (b.level + 1)} {b.text}", ""]
            elif isinstance(b, Para):
                out += [b.text, ""]
            elif isinstance(b, Figure):
                out += [f"![{b.alt}]({_relative(b.path, base)})", ""]
            elif isinstance(b, Table):
                out.append("| " + " | ".join(c.replace("|", "/") for c in b.header) + " |")
                out.append("|" + "---|" * len(b.header))
                out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |"
                        for r in b.rows]
                out.append("")
        return "\n".join(out)

    def html(self) -> str:
        """One HTML page with everything inside it."""
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for b in self.blocks:
            if isinstance(b, Heading):
                level = min(6, b.level + 1)
                body.append(f"<h{level}>{_inline(b.text)}</h{level}>")
            elif isinstance(b, Para):
                body.append(f"<p>{_inline(b.text)}</p>")
            elif isinstance(b, Figure):
                data = base64.b64encode(b.path.read_bytes()).decode("ascii")
                body.append(f'<figure><img src="data:image/png;base64,{data}" '
                            f'alt="{html.escape(b.alt)}"><figcaption>{_inline(b.alt)}'
                            "</figcaption></figure>")
            elif isinstance(b, Table):
                head = "".join(f"<th>{_inline(c)}</th>" for c in b.header)
                rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                               for r in b.rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
                            "</table>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body)
                + "\n</body></html>\n")


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
        "padding:0 1em;color:#222;line-height:1.45}"
        "h1,h2,h3{line-height:1.2}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:.92em}"
        "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%;height:auto}"
        "figcaption{color:#666;font-size:.85em}"
        "code{background:#f3f3f3;padding:0 .2em;border-radius:3px}")


def _inline(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def _relative(path: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()
