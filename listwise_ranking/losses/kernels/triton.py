"""Smooth-NDCG's rank and closed-form rank-gradient as hand-written Triton kernels (CUDA).

Each program owns one query and a block of items, and streams the query's other items through
registers, so nothing larger than ``[Q, N]`` is ever stored:

    rank_qi  = 1/2 + sum_j sigma(x_qj - x_qi)                        (the j = i term is 1/2)
    grad_qk  = sum_i P_qki g_qi - g_qk sum_i P_qki,   P = sigma'(x_qk - x_qi) = sigma (1 - sigma)

Each term is ``t = sigma(x_j - x_i)`` (the gradient needs ``sigma' = t - t^2``, the same for both
orders). For rows the centred exponentials cover (:mod:`.centred_exp`) ``t = 1 / (1 + u_i v_j)``: a
multiply and a reciprocal, no exponential; for wider rows ``t = 1 / (1 + 2^((x_i - x_j) log2 e))``,
the difference taken before scaling as the chunked path rounds it. Padding columns load a value
that makes ``t`` exactly 0 (no masks in the inner loop). fp32 in, fp32 accumulation; results match
the chunked path's formulas, not its summation order.

Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU tensors
through Triton's interpreter, which is how CI tests them.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor

from .centred_exp import apply_by_row_kind
from .registry import FastKernel, register_kernel

__all__ = ["triton_available", "triton_rank_backward", "triton_ranks"]

_BLOCK_ITEMS = 64  # items owned by one program
_BLOCK_STREAM = 128  # other items per inner-loop step
_FAILED: set[str] = set()

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships with CUDA builds of torch; elsewhere the kernel is unavailable
    triton = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _sigmoid_of_difference(own, stream, FACTORED: tl.constexpr):
        """``[I, J]`` values of ``sigma(x_j - x_i)`` from ``[I]`` own and ``[J]`` streamed items:
        ``1 / (1 + u_i v_j)`` from centred exponentials, or from scaled scores ``x_i``, ``x_j``."""
        if FACTORED:
            return 1.0 / (1.0 + own[:, None] * stream[None, :])
        return 1.0 / (1.0 + tl.exp2((own[:, None] - stream[None, :]) * 1.4426950408889634))

    @triton.jit
    def _rank_kernel(
        own_ptr, stream_ptr, out_ptr, n, stride, n_blocks,
        BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, FACTORED: tl.constexpr, PAD: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        q, block = pid // n_blocks, pid % n_blocks
        offs_i = block * BLOCK_I + tl.arange(0, BLOCK_I)
        own = tl.load(own_ptr + q * stride + offs_i, mask=offs_i < n, other=1.0)
        acc = tl.zeros([BLOCK_I], dtype=tl.float32)
        for j0 in range(0, n, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            stream = tl.load(stream_ptr + q * stride + offs_j, mask=offs_j < n, other=PAD)  # adds exactly 0
            acc += tl.sum(_sigmoid_of_difference(own, stream, FACTORED), axis=1)
        tl.store(out_ptr + q * stride + offs_i, 0.5 + acc, mask=offs_i < n)

    @triton.jit
    def _rank_backward_kernel(
        own_ptr, stream_ptr, g_ptr, out_ptr, n, stride, n_blocks,
        BLOCK_K: tl.constexpr, BLOCK_I: tl.constexpr, FACTORED: tl.constexpr, PAD: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        q, block = pid // n_blocks, pid % n_blocks
        offs_k = block * BLOCK_K + tl.arange(0, BLOCK_K)
        own = tl.load(own_ptr + q * stride + offs_k, mask=offs_k < n, other=1.0)
        gk = tl.load(g_ptr + q * stride + offs_k, mask=offs_k < n, other=0.0)
        weighted = tl.zeros([BLOCK_K], dtype=tl.float32)
        total = tl.zeros([BLOCK_K], dtype=tl.float32)
        for i0 in range(0, n, BLOCK_I):
            offs_i = i0 + tl.arange(0, BLOCK_I)
            stream = tl.load(stream_ptr + q * stride + offs_i, mask=offs_i < n, other=PAD)
            gi = tl.load(g_ptr + q * stride + offs_i, mask=offs_i < n, other=0.0)
            t = _sigmoid_of_difference(own, stream, FACTORED)  # sigma(x_i - x_k); a PAD column gives 0
            p = t - t * t  # sigma' is even: the same for sigma(x_k - x_i)
            weighted += tl.sum(p * gi[None, :], axis=1)
            total += tl.sum(p, axis=1)
        tl.store(out_ptr + q * stride + offs_k, weighted - gk * total, mask=offs_k < n)


def triton_available(device: torch.device) -> bool:
    """Triton kernels run on CUDA tensors (and on CPU tensors under ``TRITON_INTERPRET=1``)."""
    if triton is None or device.type in _FAILED:
        return False
    return device.type == "cuda" or (_INTERPRET and device.type == "cpu")


def _launch(name: str, kernel, *tensors: Tensor, factored: bool) -> Tensor | None:
    """Runs ``kernel(own, stream, [g,] out, ...)`` over ``[q, n]`` rows; ``None`` if it failed."""
    tensors = tuple(t.contiguous() for t in tensors)
    out = torch.empty_like(tensors[0])
    device = out.device.type
    q, n = out.shape
    n_blocks = triton.cdiv(n, _BLOCK_ITEMS)
    # a padding column must give sigma = 0: v = inf for centred exponentials, x = -inf for scores
    pad = float("inf") if factored else float("-inf")
    try:
        kernel[(q * n_blocks,)](
            *tensors, out, n, out.stride(0), n_blocks, _BLOCK_ITEMS, _BLOCK_STREAM, factored, pad
        )
    except Exception as err:  # a compiler/driver failure: fall back, warn once per device type
        _FAILED.add(device)
        warnings.warn(
            f"the Triton Smooth-NDCG {name} kernel failed on {device} ({type(err).__name__}: {err}); "
            "using the chunked PyTorch path (listwise.kernel: torch) from now on",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return out


def _as_fp32(x: Tensor) -> Tensor:
    if x.dtype != torch.float32:
        raise ValueError(
            f"the Triton Smooth-NDCG kernels take fp32 (got {x.dtype}); fp64 uses kernel='torch'"
        )
    return x.contiguous()


def triton_ranks(scaled_scores: Tensor) -> Tensor | None:
    """``[Q, N]`` smoothed ranks of fp32 ``scaled_scores`` (scores / tau); ``None`` if the kernel failed."""
    return apply_by_row_kind(
        _as_fp32(scaled_scores),
        lambda u, v: _launch("rank", _rank_kernel, u, v, factored=True),
        lambda x: _launch("rank", _rank_kernel, x, x, factored=False),
    )


def triton_rank_backward(scaled_scores: Tensor, grad_rank: Tensor) -> Tensor | None:
    """``[Q, N]`` gradient with respect to the scaled scores; ``None`` if the kernel failed."""
    return apply_by_row_kind(
        _as_fp32(scaled_scores),
        lambda u, v, g: _launch("rank backward", _rank_backward_kernel, u, v, g, factored=True),
        lambda x, g: _launch("rank backward", _rank_backward_kernel, x, x, g, factored=False),
        _as_fp32(grad_rank),
    )


register_kernel(
    FastKernel(
        "triton",
        triton_ranks,
        triton_rank_backward,
        triton_available,
        dtypes=(torch.float32,),  # fp64 stays on the chunked path
        needs_cuda=True,
        cpu_runner="TRITON_INTERPRET=1 for Triton's CPU interpreter",
        cpu_env={"TRITON_INTERPRET": "1"},
    )
)
