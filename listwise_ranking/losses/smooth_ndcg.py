"""Smooth-NDCG (S-NDCG), the listwise loss of arXiv 2305.16566, with a memory-lean backward.

For a query ``q`` with scores ``s_q.`` and graded relevance ``r_q.`` over ``N`` candidates::

    gain_qi  = 2^(r_qi) - 1
    rank_qi  = 1 + sum_{j != i} sigmoid((s_qj - s_qi) / tau)
    DCG_q    = sum_i gain_qi / log2(1 + rank_qi)
    IDCG_q   = sum_i gain_qi / log2(1 + rank*_qi),   rank*_qi = 1 + #{j : r_qj > r_qi}
    loss_q   = 1 - DCG_q / IDCG_q          (0 where IDCG_q == 0)

That ``IDCG`` is the paper's (``ideal_dcg="paper"``, the default): every item of a tied relevance
group gets the group's best rank, so a row with several tied positives has an ``IDCG`` no ranking
reaches and a loss floor above 0 (three tied positives: 0.29). ``ideal_dcg="sorted"`` uses the
standard ideal DCG instead, the gains sorted in descending order at ranks 1, 2, 3, ... (what
evaluation NDCG divides by), so a perfectly ordered row has loss 0.

The smoothed rank needs every (q, i, j) triple. Written with broadcasting, autograd keeps several
``Q x N x N`` tensors alive; here a custom autograd function keeps only ``O(Q*N)`` state and
recomputes the sigmoids in tiles during the backward pass, using the closed-form gradient::

    d rank_qi / d s_qj = sigma'(x_qij) / tau   (j != i),   x_qij = (s_qj - s_qi) / tau
    d loss / d s_qk   = (1/tau) * (sum_i g_qi P_qik - g_qk sum_j P_qkj),   P = sigma'(x)

The ranks and their gradient come from the chunked path (:mod:`.chunked`) or a fast kernel
(:mod:`.kernels`); the DCG helpers are in :mod:`.dcg`, shared with the sparse path
(:mod:`.smooth_ndcg_topk`).

Arguments are checked once, at the public entry points (:func:`smooth_ndcg_loss`,
:class:`SmoothNDCGLoss`); :meth:`SmoothNDCGLoss.unchecked` is the training hot path, without checks
(the caller checks that the final loss is finite, e.g. ``checked_loss_values`` in the listwise task,
once per step for all terms). The chunked path never synchronises with the device; the fast kernels
synchronise once per forward and once per backward, to send each row to its form
(:func:`.kernels.centred_exp.by_row_kind`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .chunked import DEFAULT_BLOCK, DEFAULT_TILE_BYTES, rank_backward, smoothed_ranks
from .dcg import (
    IDEAL_DCG_RULES,
    as_compute,
    compute_dtype,
    dcg_and_rank_weights_,
    gains,
    ideal_dcg,
    loss_coefficient,
    normalised_loss,
)
from .kernels import KERNELS, get_kernel, resolve_kernel
from .smooth_ndcg_topk import sparse_smooth_ndcg_per_row

__all__ = [
    "IDEAL_DCG_RULES",
    "KERNELS",
    "REDUCTIONS",
    "SmoothNDCGLoss",
    "check_loss_params",
    "check_loss_inputs",
    "ideal_dcg",
    "smooth_ndcg_loss",
]

REDUCTIONS = ("mean", "sum", "none")


def _ranks(scaled: Tensor, kernel: str, block: int, tile_bytes: int) -> Tensor:
    out = None
    if kernel != "torch" and scaled.dtype in (fast := get_kernel(kernel)).dtypes:
        out = fast.ranks(scaled)
    return out if out is not None else smoothed_ranks(scaled, block, tile_bytes)


def _ranks_backward(scaled: Tensor, grad_rank: Tensor, kernel: str, block: int, tile_bytes: int) -> Tensor:
    out = None
    if kernel != "torch" and scaled.dtype in (fast := get_kernel(kernel)).dtypes:
        out = fast.rank_backward(scaled, grad_rank)
    return out if out is not None else rank_backward(scaled, grad_rank, block, tile_bytes)


class _SmoothNDCG(torch.autograd.Function):
    """Per-row ``1 - DCG/IDCG`` with the closed-form backward (tiled or a fast kernel).

    Memory: besides its inputs it keeps only the ``[Q, N]`` rank weights for backward (the scaled
    scores are recomputed there); forward and backward each peak at about five ``[Q, N]`` buffers
    in the compute dtype (fast kernels; the chunked path needs two fewer, plus its tiles).
    """

    @staticmethod
    def forward(
        ctx,
        scores: Tensor,
        relevance: Tensor,
        tau: float,
        block: int,
        tile_bytes: int,
        kernel: str,
        ideal: str,
    ):
        dtype = compute_dtype(scores.dtype)
        row_gains = gains(relevance, dtype)
        idcg = ideal_dcg(row_gains, relevance.detach(), ideal)
        ranks = _ranks(as_compute(scores, dtype).div_(tau), kernel, block, tile_bytes)
        dcg, rank_weights = dcg_and_rank_weights_(row_gains, ranks)
        del ranks
        loss, safe_idcg, valid = normalised_loss(dcg, idcg)
        ctx.save_for_backward(scores, rank_weights, safe_idcg, valid)
        ctx.tau, ctx.block, ctx.tile_bytes, ctx.kernel = tau, block, tile_bytes, kernel
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor):
        scores, rank_weights, safe_idcg, valid = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None
        # d loss_q / d rank_qi = w_qi / IDCG_q; the rank backward is linear in it, so run it on w and
        # scale each row afterwards (no [Q, N] gradient-of-ranks buffer)
        coef = loss_coefficient(grad_loss, safe_idcg, valid)
        scaled = as_compute(scores, rank_weights.dtype).div_(ctx.tau)
        grad = _ranks_backward(scaled, rank_weights, ctx.kernel, ctx.block, ctx.tile_bytes)
        del scaled
        return grad.mul_((coef / ctx.tau)[:, None]).to(scores.dtype), None, None, None, None, None, None


def check_loss_params(
    tau: float = 0.01,
    reduction: str = "mean",
    kernel: str = "auto",
    relevance_topk: int | None = None,
    ideal_dcg: str = "paper",
    block: int = DEFAULT_BLOCK,
    tile_bytes: int = DEFAULT_TILE_BYTES,
) -> None:
    """Check Smooth-NDCG's parameters, the one place they are checked.

    Raises:
        ValueError whose message starts with the parameter's name (``ListwiseConfig`` prefixes it
        with ``model.listwise.``).
    """
    if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be > 0 and finite, got {tau!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")
    if relevance_topk is not None and (
        isinstance(relevance_topk, bool) or not isinstance(relevance_topk, int) or relevance_topk < 1
    ):
        raise ValueError(f"relevance_topk must be a positive integer or null, got {relevance_topk!r}")
    if ideal_dcg not in IDEAL_DCG_RULES:
        raise ValueError(f"ideal_dcg must be one of {list(IDEAL_DCG_RULES)}, got {ideal_dcg!r}")
    if block < 1 or tile_bytes < 1:
        raise ValueError("block and tile_bytes must be >= 1")


def check_loss_inputs(scores: Tensor, relevance: Tensor) -> None:
    """Check the tensors of one call: types, shapes, devices, and (one device-to-host sync each)
    finite scores and finite, non-negative relevance.

    Raises:
        ValueError naming the offending input.
    """
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise ValueError("scores must be a floating-point torch.Tensor")
    if not isinstance(relevance, Tensor):
        raise ValueError("relevance must be a torch.Tensor")
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [queries, candidates], got shape {tuple(scores.shape)}")
    if relevance.shape != scores.shape:
        raise ValueError(
            f"relevance shape {tuple(relevance.shape)} does not match scores shape {tuple(scores.shape)}"
        )
    if scores.numel() == 0:
        raise ValueError(f"scores must be non-empty, got shape {tuple(scores.shape)}")
    if relevance.device != scores.device:
        raise ValueError(f"relevance is on {relevance.device} but scores on {scores.device}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contains NaN or infinite values")
    rel = relevance.float() if not relevance.is_floating_point() else relevance
    if not bool(torch.isfinite(rel).all()):
        raise ValueError("relevance contains NaN or infinite values")
    if bool((rel < 0).any()):
        raise ValueError("relevance must be >= 0 (gains are 2^r - 1)")


def _loss_unchecked(
    scores: Tensor, relevance: Tensor, tau, reduction, kernel, relevance_topk, ideal_dcg, block, tile_bytes
) -> Tensor:
    """:func:`smooth_ndcg_loss` on arguments already checked; the parameters in
    :func:`check_loss_params`'s order."""
    if relevance_topk is not None and relevance_topk < scores.shape[1]:
        per_row = sparse_smooth_ndcg_per_row(
            scores, relevance, float(tau), relevance_topk, int(tile_bytes), ideal_dcg=ideal_dcg
        )
    else:
        kernel = resolve_kernel(kernel, scores.device)
        per_row = _SmoothNDCG.apply(
            scores, relevance, float(tau), int(block), int(tile_bytes), kernel, ideal_dcg
        )
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row


