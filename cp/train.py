"""train(RunConfig) -> RunResult: one training run, checkpointed, resumable, never crashing on
divergence.

The loop is nanoGPT's: draw the step's batch, forward, backward, AdamW step, schedule step.
Around it: periodic evaluation on the study's fixed validation sequences, divergence detection
(a NaN/inf loss or a blow-up ends the run with diverged=True), and checkpoints from which a
killed run continues bit-identically on CPU (batches depend only on (seed, step)).

Data parallel: in a torch.distributed process group (`cp.distributed`) the model is wrapped as
its ``parallel`` settings say (`cp.parallel`: DistributedDataParallel, or FSDP2 shards) and rank
r of W takes rows r, r+W, ... of each step's global batch, accumulating their gradients over
micro-batches when ``parallel.micro_batch`` asks, so the effective batch -- which the transfer
rules scale with -- is the single-process one. Rank 0 alone writes the run's files (every rank
writes its shards of an FSDP run's checkpoints); every rank logs the global mean loss and takes
the same decisions (divergence, stopping, checkpointing), so they stay in lockstep.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Optional

import torch

from .config import STREAMS, RunConfig, RunResult, Status
from .data import TokenData
from .distributed import rank_and_world
from .optim import build_optimizer
from .parallel import (
    Wrapped,
    load_sharded,
    refuse_other_checkpoint,
    remove_sharded,
    save_sharded,
)
from .parallel import build as build_parallel
from .runmodel import RunModel, build
from .study import RunFolder, set_aside

LogFn = Callable[[dict[str, Any]], None]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def eval_steps(total_steps: int, evals: int) -> list[int]:
    """Steps (1-based counts of updates done) after which the model is evaluated."""
    n = max(1, min(evals, total_steps))
    return sorted({max(1, round(total_steps * (i + 1) / n)) for i in range(n)})


class _Divergence:
    """Flags NaN/inf losses and blow-ups of the smoothed loss above its best value."""

    def __init__(self, margin: float, state: Optional[dict] = None):
        self.margin = margin
        self.ema: Optional[float] = None
        self.best = math.inf
        if state:
            self.ema, self.best = state["ema"], state["best"]

    def update(self, losses: list[float]) -> Optional[str]:
        for loss in losses:
            if not math.isfinite(loss):
                return f"non-finite train loss ({loss})"
            self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
            self.best = min(self.best, self.ema)
            if self.ema > self.best + self.margin:
                return (f"train loss blew up: smoothed {self.ema:.3f} > best {self.best:.3f} "
                        f"+ margin {self.margin}")
        return None

    def state(self) -> dict:
        return {"ema": self.ema, "best": self.best}


@torch.no_grad()
def evaluate(rm: RunModel, data: TokenData, cfg: RunConfig, device: torch.device,
             autocast: Callable[[], Any]) -> float:
    """Mean cross-entropy over the fixed validation sequences."""
    model = rm.module
    model.eval()
    total, count = 0.0, 0
    batch = min(cfg.scale.batch, 64)
    for x, y in data.val_batches(cfg.train.eval_sequences, cfg.scale.seq_len, batch):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            _, ce = rm.loss(model(x), y)
        total += ce.item() * x.shape[0]
        count += x.shape[0]
    model.train()
    return total / count


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     sched: torch.optim.lr_scheduler.LRScheduler, state: dict) -> None:
    """Tensors and plain types only (``state`` names the run), so `_load_checkpoint` can read
    it with ``weights_only=True``; written to a temp file, renamed, and no temp file left
    behind when the write fails (a full disk)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # a file object: a full disk raises OSError(ENOSPC)
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "state": state}, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _load_checkpoint(path: Path, device: torch.device, run_id: str, writer: bool
                     ) -> Optional[dict]:
    """The run's checkpoint, read with ``weights_only=True`` (a pickle that would run code is
    refused, not run), or None: a checkpoint that cannot be read, lacks a part, or belongs to
    another run is set aside (by rank 0) and the run starts afresh."""
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(ck, dict) or not {"model", "opt", "sched", "state"} <= ck.keys():
            raise ValueError("it lacks the model, optimiser, scheduler or loop state")
        owner = ck["state"].get("run_id") if isinstance(ck["state"], dict) else None
        if owner != run_id:
            raise ValueError(f"it is the checkpoint of run {owner!r}" if owner
                             else "it names no run")
        return ck
    except Exception as e:  # UnpicklingError, a truncated archive's RuntimeError, ...
        if writer:
            why = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            set_aside(path, f"cannot be resumed from: {type(e).__name__}: {why}",
                      "the run starts again from step 0")
        return None


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """Whether any rank raised ``flag`` (all ranks must call this at the same step)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def train(cfg: RunConfig, out_dir: Optional[Path | str | RunFolder] = None, *,
          stop_after: Optional[int] = None, log: Optional[LogFn] = None,
          should_stop: Optional[Callable[[], bool]] = None) -> RunResult:
    """Train one run. With ``out_dir`` the run writes its config, checkpoints and result
    there, and resumes from a checkpoint it finds. ``stop_after`` ends the session after that
    many total steps with status ``stopped`` (a checkpoint is left to resume from);
    ``should_stop`` does the same at the first loss read-out (every ``train.log_every`` steps)
    after it returns True (a job told to make way: preemption, time limit). ``log`` receives
    progress records ({step, total_steps, train_loss | val_loss, ...})."""
    t_start = time.perf_counter()
    rt = cfg.runtime
    if rt.threads:
        torch.set_num_threads(rt.threads)
    device = pick_device(rt.device)
    settings = cfg.settings()  # resolved once: the run id and the model both take them
    resolved = cfg.resolved(settings)
    run_id = cfg.run_id(settings)
    rank, world = rank_and_world()
    if cfg.scale.batch < world:
        raise ValueError(f"a global batch of {cfg.scale.batch} sequences cannot be split over "
                         f"{world} data-parallel ranks; use at most {cfg.scale.batch} "
                         "processes (launcher.slurm.tasks_per_node x nodes)")
    writer = rank == 0  # the other ranks train and read, never write (but their shards)
    n_rows = len(range(rank, cfg.scale.batch, world))  # this rank's share of the batch
    micro = cfg.parallel.micro_batches(n_rows)  # ValueError when micro_batch does not divide it
    out = (out_dir if isinstance(out_dir, RunFolder) else RunFolder(Path(out_dir))
           ) if out_dir is not None else None
    if out is not None and writer:
        out.write_config(run_id, cfg.to_dict(), resolved)
    ckpt_path = out.checkpoint if out is not None else None

    data = TokenData(cfg.data)
    total_steps = cfg.scale.steps
    if total_steps < 1:
        raise ValueError(f"{cfg.scale.tokens} tokens make no step of {cfg.scale.batch} x "
                         f"{cfg.scale.seq_len} tokens")
    use_bf16 = cfg.train.precision == "bf16"
    sharded = cfg.parallel.strategy == "fsdp"  # DCP checkpoints, written by every rank

    def fresh() -> tuple[RunModel, Wrapped, torch.optim.Optimizer,
                         torch.optim.lr_scheduler.LRScheduler]:
        torch.manual_seed(cfg.seed)
        built: list[RunModel] = []

        def make() -> torch.nn.Module:
            built.append(build(cfg, data.vocab_size, settings))
            return built[-1].module

        # fsdp: rank 0 builds the full model, then every rank a meta one that is sharded
        model, wrapped = build_parallel(make, cfg.parallel, rank, world, device, use_bf16)
        rm = built[-1]
        # Sharding replaces the parameters (same names): the AdamW groups take the shards.
        params = dict(model.named_parameters())
        rm.tagged = [(g, layer, name, params[name]) for g, layer, name, _ in rm.tagged]
        return (rm, wrapped, *build_optimizer(rm.tagged, rm.settings, cfg.schedule,
                                              total_steps))

    rm, wrapped, opt, sched = fresh()
    model = rm.module
    n_params = sum(p.numel() for p in model.parameters())  # a DTensor counts its whole

    state: dict[str, Any] = {"step": 0, "eval_curve": [], "train_curve": [], "train_time": 0.0,
                             "divergence": None, "wall_before": 0.0, "run_id": run_id}
    if out is not None:
        refuse_other_checkpoint(out, sharded)
    loaded = load_sharded(out, model, opt, sched, world, device) if sharded and out else None
    if loaded is not None:
        ranks_before = loaded.pop("resumed_from_ranks")
        state = {**loaded, "run_id": run_id}
        if log:
            log({"event": "resumed", "step": state["step"], "total_steps": total_steps,
                 "ranks": world, "ranks_before": ranks_before})
    ck = (_load_checkpoint(ckpt_path, device, run_id, writer)
          if not sharded and ckpt_path is not None and ckpt_path.exists() else None)
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            state = ck["state"]
        except Exception as e:  # right run, wrong contents: start afresh
            if writer and ckpt_path is not None:
                set_aside(ckpt_path, f"its state does not fit the model: {type(e).__name__}",
                          "the run starts again from step 0")
            rm, wrapped, opt, sched = fresh()
            model = rm.module
        else:
            if log:
                log({"event": "resumed", "step": state["step"], "total_steps": total_steps})

    rows = slice(rank, None, world) if world > 1 else None
    fwd: Callable[..., Any] = torch.compile(wrapped.forward) if rt.compile else wrapped.forward
    loss_of = torch.compile(rm.loss) if rt.compile else rm.loss
    # DDP and FSDP average gradients over ranks; scaling each micro-batch's mean loss by its
    # share of the global batch (times the ranks) makes that average the gradient of the global
    # batch's mean loss (exact for uneven splits and any number of micro-batches too).
    loss_scales = [m * world / cfg.scale.batch for m in micro]

    def autocast() -> AbstractContextManager[Any]:
        if wrapped.autocast:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    divergence = _Divergence(cfg.train.divergence_margin, state["divergence"])
    evals = set(eval_steps(total_steps, cfg.train.evals))
    tokens_per_step = cfg.scale.tokens_per_step
    # Losses not yet read back (reading syncs a GPU); carried through checkpoints so a resumed
    # run logs exactly what an uninterrupted one does.
    pending: list[torch.Tensor] = [torch.tensor(v) for v in state.pop("pending", [])]
    reason: Optional[str] = None
    wall_before = state["wall_before"]
    clock = {"train_from": time.perf_counter(), "last_ckpt": time.perf_counter()}

    def stop_train_clock() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        state["train_time"] += time.perf_counter() - clock["train_from"]

    def flush_losses(step: int) -> Optional[str]:
        if not pending:
            return None
        values = torch.stack(pending).tolist()
        pending.clear()
        state["train_curve"].append([step, sum(values) / len(values)])
        return divergence.update(values)

    def global_mean(ce: torch.Tensor) -> torch.Tensor:
        """The global batch's mean cross-entropy, on every rank."""
        if world == 1:
            return ce
        import torch.distributed as dist

        share = ce * (n_rows / cfg.scale.batch)
        dist.all_reduce(share)
        return share

    step = state["step"]
    while step < total_steps:
        x, y = data.train_batch(step, cfg.scale.batch, cfg.scale.seq_len, cfg.seed, rows=rows,
                                stream=STREAMS[cfg.stream])
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        parts = zip(x.split(micro[0]), y.split(micro[0]), strict=True) if len(micro) > 1 \
            else [(x, y)]
        rank_ce: Optional[torch.Tensor] = None  # the mean over this rank's rows
        for i, ((xm, ym), loss_scale) in enumerate(zip(parts, loss_scales, strict=True)):
            with wrapped.accumulating(last=i == len(micro) - 1):
                with autocast():
                    loss, ce = loss_of(fwd(xm), ym)
                (loss if loss_scale == 1 else loss * loss_scale).backward()
            part = ce.detach().float()
            part = part if len(micro) == 1 else part * (micro[i] / n_rows)
            rank_ce = part if rank_ce is None else rank_ce + part
        assert rank_ce is not None  # a rank has at least one row (checked above)
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        pending.append(global_mean(rank_ce))
        step += 1

        is_eval = step in evals
        stop_requested = False
        read_out = step % cfg.train.log_every == 0 or is_eval or step == total_steps
        if read_out:
            reason = flush_losses(step)
            if reason:
                break
            if should_stop is not None or world > 1:
                stop_requested = _agree(should_stop is not None and should_stop(), world,
                                        device)
            if log:
                log({"step": step, "total_steps": total_steps,
                     "train_loss": state["train_curve"][-1][1]})
        if is_eval:
            stop_train_clock()
            val = evaluate(rm, data, cfg, device, autocast)
            clock["train_from"] = time.perf_counter()
            if not math.isfinite(val):
                reason = f"non-finite validation loss ({val})"
                break
            state["eval_curve"].append({"step": step, "tokens": step * tokens_per_step,
                                        "val_loss": val})
            if log:
                log({"step": step, "total_steps": total_steps, "val_loss": val})

        stop_now = step < total_steps and (
            stop_requested or (stop_after is not None and stop_after <= step))
        now = time.perf_counter()
        timed = bool(rt.checkpoint_seconds) and now - clock["last_ckpt"] > rt.checkpoint_seconds
        if sharded and world > 1 and out is not None:  # every rank saves: rank 0's clock
            timed = read_out and _agree(timed and writer, world, device)  # decides, at read-outs
        due = bool(rt.checkpoint_every and step % rt.checkpoint_every == 0) or timed
        if out is not None and (writer or sharded) and (stop_now or due) and step < total_steps:
            stop_train_clock()
            state.update(step=step, divergence=divergence.state(),
                         wall_before=wall_before + now - t_start,
                         pending=[float(v) for v in pending])
            if sharded:
                save_sharded(out, step, model, opt, sched, state, world, writer, device)
            else:
                _save_checkpoint(out.checkpoint, model, opt, sched, state)
            state.pop("pending")
            clock["train_from"] = clock["last_ckpt"] = time.perf_counter()
        if stop_now:
            if world > 1:  # rank 0's checkpoint is on disk before any rank leaves
                import torch.distributed as dist

                dist.barrier()
            break

    stop_train_clock()
    status: Status = "diverged" if reason else ("completed" if step >= total_steps else "stopped")
    final_val = state["eval_curve"][-1]["val_loss"] if state["eval_curve"] else math.nan
    if status != "completed":
        final_val = math.nan if status == "diverged" else final_val
    result = RunResult(
        run_id=run_id, status=status, diverged=status == "diverged", reason=reason,
        steps=step, total_steps=total_steps, tokens=step * tokens_per_step,
        final_val_loss=final_val, eval_curve=state["eval_curve"],
        train_curve=state["train_curve"],
        tokens_per_s=step * tokens_per_step / state["train_time"] if state["train_time"] else 0.0,
        wall_s=wall_before + time.perf_counter() - t_start, n_params=n_params,
    )
    if out is not None and sharded:
        if status == "completed" and rt.keep_checkpoint:
            save_sharded(out, step, model, opt, sched, {**state, "step": step, "pending": []},
                         world, writer, device)
        elif status in ("completed", "diverged") and writer:
            remove_sharded(out)
    if out is not None and ckpt_path is not None and writer:
        if status == "completed" and rt.keep_checkpoint and not sharded:
            _save_checkpoint(ckpt_path, model, opt, sched, {**state, "step": step, "pending": []})
        elif status in ("completed", "diverged") and ckpt_path.exists():
            ckpt_path.unlink()
        out.write_result(result)
    return result
