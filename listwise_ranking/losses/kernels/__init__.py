"""Fast kernels of Smooth-NDCG's smoothed rank and rank gradient, and which one a call uses.

``kernel`` names: ``torch`` (the chunked path, :mod:`listwise_ranking.losses.chunked`), every
registered :class:`FastKernel` (``compiled``: fused ``torch.compile`` reductions; ``triton``:
hand-written Triton kernels, CUDA), and ``auto`` (compiled on CUDA, chunked elsewhere). The fast
kernels share the centred-exponential factorisation of :mod:`.centred_exp`.
"""

from __future__ import annotations

import torch

from . import compiled, triton  # noqa: F401  (each registers its kernel)
from .registry import FastKernel, get_kernel, list_kernels, register_kernel

__all__ = ["KERNELS", "FastKernel", "get_kernel", "list_kernels", "register_kernel", "resolve_kernel"]

#: Every accepted ``kernel`` value.
KERNELS = ("auto", "torch", *list_kernels())


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """The kernel a call on ``device`` uses: ``auto`` is ``compiled`` on CUDA and ``torch`` elsewhere;
    a fast kernel that is not available there (its compilation failed earlier) is ``torch``.

    ``kernel`` must be one of :data:`KERNELS` (the public entry points check it).

    Raises:
        ValueError for a CUDA-only kernel on a device it cannot run on.
    """
    if kernel == "auto":
        kernel = "compiled" if device.type == "cuda" else "torch"
    if kernel == "torch":
        return kernel
    fast = get_kernel(kernel)
    if fast.available(device):
        return kernel
    if fast.needs_cuda and device.type != "cuda":
        hint = f" (or {fast.cpu_runner})" if fast.cpu_runner else ""
        raise ValueError(f"kernel={kernel!r} needs CUDA tensors{hint}; got {device.type} tensors")
    return "torch"
