"""Smooth-NDCG written the way the published code writes it: every ``Q x N x N`` tensor materialised.

Kept as the baseline for tests (value and gradient parity through plain autograd) and for
``benchmarks/bench_smooth_ndcg.py``. Do not train with it: memory grows as ``Q * N^2``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["smooth_ndcg_loss_reference"]


def smooth_ndcg_loss_reference(scores: Tensor, relevance: Tensor, tau: float = 0.01) -> Tensor:
    """Per-row ``1 - DCG/IDCG`` (``[Q]``), autograd through broadcast ``Q x N x N`` tensors."""
    n = scores.shape[1]
    off_diag = 1 - torch.eye(n, dtype=scores.dtype, device=scores.device)
    gains = 2**relevance - 1
    # ideal ranks: 1 + #{j : r_j > r_i}
    rel_rep = relevance.unsqueeze(2).repeat(1, 1, n)
    rel_diff = rel_rep.permute(0, 2, 1) - rel_rep
    ideal_rank = torch.where(rel_diff > 0, 1.0, 0.0).to(scores.dtype).sum(dim=-1) + 1
    idcg = (gains / torch.log2(1 + ideal_rank)).sum(dim=-1)
    # smoothed ranks: 1 + sum_{j != i} sigmoid((s_j - s_i) / tau)
    s_rep = scores.unsqueeze(2).repeat(1, 1, n)
    s_diff = s_rep.permute(0, 2, 1) - s_rep
    rank = (torch.sigmoid(s_diff / tau) * off_diag).sum(dim=-1) + 1
    dcg = (gains / torch.log2(1 + rank)).sum(dim=-1)
    valid = idcg > 0
    return torch.where(
        valid, 1 - dcg / torch.where(valid, idcg, torch.ones_like(idcg)), torch.zeros_like(dcg)
    )
