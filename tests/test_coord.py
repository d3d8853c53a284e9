"""The coordinate check: Complete(d)P keeps coordinates flat across width and depth; SP does not."""

import pytest

from cp.coord import CoordConfig, check_run, write_outputs
from cp.spec import load_spec


@pytest.fixture(scope="module")
def demo_proxy():
    return load_spec("specs/demo.yaml").run_config("proxy")


@pytest.fixture(scope="module")
def results(demo_proxy):
    import dataclasses

    out = {}
    for name in ("completed_p", "sp"):
        run = dataclasses.replace(demo_proxy, parameterisation=dataclasses.replace(
            demo_proxy.parameterisation, name=name, alpha=None))
        out[name] = check_run(run, CoordConfig())
    return out


def test_the_check_spans_at_least_4_widths_and_4_depths_over_8x(results):
    rows = results["completed_p"].rows
    for axis in ("width", "depth"):
        mults = sorted({r["ratio"] for r in rows if r["axis"] == axis})
        assert len(mults) >= 4 and mults[-1] / mults[0] >= 8


def test_completed_p_passes_on_the_same_models_where_sp_fails(results):
    assert results["completed_p"].passed, results["completed_p"].failures()
    assert not results["sp"].passed


def test_sp_fails_because_updates_grow_with_width_and_the_residual_with_depth(results):
    fails = {(f["axis"], f["group"], f["quantity"]): f["slope"] for f in results["sp"].failures()}
    assert fails[("width", "mlp_up", "delta")] > 0.5
    assert fails[("width", "logits", "delta")] > 0.3
    assert fails[("depth", "residual", "act")] > 0.3


def test_completed_p_slopes_are_flat_on_every_judged_coordinate(results):
    for f in results["completed_p"].fits:
        if f["verdict"] != "info":
            assert abs(f["slope"] - f["expected"]) < 0.2, f


def test_completed_p_keeps_gpt2s_architecture_flat_too(demo_proxy):
    """LayerNorm and a learned position table (in the embedding group) need no rule of
    their own: the same table passes the check on them."""
    import dataclasses

    gpt2 = dataclasses.replace(demo_proxy.arch, mlp="gelu", mlp_ratio=4.0, qk_norm=False,
                               norm="layernorm", fused_qkv=True, positions="learned")
    result = check_run(dataclasses.replace(demo_proxy, arch=gpt2), CoordConfig())
    assert result.passed, result.failures()
    assert {"embedding", "attn_norm", "mlp_up", "residual"} <= {r["group"] for r in result.rows}


def test_outputs_are_a_table_and_a_png(results, tmp_path):
    paths = {"measurements": tmp_path / "m.csv", "fits": tmp_path / "f.csv",
             "plot": tmp_path / "p.png"}
    write_outputs(results["sp"], paths["measurements"], paths["fits"], paths["plot"])
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "slope" in paths["fits"].read_text().splitlines()[0]


@pytest.mark.slow
def test_cp_coord_check_passes_a_llama_under_completed_p_and_fails_it_under_sp(tmp_path):
    """The same check on a Hugging Face model through its role map (cp.coord_check)."""
    import cp

    hf = pytest.importorskip("tests.hf_models", reason="transformers is an optional extra")
    widths, depths = [32, 64, 128, 256], [2, 4, 8, 16]
    good = cp.coord_check(hf.llama, widths, depths, roles="llama", table="completed_p",
                          hps={"lr": 0.01})
    assert good.passed, good.failures()
    assert {r["group"] for r in good.rows} >= {"attn_q", "mlp_down", "logits", "residual",
                                               "embedding"}
    bad = cp.coord_check(hf.llama, widths, depths, roles="llama", table="sp", hps={"lr": 0.01},
                         seeds=1)
    fails = {(f["axis"], f["group"], f["quantity"]): f["slope"] for f in bad.failures()}
    assert fails[("width", "mlp_up", "delta")] > 0.5      # SP's updates grow with width
    assert fails[("depth", "residual", "act")] > 0.3      # and its residual stream with depth
    plot = good.plot(tmp_path / "llama.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
