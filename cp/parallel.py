"""Data parallelism inside one run, as its model's ``parallel`` settings say
(`cp.config.ParallelConfig`): the model wrapped for DDP, or sharded with FSDP2
(``fully_shard`` on every block, then on the root, over a one-dimensional device mesh of the
job's ranks), activation checkpointing per block, and the sharded checkpoints of FSDP runs
(torch.distributed.checkpoint).

The AdamW param groups are built after sharding (`cp.optim.build_optimizer` over the sharded
model's tagged parameters): FSDP2 keeps the parameters' names, so every (group, layer) finds
its lr, eps, betas and weight decay of the rule table on its DTensor shards.

A sharded checkpoint holds tensors only (the model's and the optimiser's state dicts from
``get_state_dict``, DTensor shards saved by each rank); the schedule's state, the loop's state
(step, curves, divergence detector) and the RNG state go to a JSON file beside them, so loading
one executes no pickle. Because DCP stores each tensor's global shape and every shard's
offsets, a checkpoint written by N ranks loads on any number of ranks -- resharded, or
unsharded in a single process -- and the run goes on: the data position is the step (batches
are a function of seed, step and stream), and every count of ranks trains the same global
batch.
"""

from __future__ import annotations

import base64
import functools
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from .config import ParallelConfig
from .study import RunFolder, read_json, write_json


@dataclass
class Wrapped:
    """The model as the training loop calls it."""

    forward: Callable[..., Any]
    """Call with (inputs, targets): the model, its DDP wrapper, or the sharded model."""
    sharded: bool
    """Parameters are FSDP2 shards (DTensors): every rank takes part in each forward, in
    evaluations and in checkpoints."""
    autocast: bool
    """bf16 through torch.autocast (ddp, one rank); False under fp32 or when fsdp's mixed
    precision policy casts the parameters itself."""
    ddp: Optional[nn.parallel.DistributedDataParallel] = None

    def accumulating(self, last: bool) -> AbstractContextManager[Any]:
        """Around the forward and backward of a micro-batch: DDP skips its all-reduce until
        the last one (fsdp reduce-scatters every micro-batch's gradients into its shards,
        which keeps unsharded gradients out of memory)."""
        if self.ddp is None or last:
            return nullcontext()
        return self.ddp.no_sync()


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The model's blocks, the unit of sharding and of activation checkpointing: our GPT's
    ``blocks``. A model from ``arch.factory`` has no such list we can rely on, so it trains
    with ``strategy: ddp`` and without activation checkpointing."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"parallel.strategy: fsdp and parallel.activation_checkpointing work "
                         f"per block of our GPT; {type(model).__name__} (arch.factory) has no "
                         "`blocks` list: train it with strategy ddp and without activation "
                         "checkpointing")
    return blocks


def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing per block: a block keeps only its inputs in the forward and
    is recomputed in the backward. The forward is replaced on the block instance, so
    parameter names (and with them the (group, layer) tags) do not change; under FSDP2 the
    block's own hooks gather its parameters before the recomputation."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks_of(model):
        block.forward = functools.partial(checkpoint, block.forward,
                                          use_reentrant=False)


def wrap(model: nn.Module, parallel: ParallelConfig, world: int, device: torch.device,
         bf16: bool) -> Wrapped:
    """Wrap ``model`` for ``world`` ranks of this process group as ``parallel`` says. With
    fsdp the parameters are sharded in place: build the optimiser after this."""
    if parallel.activation_checkpointing:
        checkpoint_blocks(model)
    if world == 1:
        return Wrapped(model, sharded=False, autocast=bf16)
    if parallel.strategy == "ddp":
        ddp = nn.parallel.DistributedDataParallel(model)
        return Wrapped(ddp, sharded=False, autocast=bf16, ddp=ddp)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if bf16 else MixedPrecisionPolicy()
    for block in blocks_of(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=parallel.reshard_after_forward,
                    mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=parallel.reshard_after_forward,
                mp_policy=policy)
    return Wrapped(model, sharded=True, autocast=False)


