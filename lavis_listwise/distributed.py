"""Process-group helpers: gathering across ranks, and a single-process group when not under torchrun."""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from lavis.models.base_model import all_gather_with_grad, concat_all_gather
from torch import Tensor

from listwise_ranking.errors import ConfigError

__all__ = [
    "DEFAULT_DIST_TIMEOUT_S",
    "dist_timeout",
    "is_collective_timeout",
    "gather_no_grad",
    "gather_shards",
    "gather_with_grad",
    "init_distributed",
    "is_launched_distributed",
    "process_group_released",
    "rank_and_world",
    "shard_range",
]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous share ``[start, end)`` of ``n`` items for ``rank`` (the last shards may be shorter)."""
    step = math.ceil(n / world)
    return min(n, rank * step), min(n, (rank + 1) * step)


def gather_shards(x: Tensor, n_total: int) -> Tensor:
    """Concatenate each rank's :func:`shard_range` of ``n_total`` rows, without gradient. Unlike
    :func:`gather_no_grad`, shards may differ in length."""
    rank, world = rank_and_world()
    if world == 1:
        return x
    step = math.ceil(n_total / world)
    padded = x.new_zeros((step,) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    ranges = (shard_range(n_total, r, world) for r in range(world))
    return torch.cat([p[: e - s] for p, (s, e) in zip(parts, ranges)])


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0; gradients flow back to each rank's slice.

    LAVIS's ``all_gather_with_grad`` sums the gradient of every rank's copy into the local slice, so
    with DDP's gradient averaging the result equals one process holding the global batch.
    """
    return all_gather_with_grad(tensor) if rank_and_world()[1] > 1 else tensor


def gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, without gradient."""
    return concat_all_gather(tensor) if rank_and_world()[1] > 1 else tensor


def is_launched_distributed() -> bool:
    """True under ``torchrun`` (or any launcher that sets ``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


#: Default of ``run.dist_timeout``: how long a collective waits for the other ranks, in seconds.
DEFAULT_DIST_TIMEOUT_S = 1800


def dist_timeout(run_cfg) -> datetime.timedelta:
    """``run.dist_timeout`` (seconds, default :data:`DEFAULT_DIST_TIMEOUT_S`) as a timedelta."""
    value = run_cfg.get("dist_timeout", DEFAULT_DIST_TIMEOUT_S)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"run.dist_timeout must be a positive number of seconds, got {value!r}")
    return datetime.timedelta(seconds=seconds)


def is_collective_timeout(err: BaseException) -> bool:
    """Whether ``err`` is a collective that gave up waiting for another rank (gloo or NCCL)."""
    backend_error = getattr(dist, "DistBackendError", ())
    # gloo says "Timed out waiting ...", "Application timeout caused pair closure" or "Connection closed
    # by peer"; NCCL's watchdog "... collective operation timeout"
    return isinstance(err, RuntimeError) and (
        isinstance(err, backend_error) or _PEER_FAILURE.search(str(err)) is not None
    )


_PEER_FAILURE = re.compile(r"timed out|timeout|pair closure|closed by peer|connection reset", re.IGNORECASE)


def init_distributed(run_cfg) -> None:
    """Set up ``torch.distributed`` for a LAVIS run config, on CPU or GPU.

    Under torchrun: NCCL on GPU, gloo on CPU (LAVIS's ``init_distributed_mode`` assumes NCCL and a
    GPU). Otherwise a one-process group, because LAVIS's ``RunnerBase.train`` calls
    ``dist.barrier()`` even when not distributed; ``run_cfg.distributed`` stays False there.
    Collectives give up after ``run.dist_timeout`` seconds, so a stalled rank stops the job.
    """
    if dist.is_initialized():
        return
    timeout = dist_timeout(run_cfg)
    use_cuda = str(run_cfg.get("device", "cuda")).startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but no CUDA device is available; set run.device: cpu")
    backend = "nccl" if use_cuda else "gloo"
    if is_launched_distributed():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=timeout)
        run_cfg.distributed, run_cfg.rank, run_cfg.world_size, run_cfg.gpu = True, rank, world, local_rank
        logging.info("distributed init: rank %d of %d (%s)", rank, world, backend)
    else:
        if use_cuda:
            torch.cuda.set_device(0)
        # an in-memory store: a one-process group needs no rendezvous, so no port that another job could take
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        run_cfg.distributed, run_cfg.rank, run_cfg.world_size, run_cfg.gpu = False, 0, 1, 0


@contextmanager
def process_group_released() -> Iterator[None]:
    """Destroy, on leaving the block, a default process group that was created inside it.

    A process that exits with its gloo group alive can abort at interpreter shutdown ("terminate
    called without an active exception", SIGABRT): the group's worker threads still hold work whose
    tensors are freed after Python is gone (pytorch/pytorch#190489). ``torch.distributed`` asks every
    process to call ``destroy_process_group`` before it exits. A group that existed before the block
    (a caller's, a test's) is left alone.
    """
    created_here = not (dist.is_available() and dist.is_initialized())
    try:
        yield
    finally:
        if created_here and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
