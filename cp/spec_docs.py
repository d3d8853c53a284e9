"""The spec reference (docs/spec.md), generated from the schema's dataclasses: every key, its
type, its default and the docstring written under its field, and the keys renamed since (still
read, with a note). ``cpt spec docs`` prints it; a test keeps the committed file in step with
the code."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
import typing
from typing import Any

from .schema import type_name
from .spec import Spec

#: Top-level keys listed first (the study's headline), the others in schema order.
HEADLINE = ("name", "description", "models", "base")


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under the fields of a dataclass (and of its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        cls_def = tree.body[0]
        assert isinstance(cls_def, ast.ClassDef)  # the source of a class is its definition
        body = cls_def.body
        for node, nxt in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(section)"
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return ", ".join(v.name for v in value) if hasattr(value[0], "name") else "..."
    return f"`{value!r}`" if value not in ({}, []) else f"`{value}`"


def _section_type(tp: Any) -> Any:
    """The dataclass inside ``tp`` (a field, a dict value or a list element), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = typing.get_args(tp)
    if typing.get_origin(tp) is dict and dataclasses.is_dataclass(args[1]):
        return args[1]
    if typing.get_origin(tp) is list and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def reference() -> str:
    """The spec reference in Markdown."""
    out = ["# Spec reference", "",
           "Generated from the schema in `cp/spec.py` (and the sections it composes, each "
           "defined beside the code it configures) by `cpt spec docs`; a test keeps this file "
           "in step with the code.", "",
           "A spec is a YAML mapping. Unknown keys, wrong types and out-of-range values are "
           "reported before any work, each with its key path and what is allowed. "
           "`${other.key}` interpolations are resolved; numbers may be written `2_000_000` "
           "or `2e6`. Any key can be set from the command line with `--set key=value`.", ""]
    seen: set[type] = set()
    queue: list[tuple[str, type]] = [("", Spec)]
    while queue:
        path, cls = queue.pop(0)
        if cls in seen and path:
            continue
        seen.add(cls)
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        title = f"`{path}`" if path else "Top level"
        out += [f"## {title}", "", " ".join((cls.__doc__ or "").split()), "",
                "| key | type | default | meaning |", "|---|---|---|---|"]
        fields = list(dataclasses.fields(cls))
        if not path:
            fields.sort(key=lambda f: HEADLINE.index(f.name) if f.name in HEADLINE
                        else len(HEADLINE))
        for f in fields:
            tp = hints[f.name]
            sub = _section_type(tp)
            shown = "section" if dataclasses.is_dataclass(tp) else type_name(tp)
            if sub is not None and not dataclasses.is_dataclass(tp):
                inner = "<name>" if typing.get_origin(tp) is dict else "[i]"
                shown = (f"mapping of name to `{f.name}.{inner}`" if inner == "<name>"
                         else f"list of `{f.name}{inner}`")
            key = f"{path}.{f.name}" if path else f.name
            out.append(f"| `{key}` | {shown} | {_default(f)} | "
                       f"{docs.get(f.name, '').replace('|', '/')} |")
            if sub is not None:
                suffix = "" if dataclasses.is_dataclass(tp) else (
                    ".<name>" if typing.get_origin(tp) is dict else "[i]")
                queue.append((key + suffix, sub))
        renamed = getattr(cls, "RENAMED", {})
        if renamed:
            out += ["", "Renamed (the old key is still read, with a note): " + ", ".join(
                f"`{old}` -> `{new}`" for old, new in renamed.items()) + "."]
        out.append("")
    return "\n".join(out)
