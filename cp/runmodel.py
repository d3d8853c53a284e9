"""The model of a run: our GPT, or a user's model from ``arch.factory`` parameterised through
its role map (`cp.parameterisation`). Training and the coordinate check see both the same way:
a module whose forward returns logits, its parameters tagged with (group, layer), the modules
whose outputs are the groups' activations, and the resolved settings.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .config import RunConfig
from .model import GPT, lm_loss, logits_of
from .optim import Tagged
from .parameterisation import Parameterisation, ParameterisationError, Parameterised
from .roles import RoleError, RoleMap
from .scaling import GroupSettings

Factory = Callable[[int, int, int, int], nn.Module]
"""function(width, depth, vocab_size, seq_len) -> a module whose forward(idx) gives logits."""


class FactoryError(ValueError):
    """A factory that cannot be imported, or that does not return a module."""


@dataclass
class RunModel:
    """A run's model with what training and the coordinate check need of it."""

    module: nn.Module
    """forward(idx) returns the logits (see `cp.model.logits_of`)."""
    tagged: list[Tagged]
    """(group, layer, name, parameter) of every parameter."""
    modules: list[tuple[str, Optional[int], nn.Module]]
    """(group, layer, module) whose output is that group's activation."""
    settings: list[GroupSettings]
    z_loss: float = 0.0
    parameterised: Optional[Parameterised] = None
    """The hooks and roles of a factory's model (None for our GPT)."""

    def loss(self, output: object, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to optimise, cross-entropy) of a forward's output."""
        return lm_loss(logits_of(output), targets, self.z_loss)

    def to(self, device: torch.device) -> RunModel:
        """Moved in place (the parameters stay the same objects, so the tags hold)."""
        self.module.to(device)
        return self


def load_factory(spec: str) -> Factory:
    """The function ``"package.module:function"`` names, imported (which runs the module's
    code) from the Python path, else from the working directory."""
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise FactoryError(f"arch.factory {spec!r} is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not module_name.startswith(e.name) or os.getcwd() in sys.path:
            raise FactoryError(f"arch.factory {spec!r}: importing {module_name} failed: "
                               f"{e}") from e
        sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as e2:
            raise FactoryError(f"arch.factory {spec!r}: importing {module_name} failed: "
                               f"{e2}") from e2
    fn = getattr(module, function, None)
    if not callable(fn):
        raise FactoryError(f"arch.factory {spec!r}: {module_name} has no function {function!r}")
    return fn


def parameterisation(run: RunConfig) -> Parameterisation:
    """The run's table, scales, base HPs, factors and roles, for any model."""
    return Parameterisation(table=run.table(), base=run.base_scale, scale=run.scale,
                            roles=RoleMap.of(run.arch.roles), hps=run.hps, factors=run.factors)


def build_factory_model(run: RunConfig, vocab_size: int) -> nn.Module:
    """The factory's model at the run's width, depth and seq_len (not yet parameterised)."""
    assert run.arch.factory is not None
    fn = load_factory(run.arch.factory)
    s = run.scale
    model = fn(s.width, s.depth, vocab_size, s.seq_len)
    if not isinstance(model, nn.Module):
        raise FactoryError(f"arch.factory {run.arch.factory!r} returned "
                           f"{type(model).__name__}, not a torch.nn.Module")
    return model


def build(run: RunConfig, vocab_size: int,
          settings: Optional[list[GroupSettings]] = None) -> RunModel:
    """The run's model on the CPU, initialised from torch's global generator (seed it).
    ``settings``: the run's `RunConfig.settings()`, when the caller has them already."""
    if run.arch.factory is None:
        settings = run.settings() if settings is None else settings
        gpt = GPT(run.model_config(vocab_size), settings)
        return RunModel(gpt, list(gpt.tagged_parameters()), list(gpt.tagged_modules()),
                        settings, run.arch.z_loss)
    model = build_factory_model(run, vocab_size)
    try:
        p = parameterisation(run).apply(model)
    except RoleError as e:
        raise RoleError(f"arch.roles: {e}") from None
    p.init_()
    return RunModel(model, p.tagged, p.tagged_modules(), p.settings, run.arch.z_loss, p)


def check_factory(run: RunConfig, vocab_size: int) -> Optional[tuple[str, str]]:
    """None when the factory's model at the run's scale builds (on the meta device: no memory,
    no init) and its parameters fit the roles, with the width and depth of the scale; else
    (spec key, what is wrong)."""
    try:
        with torch.device("meta"):
            model = build_factory_model(run, vocab_size)
    except FactoryError as e:
        return "arch.factory", str(e)
    except Exception as e:  # the user's code failed: say how, without a traceback
        return "arch.factory", f"the factory failed: {type(e).__name__}: {e}"
    try:
        parameterisation(run).apply(model).remove()
    except RoleError as e:
        return "arch.roles", str(e)
    except ParameterisationError as e:
        return "arch.factory", str(e)
    return None
