"""Process-group helpers: gathering across ranks, and a single-process group when not under torchrun."""

from __future__ import annotations

import datetime
import logging
import os
import socket

import torch
import torch.distributed as dist
from lavis.models.base_model import all_gather_with_grad, concat_all_gather
from torch import Tensor

__all__ = ["gather_with_grad", "gather_no_grad", "init_distributed", "is_launched_distributed"]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0; gradients flow back to each rank's slice.

    LAVIS's ``all_gather_with_grad`` sums the gradient of every rank's copy into the local slice, so
    with DDP's gradient averaging the result equals one process holding the global batch.
    """
    return all_gather_with_grad(tensor) if _world_size() > 1 else tensor


def gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, without gradient."""
    return concat_all_gather(tensor) if _world_size() > 1 else tensor


def is_launched_distributed() -> bool:
    """True under ``torchrun`` (or any launcher that sets ``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(run_cfg) -> None:
    """Set up ``torch.distributed`` for a LAVIS run config, on CPU or GPU.

    Under torchrun: NCCL on GPU, gloo on CPU (LAVIS's ``init_distributed_mode`` assumes NCCL and a
    GPU). Otherwise a one-process group, because LAVIS's ``RunnerBase.train`` calls
    ``dist.barrier()`` even when not distributed; ``run_cfg.distributed`` stays False there.
    """
    if dist.is_initialized():
        return
    use_cuda = str(run_cfg.get("device", "cuda")).startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but no CUDA device is available; set run.device: cpu")
    backend = "nccl" if use_cuda else "gloo"
    if is_launched_distributed():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
        run_cfg.distributed, run_cfg.rank, run_cfg.world_size, run_cfg.gpu = True, rank, world, local_rank
        logging.info("distributed init: rank %d of %d (%s)", rank, world, backend)
    else:
        if use_cuda:
            torch.cuda.set_device(0)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        run_cfg.distributed, run_cfg.rank, run_cfg.world_size, run_cfg.gpu = False, 0, 1, 0
