"""Ranking metrics over a query x candidate score matrix, computed in row chunks.

A 5,000 x 25,000 COCO score matrix is processed a few hundred rows at a time, so the extra memory
is a few top-k index blocks, not a copy of the matrix.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["recall_at_k", "ndcg_at_k", "map_at_r", "r_precision", "map_at_r_and_r_precision"]
__all__ += ["average_ranks", "dcg_discounts", "lavis_recalls", "row_spearman"]

#: Elements of one row chunk (rows x candidates) handled at once.
_CHUNK_ELEMENTS = 1 << 24


def _as_matrix(x, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [queries, candidates], got shape {tuple(t.shape)}")
    return t


def _check(scores, other, other_name: str, k: int) -> tuple[Tensor, Tensor, int]:
    s, o = _as_matrix(scores, "scores"), _as_matrix(other, other_name)
    if s.shape != o.shape:
        raise ValueError(f"{other_name} shape {tuple(o.shape)} does not match scores shape {tuple(s.shape)}")
    if s.numel() == 0:
        raise ValueError("scores must be non-empty")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return s, o.to(s.device), min(int(k), s.shape[1])


def row_chunks(n_rows: int, n_cols: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def dcg_discounts(k: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """``1 / log2(p + 2)`` for positions ``p = 0 .. k-1``."""
    return 1.0 / torch.log2(torch.arange(k, dtype=dtype, device=device) + 2.0)


def recall_at_k(scores, positive_mask, k: int) -> float:
    """Fraction of queries with at least one positive among their ``k`` best-scored candidates.

    Image->text: a hit if any ground-truth caption is in the top ``k`` (as LAVIS counts it).

    Args:
        scores: ``[Q, N]`` score of each candidate for each query.
        positive_mask: ``[Q, N]`` bool ground truth.
        k: cut-off (``k > N`` counts the whole list).
    Returns:
        Recall in ``[0, 1]`` (LAVIS prints it times 100).
    """
    s, pos, k = _check(scores, positive_mask, "positive_mask", k)
    pos = pos.to(torch.bool)
    hits = 0
    for rows in row_chunks(*s.shape):
        top = s[rows].topk(k, dim=1).indices
        hits += int(pos[rows].gather(1, top).any(dim=1).sum())
    return hits / s.shape[0]


def ndcg_at_k(scores, relevance, k: int) -> float:
    """Mean NDCG@k over rows, gain ``2^r - 1``, ideal DCG from each row's sorted relevance.

    A row whose relevance is all zero scores 0 and still counts in the mean (as in scikit-learn).
    Among tied scores the order is the one ``torch.topk`` returns.

    Args:
        scores: ``[Q, N]`` score of each candidate for each query.
        relevance: ``[Q, N]`` graded relevance ``>= 0``.
        k: cut-off (``k > N`` uses the whole list).
    Returns:
        NDCG@k in ``[0, 1]``.
    """
    s, rel, k = _check(scores, relevance, "relevance", k)
    rel = rel.to(torch.float64)
    discounts = dcg_discounts(k, device=s.device)
    total = 0.0
    for rows in row_chunks(*s.shape):
        r = rel[rows]
        top = s[rows].topk(k, dim=1).indices
        dcg = (torch.expm1(r.gather(1, top) * 0.6931471805599453) * discounts).sum(dim=1)
        ideal = (torch.expm1(r.topk(k, dim=1).values * 0.6931471805599453) * discounts).sum(dim=1)
        total += float(torch.where(ideal > 0, dcg / ideal.clamp(min=1e-300), torch.zeros_like(dcg)).sum())
    return total / s.shape[0]


def _precision_at_positives(scores, positive_mask) -> tuple[Tensor, Tensor]:
    """Per row: mAP@R and R-Precision, ``R`` = the row's number of positives.

    Candidates are ranked by a stable descending sort (tied scores: lower index first), one row chunk
    at a time; only the first ``max R`` positions of a chunk are kept.
    """
    s, pos, _ = _check(scores, positive_mask, "positive_mask", 1)
    pos = pos.to(torch.bool)
    n_pos = pos.sum(dim=1)
    empty = (n_pos == 0).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"{empty.numel()} query row(s) have no positive (first: {empty[:5].tolist()}); mAP@R and "
            "R-Precision need at least one per query"
        )
    map_r = torch.empty(s.shape[0], dtype=torch.float64)
    r_prec = torch.empty(s.shape[0], dtype=torch.float64)
    for rows in row_chunks(*s.shape):
        r = n_pos[rows]
        depth = int(r.max())
        order = s[rows].sort(dim=1, descending=True, stable=True).indices[:, :depth]
        hit = pos[rows].gather(1, order).to(torch.float64)  # [rows, depth]
        position = torch.arange(1, depth + 1, dtype=torch.float64, device=s.device)
        within = position[None, :] <= r[:, None]  # the first R positions of each row
        hit = hit * within
        precision = hit.cumsum(dim=1) / position  # P@i for i <= depth
        map_r[rows] = ((precision * hit).sum(dim=1) / r).cpu()
        r_prec[rows] = (hit.sum(dim=1) / r).cpu()
    return map_r, r_prec


def map_at_r(scores, positive_mask) -> float:
    """Mean over rows of mAP@R (Musgrave et al. 2020, as ECCV Caption reports it).

    For a query with ``R`` positives: ``mAP@R = (1/R) sum_{i=1..R} P@i * rel_i``, with ``rel_i``
    1 if the candidate at rank ``i`` is a positive and ``P@i`` the precision of the top ``i``.
    Tied scores are ranked lower candidate index first.

    Args:
        scores: ``[Q, N]`` score of each candidate for each query.
        positive_mask: ``[Q, N]`` bool, at least one positive per row.
    Returns:
        mAP@R in ``[0, 1]``.
    Raises:
        ValueError if a row has no positive.
    """
    return float(_precision_at_positives(scores, positive_mask)[0].mean())


def r_precision(scores, positive_mask) -> float:
    """Mean over rows of R-Precision: the share of positives among a query's top ``R``, ``R`` its
    number of positives. Same ranking and requirements as :func:`map_at_r`."""
    return float(_precision_at_positives(scores, positive_mask)[1].mean())


def map_at_r_and_r_precision(scores, positive_mask) -> tuple[float, float]:
    """:func:`map_at_r` and :func:`r_precision` from one ranking pass."""
    map_r, r_prec = _precision_at_positives(scores, positive_mask)
    return float(map_r.mean()), float(r_prec.mean())


def lavis_recalls(score_i2t, score_t2i, txt2img: dict, img2txt: dict) -> dict[str, float]:
    """The recalls of LAVIS's ``RetrievalTask._report_metrics`` (same ranking, same tie order, same
    keys, percent), without its side effect of appending to ``output_dir/evaluate.txt``.

    Args:
        score_i2t: ``[n_img, n_txt]``; score_t2i: ``[n_txt, n_img]`` (numpy).
        txt2img: caption -> its image; img2txt: image -> its captions.
    """

    def first_hit(scores: np.ndarray, positives) -> float:
        order = np.argsort(scores)[::-1]  # as LAVIS ranks, ties included
        return float(np.flatnonzero(np.isin(order, positives)).min())

    tr = np.array([first_hit(s, img2txt[i]) for i, s in enumerate(np.asarray(score_i2t))])
    ir = np.array([first_hit(s, [txt2img[t]]) for t, s in enumerate(np.asarray(score_t2i))])
    out = {}
    for prefix, ranks in (("txt", tr), ("img", ir)):
        for k in (1, 5, 10):
            out[f"{prefix}_r{k}"] = 100.0 * float((ranks < k).sum()) / len(ranks)
        out[f"{prefix}_r_mean"] = (out[f"{prefix}_r1"] + out[f"{prefix}_r5"] + out[f"{prefix}_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of each row's values, ties given their average rank (as ``scipy.stats.rankdata``).

    Args:
        values: ``[R, N]``.
    Returns:
        ``[R, N]`` float64 ranks.
    """
    n = values.shape[1]
    ordered, order = values.sort(dim=1)
    position = torch.arange(n, device=values.device).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, 0).cummax(dim=1).values
    last = torch.where(ends, position, n - 1).flip(1).cummin(dim=1).values.flip(1)
    ranks = torch.empty(values.shape, dtype=torch.float64, device=values.device)
    return ranks.scatter_(1, order, (first + last).to(torch.float64) / 2 + 1)


def row_spearman(x: Tensor, y: Tensor, keep: Tensor) -> Tensor:
    """``[R]`` Spearman correlation of ``x`` and ``y`` over each row's kept entries; NaN where
    fewer than two are kept or either side is constant there."""
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    # dropped entries rank after every kept one, so the kept entries' ranks are their ranks among them
    rx = average_ranks(torch.where(keep, x.double(), inf))
    ry = average_ranks(torch.where(keep, y.double(), inf))
    w = keep.double()
    n = w.sum(dim=1)
    rx = (rx - (rx * w).sum(dim=1, keepdim=True) / n.clamp(min=1)[:, None]) * w
    ry = (ry - (ry * w).sum(dim=1, keepdim=True) / n.clamp(min=1)[:, None]) * w
    var = (rx * rx).sum(dim=1) * (ry * ry).sum(dim=1)
    rho = (rx * ry).sum(dim=1) / var.sqrt().clamp(min=1e-300)
    return torch.where((n >= 2) & (var > 0), rho, torch.full_like(rho, float("nan")))
