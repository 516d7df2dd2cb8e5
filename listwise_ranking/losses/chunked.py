"""The chunked PyTorch path of Smooth-NDCG's smoothed rank and its closed-form gradient.

Portable (any device, any float dtype) and the reference the fast kernels
(:mod:`listwise_ranking.losses.kernels`) are tested against. The sigmoid matrix is evaluated in
``block x block`` tiles of a few queries at a time, so memory stays ``O(Q*N)`` plus one tile.

``P = sigma'`` is symmetric and ``sigma(-x) = 1 - sigma(x)``, so each tile ``(a, b)`` of candidates
also yields tile ``(b, a)`` for free: only the upper triangle of tiles is evaluated (about half the
sigmoid work), and ``sigma' = sigma * (1 - sigma)`` costs no second exponential.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DEFAULT_BLOCK", "DEFAULT_TILE_BYTES", "rank_backward", "smoothed_ranks"]

#: Bytes of scratch memory per tile (one or two ``[chunk, block, block]`` buffers).
DEFAULT_TILE_BYTES = 8 * 1024 * 1024
#: Candidate block edge: the sigmoid matrix is evaluated in ``block x block`` tiles.
DEFAULT_BLOCK = 128


def _blocks(n: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, n)) for start in range(0, n, block)]


def _chunk_rows(block: int, elem_bytes: int, buffers: int, tile_bytes: int) -> int:
    """Queries per tile so that ``buffers`` tensors of ``[rows, block, block]`` fit ``tile_bytes``."""
    return max(1, tile_bytes // (buffers * block * block * elem_bytes))


def smoothed_ranks(
    scaled_scores: Tensor, block: int = DEFAULT_BLOCK, tile_bytes: int = DEFAULT_TILE_BYTES
) -> Tensor:
    """Smoothed rank ``1 + sum_{j != i} sigmoid(x_qj - x_qi)`` of every item.

    Args:
        scaled_scores: ``[Q, N]`` scores already divided by ``tau``.
    Returns:
        ``[Q, N]`` ranks in the dtype of ``scaled_scores``, each in ``[1, N]``.
    """
    q, n = scaled_scores.shape
    block = min(block, n)
    rows = _chunk_rows(block, scaled_scores.element_size(), 1, tile_bytes)
    # sigma(0) = 1/2 on the diagonal is counted by the tiles; the "+1" of the rank minus it is 1/2.
    ranks = torch.full_like(scaled_scores, 0.5)
    spans = _blocks(n, block)
    for q0 in range(0, q, rows):
        x = scaled_scores[q0 : q0 + rows]
        r = ranks[q0 : q0 + rows]
        for ai, (a0, a1) in enumerate(spans):
            for b0, b1 in spans[ai:]:
                # tile[c, i, j] = sigma(x_j - x_i), i in block a, j in block b
                tile = (x[:, None, b0:b1] - x[:, a0:a1, None]).sigmoid_()
                r[:, a0:a1] += tile.sum(dim=2)
                if b0 != a0:
                    # sigma(x_i - x_j) = 1 - sigma(x_j - x_i): block b's ranks against block a.
                    r[:, b0:b1] += (a1 - a0) - tile.sum(dim=1)
    return ranks


def rank_backward(
    scaled_scores: Tensor, grad_rank: Tensor, block: int = DEFAULT_BLOCK, tile_bytes: int = DEFAULT_TILE_BYTES
) -> Tensor:
    """``sum_i g_qi d rank_qi / d x_qk`` for all ``q, k`` without a ``Q x N x N`` tensor.

    Args:
        scaled_scores: ``[Q, N]`` scores divided by ``tau``.
        grad_rank: ``[Q, N]`` gradient of the loss with respect to the ranks.
    Returns:
        ``[Q, N]`` gradient with respect to ``scaled_scores``.
    """
    q, n = scaled_scores.shape
    block = min(block, n)
    rows = _chunk_rows(block, scaled_scores.element_size(), 2, tile_bytes)
    grad = torch.zeros_like(scaled_scores)
    spans = _blocks(n, block)
    for q0 in range(0, q, rows):
        x = scaled_scores[q0 : q0 + rows]
        g = grad_rank[q0 : q0 + rows]
        out = grad[q0 : q0 + rows]
        for ai, (a0, a1) in enumerate(spans):
            ga = g[:, a0:a1]
            for b0, b1 in spans[ai:]:
                gb = g[:, b0:b1]
                p = (x[:, None, b0:b1] - x[:, a0:a1, None]).sigmoid_()
                p.addcmul_(p, p, value=-1.0)  # sigma' = sigma (1 - sigma), symmetric in (i, j)
                # item k in block a: sum_i g_i P_ik - g_k sum_j P_kj, over j in block b
                out[:, a0:a1] += torch.bmm(p, gb.unsqueeze(2)).squeeze(2) - ga * p.sum(dim=2)
                if b0 != a0:
                    out[:, b0:b1] += torch.bmm(ga.unsqueeze(1), p).squeeze(1) - gb * p.sum(dim=1)
    return grad