def smooth_ndcg_loss(
    scores: Tensor,
    relevance: Tensor,
    tau: float = 0.01,
    reduction: str = "mean",
    *,
    block: int = DEFAULT_BLOCK,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    kernel: str = "auto",
    relevance_topk: int | None = None,
    ideal_dcg: str = "paper",
) -> Tensor:
    """Smooth-NDCG loss ``1 - S-NDCG`` of each query row.

    Args:
        scores: ``[Q, N]`` similarity of each query (row) to each candidate (column); any float
            dtype, computed in fp32 (fp64 for fp64 inputs). Differentiable.
        relevance: ``[Q, N]`` graded relevance ``>= 0`` (RSC gives ``[0, 1]``). Not differentiated.
        tau: sigmoid temperature of the smoothed rank, ``> 0``.
        reduction: ``"mean"`` over all rows (rows with IDCG 0 count as 0), ``"sum"``, or
            ``"none"`` for the ``[Q]`` vector.
        block: candidate tile edge of the tiled computation.
        tile_bytes: scratch memory per tile; peak extra memory is ``O(Q*N)`` plus this.
        kernel: ``"torch"`` (chunked tiles, portable), ``"compiled"`` (fused ``torch.compile``
            reductions; falls back to ``"torch"`` with one warning if compilation fails),
            ``"triton"`` (hand-written Triton kernels, CUDA; same fallback), or ``"auto"``
            (compiled on CUDA, torch elsewhere); see :mod:`listwise_ranking.losses.kernels`.
        relevance_topk: if set, an approximation: only each row's ``relevance_topk`` most relevant
            candidates keep their gain (the others count as 0) and only they are ranked, in
            ``O(Q * relevance_topk * N)`` (chunked PyTorch, ``kernel`` is not used).
        ideal_dcg: the normaliser, ``"paper"`` (the paper's tie rule, see the module docstring) or
            ``"sorted"`` (the standard ideal DCG, as evaluation NDCG uses).
    Returns:
        Scalar (``mean``/``sum``) or ``[Q]`` loss, fp32 (fp64 for fp64 scores).
    Raises:
        ValueError for a bad argument (:func:`check_loss_params`, :func:`check_loss_inputs`).
    """
    params = (tau, reduction, kernel, relevance_topk, ideal_dcg, block, tile_bytes)
    check_loss_params(*params)
    check_loss_inputs(scores, relevance)
    return _loss_unchecked(scores, relevance, *params)


