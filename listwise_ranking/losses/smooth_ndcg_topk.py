"""Sparse Smooth-NDCG: only each query's ``K`` most relevant candidates carry gain (an approximation).

With the other candidates' gains set to 0, only the ``K`` kept items need a smoothed rank, each still
against all ``N`` candidates, so the cost drops from ``O(Q*N^2)`` to ``O(Q*K*N)``. It is exactly
S-NDCG on the relevance with everything outside the top ``K`` of each row zeroed; how far that is
from full S-NDCG depends on how much gain the dropped candidates held.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .chunked import DEFAULT_TILE_BYTES
from .dcg import compute_dtype, dcg_and_rank_weights_, gains, ideal_dcg, loss_coefficient, normalised_loss

__all__ = ["sparse_smooth_ndcg_per_row"]


def _chunk(k: int, n: int, elem_bytes: int, tile_bytes: int) -> int:
    return max(1, tile_bytes // max(1, 2 * k * n * elem_bytes))


class _SparseSmoothNDCG(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, relevance: Tensor, tau: float, topk: int, tile_bytes: int, ideal: str):
        dtype = compute_dtype(scores.dtype)
        x = scores.detach().to(dtype) / tau
        rel_top, top = relevance.detach().to(dtype).topk(topk, dim=1)  # [Q, K]
        top_gains = gains(rel_top, dtype)
        idcg = ideal_dcg(top_gains, rel_top, ideal)  # the ideal DCG of the truncated relevance
        x_top = x.gather(1, top)
        ranks = torch.empty_like(x_top)
        rows = _chunk(topk, x.shape[1], x.element_size(), tile_bytes)
        for q0 in range(0, x.shape[0], rows):
            sl = slice(q0, q0 + rows)
            # [c, K, N] = sigma(x_j - x_i) for kept i; the j = i term is 1/2
            ranks[sl] = 0.5 + (x[sl, None, :] - x_top[sl, :, None]).sigmoid_().sum(dim=2)
        dcg, rank_weights = dcg_and_rank_weights_(top_gains, ranks)  # overwrites top_gains and ranks
        loss, safe_idcg, valid = normalised_loss(dcg, idcg)
        ctx.save_for_backward(x, x_top, top, rank_weights, safe_idcg, valid)
        ctx.tau, ctx.tile_bytes, ctx.input_dtype = tau, tile_bytes, scores.dtype
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor):
        x, x_top, top, rank_weights, safe_idcg, valid = ctx.saved_tensors
        g = rank_weights * loss_coefficient(grad_loss, safe_idcg, valid)[:, None]  # dL/d rank, [Q, K]
        grad = torch.zeros_like(x)
        rows = _chunk(top.shape[1], x.shape[1], x.element_size(), ctx.tile_bytes)
        for q0 in range(0, x.shape[0], rows):
            sl = slice(q0, q0 + rows)
            p = (x[sl, None, :] - x_top[sl, :, None]).sigmoid_()
            p.addcmul_(p, p, value=-1.0)  # sigma'(x_j - x_i), [c, K, N]
            # d rank_i / d x_j = sigma'(x_j - x_i); d rank_i / d x_i = -sum_{j != i} sigma'(x_j - x_i).
            # Both sums include j = i (sigma'(0)); the two terms cancel.
            grad[sl] += torch.bmm(g[sl].unsqueeze(1), p).squeeze(1)
            grad[sl].scatter_add_(1, top[sl], -g[sl] * p.sum(dim=2))
        return (grad / ctx.tau).to(ctx.input_dtype), None, None, None, None, None


def sparse_smooth_ndcg_per_row(
    scores: Tensor,
    relevance: Tensor,
    tau: float,
    topk: int,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    *,
    ideal_dcg: str = "paper",
) -> Tensor:
    """``[Q]`` ``1 - S-NDCG`` with gains only on each row's ``topk`` most relevant candidates.

    Unchecked: :func:`~listwise_ranking.losses.smooth_ndcg_loss` validates its arguments and calls this.

    Args:
        scores: ``[Q, N]`` (differentiable); relevance: ``[Q, N]`` graded relevance >= 0.
        topk: kept candidates per row (``>= 1``); ``topk >= N`` is the exact loss.
        ideal_dcg: ``"paper"`` or ``"sorted"``, as in :func:`~listwise_ranking.losses.smooth_ndcg_loss`.
    """
    return _SparseSmoothNDCG.apply(
        scores, relevance, float(tau), min(topk, scores.shape[1]), tile_bytes, ideal_dcg
    )
