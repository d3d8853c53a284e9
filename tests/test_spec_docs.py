"""The spec reference stays in step with the schema."""

import dataclasses
from pathlib import Path

from cp.spec import Spec
from cp.spec_docs import field_docs, reference

DOC = Path(__file__).parent.parent / "docs" / "spec.md"


def test_docs_spec_md_is_the_generated_reference():
    assert DOC.read_text() == reference() + "\n", (
        "docs/spec.md is stale: regenerate it with `cpt spec docs > docs/spec.md`")


def test_every_top_level_key_is_documented():
    docs = field_docs(Spec)
    for name in (f.name for f in dataclasses.fields(Spec)):
        assert docs.get(name), f"Spec.{name} has no docstring"
        assert f"| `{name}` |" in reference()
