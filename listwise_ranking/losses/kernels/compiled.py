"""Smooth-NDCG's rank and rank-gradient as fused reductions compiled by ``torch.compile``.

Each is one broadcast-and-reduce expression over ``[Q, N, N]``; Inductor fuses the elementwise work
into the reduction, so the cube is never stored (memory ``O(Q*N)``), on GPU (Triton) and CPU (C++).
A term is ``sigma(x_j - x_i) = 1 / (1 + u_i v_j)`` with the row's centred exponentials (see
:mod:`.centred_exp`): no exponential per term. Rows too wide for them use ``sigmoid`` of the
difference. The gradient uses the symmetry of ``sigma'``:
``d/dx_k sum_i g_i rank_i = sum_i sigma'(x_k - x_i) (g_i - g_k)``, a single reduction. Shapes are
compiled as dynamic, once per expression, device and dtype, not per batch size.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor

from .centred_exp import apply_by_row_kind
from .registry import FastKernel, register_kernel

__all__ = ["compiled_ranks", "compiled_rank_backward", "compiled_available"]

_COMPILED: dict[str, object] = {}
_FAILED: set[str] = set()


def _rank_factored(u: Tensor, v: Tensor) -> Tensor:
    # [q, i, j] = sigma(x_j - x_i) = 1 / (1 + u_i v_j); the j = i term is 1/2: 1 + sum_{j != i} = 1/2 + sum_j
    return 0.5 + torch.reciprocal(1.0 + u.unsqueeze(2) * v.unsqueeze(1)).sum(dim=2)


def _rank_direct(x: Tensor) -> Tensor:
    return 0.5 + torch.sigmoid(x.unsqueeze(1) - x.unsqueeze(2)).sum(dim=2)


def _rank_backward_factored(u: Tensor, v: Tensor, g: Tensor) -> Tensor:
    s = torch.reciprocal(1.0 + v.unsqueeze(2) * u.unsqueeze(1))  # [q, k, i] = sigma(x_k - x_i)
    return (s * (1.0 - s) * (g.unsqueeze(1) - g.unsqueeze(2))).sum(dim=2)


def _rank_backward_direct(x: Tensor, g: Tensor) -> Tensor:
    s = torch.sigmoid(x.unsqueeze(2) - x.unsqueeze(1))  # [q, k, i] = sigma(x_k - x_i)
    return (s * (1.0 - s) * (g.unsqueeze(1) - g.unsqueeze(2))).sum(dim=2)


def _get(name: str, fn):
    if name not in _COMPILED:
        # cpp.dynamic_threads: on CPU, Inductor sizes OpenMP parallelism from the shape it first compiles
        # for; compiled on a small batch, the dynamic kernel would stay single-threaded at every size
        _COMPILED[name] = torch.compile(
            fn, dynamic=True, fullgraph=True, options={"cpp.dynamic_threads": True}
        )
    return _COMPILED[name]


def compiled_available(device: torch.device) -> bool:
    """False once compilation failed on this device type (then the chunked path is used)."""
    return device.type not in _FAILED


def _call(name: str, fn, *args: Tensor) -> Tensor | None:
    device = args[0].device.type
    if device in _FAILED:
        return None
    try:
        return _get(name, fn)(*(a.contiguous() for a in args))
    except Exception as err:  # any backend failure: fall back, warn once per device type
        _FAILED.add(device)
        warnings.warn(
            f"torch.compile of the Smooth-NDCG kernel failed on {device} ({type(err).__name__}: {err}); "
            "using the chunked PyTorch path (listwise.kernel: torch) from now on",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def compiled_ranks(scaled_scores: Tensor) -> Tensor | None:
    """``[Q, N]`` smoothed ranks of ``[Q, N]`` scores / tau, or ``None`` if compilation failed."""
    return apply_by_row_kind(
        scaled_scores,
        functools.partial(_call, "rank", _rank_factored),
        functools.partial(_call, "rank_direct", _rank_direct),
    )


def compiled_rank_backward(scaled_scores: Tensor, grad_rank: Tensor) -> Tensor | None:
    """``[Q, N]`` gradient with respect to the scaled scores, or ``None`` if compilation failed."""
    return apply_by_row_kind(
        scaled_scores,
        functools.partial(_call, "rank_backward", _rank_backward_factored),
        functools.partial(_call, "rank_backward_direct", _rank_backward_direct),
        grad_rank,
    )


register_kernel(
    FastKernel(
        "compiled",
        compiled_ranks,
        compiled_rank_backward,
        compiled_available,
        dtypes=(torch.float32, torch.float64),
    )
)
