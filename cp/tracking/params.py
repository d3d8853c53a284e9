"""What a training run looks like in MLflow, as plain data from its folder: its config
flattened to params, its curves and scalars as metrics, a readable name. No mlflow here."""

from __future__ import annotations

import math
from typing import Any


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts and lists as dotted keys with string values (``hps.lr``,
    ``factors.per_layer.lr.0``); an empty container is kept as ``{}`` / ``[]``."""
    if isinstance(obj, dict):
        if not obj and prefix:
            return {prefix: "{}"}
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, (list, tuple)):
        if not obj:
            return {prefix: "[]"}
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: str(obj)}


def run_params(config: dict[str, Any]) -> dict[str, str]:
    """A RunConfig (as a dict) flattened to params: scale, base scale, parameterisation, every
    base HP and per-module factor, schedule, data, training; plus the scale ratios m_N, m_L,
    m_B, m_D (``m.width``, ``m.depth``, ``m.batch``, ``m.tokens``). ``runtime`` and
    ``parallel`` are left out: they do not change a run's numbers."""
    params = flatten({k: v for k, v in config.items() if k not in ("runtime", "parallel")})
    scale, base = config.get("scale"), config.get("base_scale")
    if scale and base:
        from ..scaling import Scale, scale_ratios

        ratios = scale_ratios(Scale(**base), Scale(**scale))
        params.update({f"m.{axis}": f"{r:g}" for axis, r in ratios.items()})
    return params


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def run_metrics(result: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step): validation loss at every evaluation, train loss at every log point,
    and the run's scalars at its last step. Non-finite points (a diverged run's NaN) are left
    out; ``diverged`` says what happened."""
    out = [("val_loss", float(e["val_loss"]), int(e["step"]))
           for e in result.get("eval_curve", []) if _finite(e.get("val_loss"))]
    out += [("train_loss", float(loss), int(step))
            for step, loss in result.get("train_curve", []) if _finite(loss)]
    last = int(result.get("steps") or 0)
    finite_evals = [e["val_loss"] for e in result.get("eval_curve", [])
                    if _finite(e.get("val_loss"))]
    scalars: dict[str, Any] = {"final_val_loss": result.get("final_val_loss"),
               "best_val_loss": min(finite_evals) if finite_evals else None,
               "tokens_per_s": result.get("tokens_per_s"), "wall_s": result.get("wall_s"),
               "tokens": result.get("tokens"), "n_params": result.get("n_params"),
               "diverged": 1.0 if result.get("diverged") else 0.0}
    out += [(k, float(v), last) for k, v in scalars.items() if _finite(v)]
    return out


def fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def run_name(tags: dict[str, Any]) -> str:
    """A short readable name from a run's tags: ``sp width=64 lr=0.01 seed=0``."""
    parts = []
    for k, v in tags.items():
        if v is None or k in ("stage", "axis_value"):
            continue
        if k == "axis":
            parts.append("base" if v == "base" else f"{v}={fmt_value(tags.get('axis_value'))}")
        elif k in ("parameterisation", "model", "arm", "purpose"):
            parts.append(str(v))
        else:
            parts.append(f"{k}={fmt_value(v)}")
    return " ".join(parts)[:250] or "run"


def redacted(obj: Any, hidden: dict[str, str]) -> Any:
    """A copy of a nested dict with the values at ``hidden``'s dotted paths replaced by their
    text there (``${oc.env:X}``): what came from the environment, as it was written."""
    import copy

    out = copy.deepcopy(obj)
    for dotted, text in hidden.items():
        node = out
        *path, last = dotted.split(".")
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            node[last] = text
    return out
