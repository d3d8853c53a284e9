"""Rule tables and resolve: base HPs at the base scale, composition, and the paper's exponents."""

import dataclasses
import math

import pytest

from cp.scaling import (
    BLOCK_GROUPS,
    GAIN_GROUPS,
    GROUPS,
    TABLES,
    Factors,
    HPs,
    Scale,
    build_table,
    layer_factors,
    resolve,
)

BASE = Scale(width=64, depth=4, batch=16, tokens=2_000_000, seq_len=128)
HP = HPs(lr=3e-3, eps=1e-8, weight_decay=0.1, beta1=0.9, beta2=0.95, init_std=0.02)
SCALES = [
    Scale(width=512, depth=16, batch=64, tokens=32_000_000, seq_len=128),  # rho = 1/4
    Scale(width=128, depth=2, batch=128, tokens=4_000_000, seq_len=128),   # rho = 4
    Scale(width=256, depth=8, batch=8, tokens=2_000_000, seq_len=256),     # rho = 1 (tokens/step)
]


def by_key(settings):
    return {(s.group, s.layer): s for s in settings}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_returns_the_base_hps_at_the_base_scale(name):
    table = build_table(name)
    for s in resolve(table, BASE, BASE, HP):
        base_wd = 0.0 if s.group in GAIN_GROUPS else HP.weight_decay
        assert s.lr == pytest.approx(HP.lr)
        assert s.eps == pytest.approx(HP.eps)
        assert s.weight_decay == pytest.approx(base_wd)
        assert (s.beta1, s.beta2) == pytest.approx((HP.beta1, HP.beta2))
        assert s.multiplier == pytest.approx(1.0)
        assert s.init_std == (None if s.group in GAIN_GROUPS else pytest.approx(HP.init_std))


@pytest.mark.parametrize("name", sorted(TABLES))
@pytest.mark.parametrize("a,b", [(SCALES[0], SCALES[1]), (SCALES[1], SCALES[2]),
                                 (SCALES[2], SCALES[0])])
def test_resolving_base_to_a_then_a_to_b_equals_base_to_b(name, a, b):
    table = build_table(name)
    via_a = resolve(table, BASE, a, HP)
    # A's settings (identical across A's layers) become the base HPs at scale A.
    hps_at_a = HPs(groups={s.group: {k: v for k, v in s.as_dict().items()
                                     if k not in ("group", "layer") and v is not None}
                           for s in via_a})
    direct = by_key(resolve(table, BASE, b, HP))
    for s in resolve(table, a, b, hps_at_a):
        d = direct[s.group, s.layer]
        for kind in ("init_std", "multiplier", "lr", "eps", "weight_decay", "beta1", "beta2"):
            want = getattr(d, kind)
            got = getattr(s, kind)
            assert got == (None if want is None else pytest.approx(want, rel=1e-12)), (
                s.group, kind)


def paper_section_10(group: str, kind: str, m_n: float, m_l: float, rho: float,
                     alpha: float) -> float:
    """The factor on the base value, written out from paper-notes section 10 (independently of
    cp/scaling/tables.py). For betas: the factor on (1 - beta)."""
    hidden = group in ("attn_q", "attn_k", "attn_v", "attn_out", "mlp_up", "mlp_gate",
                       "mlp_down")
    block_gain = group in ("attn_norm", "mlp_norm")
    qk_gain = group in ("qk_norm_q", "qk_norm_k")
    if kind == "init_std":
        return {True: m_n ** -0.5}.get(hidden, m_n ** -1 if group == "unembedding" else 1.0)
    if kind == "multiplier":
        return m_l ** -alpha if group in ("attn_out", "mlp_down") else 1.0
    if kind == "lr":
        if hidden:
            f = m_n ** -1 * m_l ** (alpha - 1)
        elif block_gain or qk_gain:
            f = m_l ** (alpha - 1)
        elif group == "unembedding":
            f = m_n ** -1
        else:  # embedding, final norm
            f = 1.0
        return f * rho ** 0.5
    if kind == "eps":
        f = {"embedding": m_n ** -1, "final_norm": m_n ** -1, "unembedding": 1.0}.get(group)
        if f is None:
            f = m_l ** -alpha if qk_gain else m_n ** -1 * m_l ** -alpha
        return f * rho ** -0.5
    if kind == "weight_decay":
        return (m_n if hidden or group == "unembedding" else 1.0) * rho ** 0.5
    return rho  # beta1, beta2: (1 - beta) x rho


