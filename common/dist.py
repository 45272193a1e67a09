"""Several processes (torchrun + DistributedDataParallel), gradient accumulation, torch.compile.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import gc
import os
from contextlib import nullcontext

import torch
import torch.nn as nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers (for saving and attributes)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum tensors over all processes in place (a no-op in a single process)."""
    if dist_on():
        for t in tensors:
            torch.distributed.all_reduce(t)


# --- several processes: torchrun + DistributedDataParallel ---
#
# `torchrun --nproc_per_node N lesson.py ...` starts N copies of the script with RANK, WORLD_SIZE
# and LOCAL_RANK set. Each copy reads its own slice of every batch (--batch-size is per process,
# so the global batch is N times it; scale --lr yourself if you want it to follow), gradients
# are averaged by DDP, the EMA codebook statistics are summed over processes before each EMA
# step (01's ema_update) and dead codes are restarted from rank 0's vectors on every rank.
# Rank 0 alone writes logs, checkpoints and figures.


def dist_on() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if dist_on() else 0


def is_main() -> bool:
    return rank() == 0


def distributed() -> tuple[int, int]:
    """(rank, world size). Under torchrun the first call joins the process group (nccl on CUDA,
    gloo on CPU); without it, (0, 1)."""
    if not dist_on() and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (rank(), torch.distributed.get_world_size()) if dist_on() else (0, 1)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around model when several processes train, else model itself.
    Buffers are not broadcast from rank 0 at each forward: the EMA codebook is kept equal on
    every rank by its all-reduced statistics, and broadcasting would hide a rank that drifts."""
    if not dist_on():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def broadcast_from_main(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's values of t on every process, in place (a no-op in a single process)."""
    if dist_on():
        torch.distributed.broadcast(t, src=0)
    return t


def compiled(model: nn.Module, cfg) -> nn.Module:
    """torch.compile(model) with --compile, else model. The first steps are slow while it
    compiles; the quantizers' data-dependent restarts run eagerly (graph breaks)."""
    if not cfg.compile:
        return model
    # lesson 03's adaptive weight differentiates one graph twice (retain_graph=True), which a
    # compiled backward that reuses ("donates") its saved buffers refuses on CUDA
    import torch._functorch.config as functorch  # (torch.compile's own settings)

    if hasattr(functorch, "donated_buffer"):  # torch >= 2.5
        functorch.donated_buffer = False
    return torch.compile(model)


def accumulating(model: nn.Module, micro: int, n: int):
    """Context for micro-batch `micro` of `n`: under DDP, every micro-batch but the last skips
    the gradient all-reduce (DDP.no_sync), so that n micro-batches cost one reduction."""
    model = getattr(model, "_orig_mod", model)  # under --compile
    if micro < n - 1 and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


def barrier() -> None:
    """Wait until every process gets here (a no-op in a single process)."""
    if dist_on():
        torch.distributed.barrier()


def teardown(wait: bool = True) -> None:
    """Leave the process group (the end of a torchrun job, however it ended): first free what
    still refers to it (a DDP reducer held by the frames of an exception is only freed by a
    collection), then wait for every process (unless this one failed alone), then destroy it.
    A process that exits with a gloo group alive can abort in its C++ threads ("terminate called
    without an active exception")."""
    if dist_on():
        gc.collect()
        if wait:
            barrier()
        torch.distributed.destroy_process_group()
