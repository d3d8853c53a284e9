"""A training run as MLflow params: every base HP and per-module factor, the scale ratios,
nothing that does not change the numbers."""

from cp.scaling import Factors
from cp.tracking import run_params
from tests.conftest import tiny_run


def test_params_hold_every_base_hp_and_factor_of_a_run():
    cfg = tiny_run(factors=Factors(per_type={"lr": {"attn_q": 2.0}}, per_layer={"lr": [1.0, 0.5]}))
    params = run_params(cfg.to_dict())
    for kind in ("lr", "eps", "weight_decay", "beta1", "beta2", "init_std", "multiplier"):
        assert params[f"hps.{kind}"] == str(getattr(cfg.hps, kind))
    assert params["factors.per_type.lr.attn_q"] == "2.0"
    assert params["factors.per_layer.lr.1"] == "0.5"
    assert params["m.tokens"] == "1" and params["m.batch"] == "1"
    assert params["scale.width"] == "32" and params["m.width"] == "1"
    assert params["parameterisation.name"] == "completed_p"
    assert not any(k.startswith(("runtime.", "parallel.")) for k in params)  # nor do these