@pytest.mark.parametrize("alpha", [0.5, 0.75, 1.0])
@pytest.mark.parametrize("scale", SCALES)
def test_completed_p_applies_each_exponent_of_paper_notes_section_10(alpha, scale):
    m_n, m_l = scale.width / BASE.width, scale.depth / BASE.depth
    rho = (scale.tokens_per_step / BASE.tokens_per_step) / (scale.tokens / BASE.tokens)
    hp = HPs(lr=3e-3, eps=1e-8, weight_decay=0.1, beta1=0.99, beta2=0.999, init_std=0.02,
             groups={"gains": {"weight_decay": 0.05}})  # nonzero, so their factor shows
    settings = resolve(build_table("completed_p", alpha=alpha), BASE, scale, hp)
    assert {s.group for s in settings} == set(GROUPS)
    for s in settings:
        for kind in ("init_std", "multiplier", "lr", "eps", "weight_decay"):
            value = getattr(s, kind)
            if value is None:
                assert kind == "init_std" and s.group in GAIN_GROUPS
                continue
            expected = hp.value(s.group, kind) * paper_section_10(s.group, kind, m_n, m_l,
                                                                  rho, alpha)
            assert value == pytest.approx(expected, rel=1e-12), (s.group, kind)
        for kind in ("beta1", "beta2"):
            base = getattr(hp, kind)
            expected = 1 - paper_section_10(s.group, kind, m_n, m_l, rho, alpha) * (1 - base)
            assert getattr(s, kind) == pytest.approx(expected, rel=1e-12), (s.group, kind)


def test_embedding_epsilon_fix_and_readout_absorption_distinguish_completed_p_from_completep():
    wide = dataclasses.replace(BASE, width=BASE.width * 8)
    old = by_key(resolve(build_table("completep"), BASE, wide, HP))
    new = by_key(resolve(build_table("completed_p"), BASE, wide, HP))
    assert old["embedding", None].eps == pytest.approx(HP.eps)          # CompleteP's bug
    assert new["embedding", None].eps == pytest.approx(HP.eps / 8)      # the fix
    assert old["unembedding", None].multiplier == pytest.approx(1 / 8)  # muP output multiplier
    assert new["unembedding", None].multiplier == 1.0                   # absorbed ...
    assert new["unembedding", None].init_std == pytest.approx(HP.init_std / 8)  # ... into init
    assert new["unembedding", None].lr == pytest.approx(HP.lr / 8)              # ... and lr
    assert new["unembedding", None].eps == pytest.approx(HP.eps)


def test_sp_scales_nothing_but_fan_in_init():
    big = SCALES[0]
    for s in resolve(build_table("sp"), BASE, big, HP):
        assert (s.lr, s.eps, s.multiplier) == (HP.lr, HP.eps, 1.0)
        if s.group in BLOCK_GROUPS and s.group not in GAIN_GROUPS and "norm" not in s.group:
            assert s.init_std == pytest.approx(HP.init_std * (big.width / BASE.width) ** -0.5)


@pytest.mark.parametrize("form", ["linear", "power"])
@pytest.mark.parametrize("batch_mult", [1 / 64, 1 / 8, 1, 8, 64, 4096])
def test_betas_stay_inside_zero_one_for_any_batch(form, batch_mult):
    table = dataclasses.replace(build_table("completed_p"), beta_form=form)
    scale = dataclasses.replace(BASE, batch=max(1, round(BASE.batch * batch_mult)),
                                seq_len=BASE.seq_len if batch_mult >= 1 / 16 else 2)
    for beta1 in (0.5, 0.9, 0.999):
        for s in resolve(table, BASE, scale, HPs(beta1=beta1, beta2=0.9999)):
            assert 0 < s.beta1 < 1 and 0 < s.beta2 < 1