def build(make: Callable[[], nn.Module], parallel: ParallelConfig, rank: int, world: int,
          device: torch.device, bf16: bool) -> tuple[nn.Module, Wrapped]:
    """The model ``make`` builds (under the caller's seed), on ``device``, wrapped. Sharded,
    only rank 0 initialises the full model (on CPU, exactly as one process would); the other
    ranks build it on the meta device, and rank 0's values reach every rank's shards by
    broadcast: a node's host memory holds one full copy, not one per GPU (29 GB for a 7B
    model, not 230)."""
    if world == 1 or parallel.strategy != "fsdp":
        model = make().to(device)
        return model, wrap(model, parallel, world, device, bf16)
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = make() if rank == 0 else None
    with torch.device("meta"):
        model = make()
    wrapped = wrap(model, parallel, world, device, bf16)
    model.to_empty(device=device)
    set_model_state_dict(model, full.state_dict() if full is not None else {},
                         options=StateDictOptions(full_state_dict=True,
                                                  broadcast_from_rank0=True))
    for name, buffer in model.named_buffers():  # not in the state dict (e.g. RoPE's tables)
        if full is not None:
            buffer.copy_(full.get_buffer(name))
        dist.broadcast(buffer, src=0)
    return model, wrapped


# ---------------------------------------------------------------------------------------------
# Sharded checkpoints.


@contextmanager
def _dcp_quietly() -> Iterator[None]:
    """DCP without a process group (``no_dist``, one rank) warns that it assumes a single
    process: it does, on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _tensors(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(what DCP saves and loads in place: the model's and the optimiser's tensors, the
    optimiser's full state dict whose ``state`` that shares)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd["state"]}, osd


def _rng_state(device: torch.device) -> dict[str, str]:
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return {k: base64.b64encode(v.numpy().tobytes()).decode() for k, v in states.items()}


def _set_rng_state(states: dict[str, str], device: torch.device) -> None:
    for k, v in states.items():
        t = torch.frombuffer(bytearray(base64.b64decode(v)), dtype=torch.uint8)
        if k == "cpu":
            torch.set_rng_state(t)
        elif device.type == "cuda":
            torch.cuda.set_rng_state(t, device)


def save_sharded(folder: RunFolder, step: int, model: nn.Module, opt: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any],
                 world: int, writer: bool, device: torch.device) -> None:
    """Every rank writes its shards of step ``step`` into a temp folder; rank 0 adds the
    state file and renames the folder into place, then removes older checkpoints. Collective:
    all ranks call it at the same step."""
    import torch.distributed.checkpoint as dcp

    tmp, final = folder.sharded_step_tmp(step), folder.sharded_step(step)
    if writer:
        shutil.rmtree(tmp, ignore_errors=True)  # a save killed half-way at this step
        tmp.mkdir(parents=True)
    _barrier(world)
    tensors, _ = _tensors(model, opt)
    with _dcp_quietly():
        dcp.save(tensors, checkpoint_id=tmp, no_dist=world == 1)
    if writer:
        write_json(folder.sharded_state(tmp), {
            "step": step, "ranks": world, "loop": state, "schedule": sched.state_dict(),
            "rng": _rng_state(device)})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in folder.sharded_steps():
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    _barrier(world)  # the checkpoint is in place before any rank goes on (or leaves)


def load_sharded(folder: RunFolder, model: nn.Module, opt: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler, world: int,
                 device: torch.device) -> Optional[dict[str, Any]]:
    """Restore the newest complete sharded checkpoint into ``model``, ``opt`` and ``sched``
    (resharded onto this run's ranks) and return the loop's state with ``resumed_from_ranks``;
    None when there is none. Collective."""
    steps = folder.sharded_steps()
    if not steps:
        return None
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    latest = steps[-1]
    meta = read_json(folder.sharded_state(latest))
    tensors, osd = _tensors(model, opt)
    with _dcp_quietly():
        dcp.load(tensors, checkpoint_id=latest, no_dist=world == 1)
    set_state_dict(model, opt, model_state_dict=tensors["model"], optim_state_dict=osd)
    sched.load_state_dict(meta["schedule"])
    # The optimiser's groups are rebuilt from the rule table; their lr is the schedule's.
    for group, lr in zip(opt.param_groups, sched.get_last_lr(), strict=True):
        group["lr"] = lr
    _set_rng_state(meta["rng"], device)
    return {**meta["loop"], "resumed_from_ranks": meta["ranks"]}


def remove_sharded(folder: RunFolder) -> None:
    shutil.rmtree(folder.sharded_checkpoint, ignore_errors=True)


def refuse_other_checkpoint(folder: RunFolder, sharded: bool) -> None:
    """Refuse to resume a run from the other strategy's checkpoint: a run's id does not
    include its strategy, so the same run may be started as ddp and resumed as fsdp."""
    if folder.checkpoint.exists() if sharded else folder.sharded_steps():
        have, want = ("ddp", "fsdp") if sharded else ("fsdp", "ddp")
        raise ValueError(
            f"{folder.path} holds a checkpoint of this run written with parallel.strategy "
            f"{have}, but it now runs with {want}: resume it with strategy {have}, or delete "
            f"{folder.checkpoint if sharded else folder.sharded_checkpoint} to start over")
