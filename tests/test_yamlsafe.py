"""Bounded YAML: duplicate keys, alias expansion and file size are refused before anything
else reads the document."""

import pytest

from cp.schema import SpecError
from cp.yamlsafe import MAX_NODES, load_yaml, loads_yaml


def test_plain_yaml_loads_like_safe_load():
    assert loads_yaml("a: 1\nb: [x, {c: 2.5}]\n") == {"a": 1, "b": ["x", {"c": 2.5}]}
    assert loads_yaml("") is None


def test_anchors_and_merge_keys_within_budget_are_fine():
    text = "base: &b {lr: 0.01, eps: 1.0e-8}\nother:\n  <<: *b\n  lr: 0.02\n"
    assert loads_yaml(text)["other"] == {"lr": 0.02, "eps": 1.0e-8}


def test_a_repeated_key_names_its_line():
    with pytest.raises(SpecError, match=r"line 3.*'a' appears twice"):
        loads_yaml("a: 1\nb: 2\na: 3\n", "x.yaml")


def test_alias_expansion_beyond_the_budget_is_refused():
    side = 50
    text = f"a: &a [{', '.join(['x'] * side)}]\n"
    text += f"b: &b [{', '.join(['*a'] * side)}]\n"
    text += f"c: [{', '.join(['*b'] * side)}]\n"
    assert side ** 3 > MAX_NODES
    with pytest.raises(SpecError, match="aliases expand"):
        loads_yaml(text)


def test_a_recursive_alias_is_refused():
    with pytest.raises(SpecError, match="refers to itself"):
        loads_yaml("a: &a [1, *a]\n")


def test_the_file_size_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 2_000_000 + "\n")
    with pytest.raises(SpecError, match="bytes"):
        load_yaml(path)
