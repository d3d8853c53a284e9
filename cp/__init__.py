"""cp: declarative experiment specs for hyperparameter transfer (Complete(d)P) in LLM training.

Rooms, bottom floor first: `cp.scaling` (rule tables, resolve), `cp.model`, `cp.optim`,
`cp.data`, `cp.train`, `cp.coord`, `cp.spec`, `cp.cli`. Importing `cp` imports no torch.

The library API for any PyTorch model, loaded (with torch) on first use:

- `cp.parameterise(model, table, base=..., scale=..., roles=...)`: param groups, init and
  forward multipliers of a rule table for a model (`cp.parameterisation`);
- `cp.load_parameterisation(path, model)`: a saved parameterisation applied again;
- `cp.set_lr_factor(optimizer, factor)`: every group's lr at its resolved lr times a factor;
- `cp.coord_check(build_model, widths, depths, roles=...)`: the coordinate check of a model
  builder (`cp.coord`).
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "parameterise": "cp.parameterisation",
    "load_parameterisation": "cp.parameterisation",
    "Parameterisation": "cp.parameterisation",
    "set_lr_factor": "cp.optim",
    "coord_check": "cp.coord",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cp' has no attribute {name!r}")
