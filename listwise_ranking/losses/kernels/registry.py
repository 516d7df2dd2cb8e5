"""The fast Smooth-NDCG kernels' registry: each kernel module registers one :class:`FastKernel`.

A fast kernel computes the smoothed ranks of ``[Q, N]`` scaled scores and the closed-form rank
gradient, exactly what :mod:`listwise_ranking.losses.chunked` computes, in fewer passes; either
returns ``None`` when its backend failed, and the loss then uses the chunked path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..registry import lookup

__all__ = ["FastKernel", "get_kernel", "list_kernels", "register_kernel"]


@dataclass(frozen=True)
class FastKernel:
    """One fast kernel (``model.listwise.kernel: <name>``).

    * ``ranks(x [Q, N]) -> [Q, N] | None`` and ``rank_backward(x, grad_rank) -> [Q, N] | None``;
    * ``available(device)``: whether it runs on tensors of that device (False once it failed there);
    * ``dtypes``: the compute dtypes it takes; inputs of another dtype use the chunked path;
    * ``needs_cuda``: asking for it on a device where it is not available is an error (instead of a
      silent chunked fallback); ``cpu_runner`` says how it can run on CPU anyway;
    * ``cpu_env``: environment variables under which a fresh process runs it on CPU (tests).
    """

    name: str
    ranks: Callable[[Tensor], Tensor | None]
    rank_backward: Callable[[Tensor, Tensor], Tensor | None]
    available: Callable[[torch.device], bool]
    dtypes: tuple[torch.dtype, ...]
    needs_cuda: bool = False
    cpu_runner: str = ""
    cpu_env: dict[str, str] = field(default_factory=dict)


_KERNELS: dict[str, FastKernel] = {}


def register_kernel(kernel: FastKernel) -> FastKernel:
    """Register ``kernel`` under its name (again on a module reload)."""
    if kernel.name in ("auto", "torch"):
        raise KeyError(f"kernel name {kernel.name!r} is reserved")
    _KERNELS[kernel.name] = kernel
    return kernel


def get_kernel(name: str) -> FastKernel:
    """The fast kernel registered as ``name``; ``KeyError`` listing the known ones otherwise."""
    return lookup(_KERNELS, name, "Smooth-NDCG fast kernel")


def list_kernels() -> list[str]:
    """The fast kernels' names, in registration order."""
    return list(_KERNELS)
