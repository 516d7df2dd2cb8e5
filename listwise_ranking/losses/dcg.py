"""DCG helpers shared by the dense (:mod:`.smooth_ndcg`) and sparse (:mod:`.smooth_ndcg_topk`) paths.

Gains ``2^r - 1``, the ideal DCG by the paper's tie rule or the standard sorted one, the DCG of
smoothed ranks with its rank weights, and the per-row ``1 - DCG/IDCG`` both paths return.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "IDCG_CHUNK_ELEMENTS",
    "IDEAL_DCG_RULES",
    "LN2",
    "as_compute",
    "compute_dtype",
    "dcg_and_rank_weights_",
    "gains",
    "ideal_dcg",
    "normalised_loss",
    "loss_coefficient",
]

LN2 = math.log(2.0)
#: Elements per row chunk of :func:`ideal_dcg` (its sort temporaries take ~30 bytes per element).
IDCG_CHUNK_ELEMENTS = 1 << 20
#: ``ideal_dcg`` rules: the paper's tie rule, or the standard sorted ideal DCG.
IDEAL_DCG_RULES = ("paper", "sorted")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else accumulates in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_compute(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A fresh contiguous ``dtype`` copy of ``t`` (the caller modifies it in place)."""
    return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t.detach())


def gains(relevance: Tensor, dtype: torch.dtype) -> Tensor:
    """``2^r - 1`` in ``dtype``, a fresh tensor."""
    return as_compute(relevance, dtype).mul_(LN2).expm1_()


def ideal_dcg(gains: Tensor, relevance: Tensor, rule: str = "paper") -> Tensor:
    """The ideal DCG of each row, by the paper's rule or the standard one.

    ``paper``: ``IDCG_q = sum_i gain_qi / log2(1 + rank*_qi)``, ``rank*_qi = 1 + #{j : r_qj > r_qi}``;
    ties in relevance share the best rank of their group, as in the paper's formula.
    ``sorted``: ``IDCG_q = sum_p g_q(p) / log2(1 + p)`` with ``g_q(1) >= g_q(2) >= ...`` the row's
    gains in descending order, the normaliser of evaluation NDCG. The two agree on rows without
    tied non-zero gains. Rows are done in chunks of about :data:`IDCG_CHUNK_ELEMENTS`, so the
    sort's temporaries stay small.

    Args:
        gains: ``[Q, N]`` gains ``2^r - 1``.
        relevance: ``[Q, N]`` relevance the gains come from.
        rule: ``"paper"`` or ``"sorted"``.
    Returns:
        ``[Q]`` ideal DCG in the dtype of ``gains``.
    """
    if rule not in IDEAL_DCG_RULES:
        raise ValueError(f"ideal_dcg must be one of {IDEAL_DCG_RULES}, got {rule!r}")
    q, n = relevance.shape
    rows = max(1, IDCG_CHUNK_ELEMENTS // n)
    position = torch.arange(n, device=relevance.device)
    out = gains.new_empty(q)
    if rule == "sorted":
        discounts = 1.0 / torch.log2(2.0 + position.to(gains.dtype))
        for q0 in range(0, q, rows):
            out[q0 : q0 + rows] = (gains[q0 : q0 + rows].sort(dim=1, descending=True).values * discounts).sum(
                1
            )
        return out
    for q0 in range(0, q, rows):
        descending, order = relevance[q0 : q0 + rows].sort(dim=1, descending=True)
        starts_group = torch.ones_like(descending, dtype=torch.bool)
        starts_group[:, 1:] = descending[:, 1:] != descending[:, :-1]
        # items greater than the one at a sorted position = the position where its tie group starts
        greater = torch.where(starts_group, position, 0).cummax(dim=1).values
        sorted_gains = gains[q0 : q0 + rows].gather(1, order)
        out[q0 : q0 + rows] = (sorted_gains / torch.log2(2.0 + greater.to(gains.dtype))).sum(dim=1)
    return out


def dcg_and_rank_weights_(gains: Tensor, ranks: Tensor) -> tuple[Tensor, Tensor]:
    """``DCG_q = sum_i gain_qi / log2(1 + rank_qi)`` and the rank weights
    ``w_qi = -d DCG_q / d rank_qi = gain_qi ln2 / ((1 + rank_qi) ln^2(1 + rank_qi))``.

    Overwrites both inputs (``w`` is returned in ``gains``' memory) and needs one more ``[Q, N]``
    buffer. ``d(1 - DCG/IDCG)/d rank = w / IDCG``: the loss's gradient with respect to the ranks is
    ``w`` scaled per row, so backward can keep ``w`` alone.

    Args:
        gains: ``[Q, N]`` (or ``[Q, K]``); ranks: the same shape, smoothed ranks.
    Returns:
        ``[Q]`` DCG and ``w``, the shape of ``gains``.
    """
    log_term = torch.log1p(ranks)
    denominator = ranks.add_(1.0).mul_(log_term).mul_(log_term)
    dcg = torch.div(gains, log_term, out=log_term).sum(dim=1).mul_(LN2)
    return dcg, gains.mul_(LN2).div_(denominator)


def normalised_loss(dcg: Tensor, idcg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``1 - DCG/IDCG`` per row (0 where ``IDCG == 0``), with ``safe_idcg`` (1 there) and ``valid``
    (``IDCG > 0``), which backward needs."""
    valid = idcg > 0
    safe_idcg = torch.where(valid, idcg, torch.ones_like(idcg))
    return torch.where(valid, 1.0 - dcg / safe_idcg, torch.zeros_like(dcg)), safe_idcg, valid


def loss_coefficient(grad_loss: Tensor, safe_idcg: Tensor, valid: Tensor) -> Tensor:
    """``grad_loss_q / IDCG_q`` (0 on rows with ``IDCG == 0``): what scales row ``q``'s rank weights
    into ``d loss / d rank``."""
    return torch.where(valid, grad_loss.to(safe_idcg.dtype) / safe_idcg, torch.zeros_like(safe_idcg))
