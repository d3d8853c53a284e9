"""Bounded YAML: a spec (or a study's saved ``spec.yaml``) is read with PyYAML's safe loader,
after three bounds that keep a hostile or broken file from hurting the reader:

- its size, checked before the file is read (a spec is a few kilobytes);
- alias expansion: anchors and aliases are fine, but the document they describe, counted with
  every alias expanded, must stay small (a kilobyte of nested aliases can describe billions of
  nodes, which the later steps -- OmegaConf, the structural pass -- would really build);
- a key repeated in one mapping is an error naming its line (YAML would keep the last value
  silently).

Errors are `SpecError`s naming the file and line. Pure Python over PyYAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from .schema import Problem, SpecError

MAX_SPEC_BYTES = 1_000_000
"""A spec file larger than this is refused unread (the largest shipped spec is ~10 KB)."""
MAX_NODES = 100_000
"""Nodes of a document with every alias expanded (a large spec has a few thousand)."""


def _line(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing a key that appears twice in one mapping."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # merged keys may be overridden: that is what a merge is for
                key = self.construct_object(key_node, deep=False)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base loader says so
                    continue
                if first is not None:
                    raise _Refused(f"{_line(key_node)}: key {key!r} appears twice in this "
                                   f"mapping (first at {_line(first)}); YAML would silently "
                                   "keep the last one")
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


class _Refused(Exception):
    """A document over a bound (its message says which)."""


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with aliases expanded (an alias is the node it names, shared in
    the graph); refuses past `MAX_NODES` and on an alias inside its own anchor."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise _Refused(f"{_line(node)}: an alias refers to itself (a recursive anchor)")
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                raise _Refused(f"its aliases expand to more than {MAX_NODES:,} nodes (at "
                               f"{_line(child)}); a spec needs a few thousand -- write the "
                               "values out, or use fewer nested aliases")
        on_path.discard(key)
        sizes[key] = total
        return total

    return size(root)


def loads_yaml(text: str, file: str = "<spec>") -> Any:
    """The document in ``text`` (None if empty), within the bounds above."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except _Refused as e:
        raise SpecError(file, [Problem("", f"refused: {e}")]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(file, [Problem("", f"not valid YAML: {where}"
                                       f"{getattr(e, 'problem', None) or e}")]) from None
    except RecursionError:
        raise SpecError(file, [Problem("", "refused: nested too deeply")]) from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, max_bytes: Optional[int] = None) -> Any:
    """The YAML file at ``path``, its size checked before it is read."""
    path = Path(path)
    limit = MAX_SPEC_BYTES if max_bytes is None else max_bytes
    try:
        size = path.stat().st_size
        if size > limit:
            raise SpecError(str(path), [Problem("", f"the file is {size:,} bytes; a spec is at "
                                                f"most {limit:,} bytes")])
        text = path.read_text()
    except OSError as e:
        raise SpecError(str(path), [Problem("", f"cannot read the file: {e.strerror}")]) from None
    except UnicodeDecodeError as e:
        raise SpecError(str(path), [Problem("", f"not UTF-8 text ({e.reason} at byte "
                                            f"{e.start})")]) from None
    return loads_yaml(text, str(path))