def test_power_and_linear_beta_forms_agree_to_first_order():
    scale = dataclasses.replace(BASE, batch=BASE.batch * 2)  # rho = 2
    lin = resolve(build_table("completed_p"), BASE, scale, HPs(beta2=0.9999))[0].beta2
    pw = resolve(dataclasses.replace(build_table("completed_p"), beta_form="power"), BASE,
                 scale, HPs(beta2=0.9999))[0].beta2
    assert lin == pytest.approx(pw, abs=1e-7)


def test_override_replaces_only_the_named_exponent():
    table = build_table("completed_p", rules={"hidden": {"weight_decay": {"depth": "1 - alpha"}},
                                              "qk_norms": {"eps": {"width": -1}}})
    deep = dataclasses.replace(BASE, depth=BASE.depth * 4, width=BASE.width * 2)
    s = by_key(resolve(dataclasses.replace(table, alpha=0.5), BASE, deep, HP))
    ref = by_key(resolve(build_table("completed_p", alpha=0.5), BASE, deep, HP))
    assert s["mlp_up", 0].weight_decay == pytest.approx(ref["mlp_up", 0].weight_decay * 4 ** 0.5)
    assert s["mlp_up", 0].lr == ref["mlp_up", 0].lr
    assert s["qk_norm_q", 0].eps == pytest.approx(ref["qk_norm_q", 0].eps / 2)


def test_a_new_table_can_be_derived_from_a_built_in_one():
    table = build_table("my_p", base="sp", rules={"hidden": {"lr": {"width": -1}}})
    assert table.name == "my_p"
    wide = dataclasses.replace(BASE, width=BASE.width * 4)
    s = by_key(resolve(table, BASE, wide, HP))
    assert s["attn_q", 0].lr == pytest.approx(HP.lr / 4)
    assert s["embedding", None].lr == HP.lr


def test_unknown_table_or_group_is_rejected():
    with pytest.raises(ValueError, match="unknown parameterisation"):
        build_table("nope")
    with pytest.raises(ValueError, match="unknown group"):
        build_table("completed_p", rules={"atn_q": {"lr": {"width": 1}}})


def test_per_module_factors_act_per_type_and_per_layer():
    mult = Factors(per_type={"lr": {"attn_q": 2.0, "hidden": 0.5}},
                       per_layer={"lr": [1.0, 3.0], "beta1": [2.0]})
    s = by_key(resolve(build_table("completed_p"), BASE, BASE, HP, mult))
    assert s["attn_q", 0].lr == pytest.approx(HP.lr * 2.0)      # the group beats its set
    assert s["mlp_up", 0].lr == pytest.approx(HP.lr * 0.5)
    assert s["mlp_up", BASE.depth - 1].lr == pytest.approx(HP.lr * 0.5 * 3.0)
    assert s["embedding", None].lr == HP.lr                     # no layer factor outside blocks
    assert s["attn_q", 1].beta1 == pytest.approx(1 - 2 * (1 - HP.beta1))  # acts on 1 - beta


def test_layer_factors_keep_first_and_last_layer_when_depth_changes():
    factors = [2.0, 0.5, 1.5, 4.0]
    for depth in (1, 2, 3, 4, 7, 32):
        out = layer_factors(factors, depth)
        assert len(out) == depth
        if depth > 1:
            assert out[0] == pytest.approx(2.0) and out[-1] == pytest.approx(4.0)
    assert layer_factors(factors, 4) == pytest.approx(factors)
    assert layer_factors(factors, 1) == pytest.approx([math.prod(factors) ** 0.25])
    # Log-linear: the midpoint between two factors is their geometric mean.
    assert layer_factors([1.0, 4.0], 3)[1] == pytest.approx(2.0)
