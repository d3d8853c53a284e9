"""The machinery every spec section checks itself with: problems that name the key path, the
bad value and what is allowed; a structural pass that walks the schema's dataclasses (unknown
keys with a did-you-mean, types, required keys); keys that were renamed, read under their new
name with a deprecation note.

The sections themselves (their fields, docs, defaults and ``check`` methods) live with the code
they configure; `cp.spec` composes them. Pure Python, imports nothing from ``cp``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, Union


@dataclass
class Problem:
    key: str
    """Dotted key path (``models.target.width``); empty for the file as a whole."""
    message: str
    """What is wrong, with the bad value."""
    allowed: str = ""
    """What would be accepted."""


class SpecError(Exception):
    """A spec that cannot be run; ``problems`` lists every one found."""

    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        super().__init__(self.format())

    def format(self) -> str:
        lines = [f"{self.file}: {len(self.problems)} problem(s) in the spec"]
        for p in self.problems:
            lines.append(f"  {p.key or '<top>'}: {p.message}")
            if p.allowed:
                lines.append(f"      allowed: {p.allowed}")
        return "\n".join(lines)


def suggest(bad: object, allowed: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest allowed name, else ``""``."""
    close = difflib.get_close_matches(str(bad), list(allowed), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def short(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 400-digit number is not a message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...({len(text)} characters)"


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: int | float) -> bool:
    """Whether a number is finite as a float (a 400-digit integer is not: it overflows)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class Problems:
    """Collects the problems of one spec; sections report into it with the helpers below.

    Calling it (``problems(key, message, allowed)``) adds one problem: sections that may not
    import this module (`cp.scaling`) receive it as a plain callable.
    """

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def __call__(self, key: str, message: str, allowed: str = "") -> None:
        self.items.append(Problem(key, message, allowed))

    def __bool__(self) -> bool:
        return bool(self.items)

    def range(self, key: str, value: object, ok: bool, allowed: str) -> None:
        """A problem unless ``ok``: ``value`` is outside what ``allowed`` says."""
        if not ok:
            self(key, f"{short(value)} is out of range", allowed)

    def at_least(self, key: str, value: object, low: float, allowed: str = "") -> None:
        """Numbers only (a wrong type was reported by the structural pass)."""
        if is_number(value):
            self.range(key, value, is_finite(value) and value >= low, allowed or f">= {low:g}")

    def positive(self, key: str, value: object) -> None:
        if is_number(value):
            self.range(key, value, is_finite(value) and value > 0, "> 0")

    def nonempty(self, key: str, value: object, allowed: str) -> None:
        if isinstance(value, (list, dict)) and not value:
            self(key, "empty", allowed)

    def choice(self, key: str, value: str, allowed: Iterable[str], what: str = "name") -> bool:
        """Whether ``value`` is one of ``allowed``; a problem with a did-you-mean if not."""
        names = list(dict.fromkeys(allowed))
        if value in names:
            return True
        self(key, f"unknown {what} {short(value)}" + suggest(value, names), ", ".join(names))
        return False

    def unique(self, key: str, values: list, what: str) -> None:
        """A problem for each value listed twice."""
        seen: set = set()
        for i, v in enumerate(values):
            marker = repr(v)
            if marker in seen:
                self(f"{key}[{i}]", f"{what} {v!r} is listed twice", f"distinct {what}s")
            seen.add(marker)


# ---------------------------------------------------------------------------------------------
# Structural pass: unknown keys and types, walking the schema's dataclasses.


def type_name(tp: Any) -> str:
    if tp is Any:
        return "any value"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"mapping of {type_name(k)} to {type_name(v)}"
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    if tp is type(None):
        return "null"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(tp, str(tp))


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def coerce(value: Any, tp: Any, key: str, problems: Problems) -> Any:
    """``value`` checked against ``tp`` (recursively); returns it normalised (ints written as
    2e6 become ints, numbers written as strings such as "1e-3" become floats). A dataclass may
    list renamed keys in a ``RENAMED`` class attribute (old name -> new name): the old key is
    read as the new one, with a deprecation note on stderr."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        same_kind: Problems | None = None
        for a in args:
            if a is type(None):
                continue
            trial = Problems()
            out = coerce(value, a, key, trial)
            if not trial:
                return out
            if (a in (int, float) and is_number(value)) or (isinstance(a, type)
                                                            and isinstance(value, a)):
                same_kind = trial  # the alternative of the value's own type says what is wrong
        if same_kind is not None:
            problems.items += same_kind.items
        else:
            problems(key, f"{short(value)} is not a {type_name(tp)}")
        return value
    if origin is Literal:
        choices = list(typing.get_args(tp))
        if value not in choices:
            problems(key, f"{short(value)} is not allowed" + suggest(value, map(str, choices)),
                     ", ".join(repr(c) for c in choices))
        return value
    if dataclasses.is_dataclass(tp):
        return _coerce_dataclass(value, tp, key, problems)
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            problems(key, f"expected a mapping, got {short(value)}", type_name(tp))
            return value
        return {k: coerce(v, vt, f"{key}.{k}", problems) for k, v in value.items()}
    if origin is list:
        (et,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems(key, f"expected a list, got {short(value)}", type_name(tp))
            return value
        return [coerce(v, et, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            problems(key, f"{short(value)} is not true/false")
        return value
    if tp is int:
        return _coerce_int(value, key, problems)
    if tp is float:
        return _coerce_float(value, key, problems)
    if tp is str:
        if not isinstance(value, str):
            problems(key, f"{short(value)} is not a string")
        return value
    return value


def _coerce_dataclass(value: Any, tp: Any, key: str, problems: Problems) -> Any:
    if not isinstance(value, dict):
        problems(key, f"expected a mapping, got {short(value)}", type_name(tp))
        return value
    hints = typing.get_type_hints(tp)
    names = [f.name for f in dataclasses.fields(tp)]
    renamed: dict[str, str] = getattr(tp, "RENAMED", {})
    out = {}
    for k, v in value.items():
        sub = f"{key}.{k}" if key else str(k)
        if k in renamed:
            new = renamed[k]
            deprecated(sub, f"{key}.{new}" if key else new)
            if new in value:
                problems(sub, f"both {k!r} and its new name {new!r} are set", f"only {new!r}")
                continue
            k = new
        if k not in names:
            problems(sub, "unknown key" + suggest(k, names), ", ".join(names))
            continue
        out[k] = coerce(v, hints[k], f"{key}.{k}" if key else str(k), problems)
    for f in dataclasses.fields(tp):
        if _required(f) and f.name not in out and f.name not in value:
            problems(f"{key}.{f.name}" if key else f.name, "missing (required)",
                     type_name(hints[f.name]))
    return out


#: Integers beyond this are refused by the structural pass: no count in a spec comes near it,
#: and the checks' arithmetic (parameter counts, tokens) stays exact and fast below it.
MAX_INT = 10**18


def _coerce_int(value: Any, key: str, problems: Problems) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        problems(key, f"{short(value)} is too large", f"an integer of at most {MAX_INT:.0e}")
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            f = float(value.replace("_", ""))
        except ValueError:
            f = math.nan
        if math.isfinite(f) and f.is_integer():
            return int(f)
    if isinstance(value, bool) or not isinstance(value, int):
        problems(key, f"{short(value)} is not an integer")
    return value


def _coerce_float(value: Any, key: str, problems: Problems) -> Any:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems(key, f"{short(value)} is not a number")
        return value
    if not is_finite(value):
        problems(key, f"{short(value)} is not a finite number")
        return value
    return float(value)


_NOTED: set[tuple[str, str]] = set()


def deprecated(old: str, new: str) -> None:
    """Say once per process that spec key ``old`` is now ``new`` (and is read as such)."""
    if (old, new) in _NOTED:
        return
    _NOTED.add((old, new))
    print(f"cpt: note: spec key {old!r} is deprecated and read as {new!r}; rename it",
          file=sys.stderr)
