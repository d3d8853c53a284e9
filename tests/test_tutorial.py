"""docs/your-model.md: its tutorial runs as written (so the docs cannot rot)."""

import math
import re
from pathlib import Path

import pytest

DOC = Path(__file__).parent.parent / "docs" / "your-model.md"


def tutorial() -> str:
    """The first Python block of the page: the tutorial."""
    return re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)


def test_the_tutorial_is_20_to_30_lines_of_code():
    lines = [x for x in tutorial().splitlines() if x.strip()]
    assert 20 <= len(lines) <= 30, len(lines)


@pytest.mark.slow
def test_the_tutorial_trains_a_parameterised_llama_and_saves_its_parameterisation(
        tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="transformers is an optional extra")
    import torch

    import cp

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(tutorial(), str(DOC), "exec"), scope)
    assert scope["loss"].item() < math.log(256) - 1  # it learnt from the bytes
    p = scope["p"]
    assert p.width == 128 and p.depth == 4
    assert len(p.handles) == 2 * 4  # attn_out and mlp_down of each block: x m_L^-1 = 1/2
    again = cp.load_parameterisation("parameterisation.json", scope["model"])
    assert [g["lr"] for g in again.param_groups()] == [g["lr"] for g in p.param_groups()]