class SmoothNDCGLoss(nn.Module):
    """``nn.Module`` form of :func:`smooth_ndcg_loss`: ``forward(scores [Q, N], relevance [Q, N])``.

    The parameters are checked once, here; ``forward`` checks the tensors of each call,
    :meth:`unchecked` (what the listwise models call every training step) does not.
    """

    is_listwise = True  # takes graded relevance, usable as ``model.listwise.loss``
    check_params = staticmethod(check_loss_params)

    def __init__(
        self,
        tau: float = 0.01,
        reduction: str = "mean",
        kernel: str = "auto",
        relevance_topk: int | None = None,
        ideal_dcg: str = "paper",
    ) -> None:
        super().__init__()
        check_loss_params(tau, reduction, kernel, relevance_topk, ideal_dcg)
        self.tau = float(tau)
        self.reduction = reduction
        self.kernel = kernel
        self.relevance_topk = relevance_topk
        self.ideal_dcg = ideal_dcg

    def forward(self, scores: Tensor, relevance: Tensor) -> Tensor:
        check_loss_inputs(scores, relevance)
        return self.unchecked(scores, relevance)

    def unchecked(self, scores: Tensor, relevance: Tensor) -> Tensor:
        """``forward`` without the per-call tensor checks (their device-to-host synchronisations)."""
        return _loss_unchecked(
            scores, relevance, self.tau, self.reduction, self.kernel, self.relevance_topk,
            self.ideal_dcg, DEFAULT_BLOCK, DEFAULT_TILE_BYTES,
        )  # fmt: skip

    def extra_repr(self) -> str:
        topk = f", relevance_topk={self.relevance_topk}" if self.relevance_topk else ""
        ideal = f", ideal_dcg={self.ideal_dcg!r}" if self.ideal_dcg != "paper" else ""
        return f"tau={self.tau}, reduction={self.reduction!r}, kernel={self.kernel!r}{topk}{ideal}"
