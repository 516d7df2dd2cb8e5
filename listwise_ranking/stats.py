"""Paired comparison of two training arms run from the same seeds (the demo's evidence table)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PairedDifference", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """``treatment - control`` over seeds: mean, sample std, and a two-sided paired t-test.

    ``p_value`` is ``nan`` with fewer than two seeds, ``0``/``1`` when every difference is equal
    (zero spread: the sign alone decides).
    """

    n: int
    mean: float
    std: float
    t: float
    p_value: float

    def beyond_std(self, k: float) -> bool:
        """Whether the mean difference is more than ``k`` standard deviations above zero."""
        return self.n > 1 and self.mean > k * self.std

    def as_dict(self) -> dict[str, float | None]:
        """For JSON: ``t`` and ``p_value`` are ``None`` where undefined (one seed) or infinite."""

        def finite(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "t": finite(self.t),
            "p_value": finite(self.p_value),
        }


def paired_difference(treatment: Sequence[float], control: Sequence[float]) -> PairedDifference:
    """Compare per-seed values of two arms (same seeds, same order).

    Args:
        treatment: one value per seed (e.g. listwise NDCG@10).
        control: the other arm's values for the same seeds (e.g. pairwise).
    """
    if len(treatment) != len(control) or not treatment:
        raise ValueError(f"need one value per seed in both arms, got {len(treatment)} and {len(control)}")
    diffs = [float(a) - float(b) for a, b in zip(treatment, control)]
    n, mean = len(diffs), statistics.fmean(diffs)
    if n < 2:
        return PairedDifference(n, mean, 0.0, float("nan"), float("nan"))
    std = statistics.stdev(diffs)
    if std == 0.0:
        t = math.copysign(math.inf, mean) if mean else 0.0
        return PairedDifference(n, mean, 0.0, t, 1.0 if mean == 0 else 0.0)
    from scipy.stats import t as student_t

    t = mean / (std / math.sqrt(n))
    return PairedDifference(n, mean, std, t, float(2.0 * student_t.sf(abs(t), df=n - 1)))


def retrieval_concentration(scores, k: int = 5) -> dict[str, float]:
    """How much the top-``k`` lists of different queries repeat the same candidates (hubness).

    A model that has collapsed onto a query-independent "popularity" of candidates returns the same
    few candidates for every query; this is what the demo's listwise arm did.

    Args:
        scores: ``[Q, N]`` score of every candidate for every query.
        k: list length looked at.
    Returns:
        ``top10_share``: fraction of all top-``k`` slots held by the 10 most frequent candidates
        (``10 / N`` when every candidate appears equally often); ``never_retrieved``: fraction of
        candidates in no top-``k`` list; ``popularity_share``: fraction of the variance of the
        row-centred scores explained by a per-candidate offset (0 when candidates have no
        query-independent score, 1 when every query orders them alike).
    """
    import torch

    s = torch.as_tensor(scores, dtype=torch.float64)
    n = s.shape[1]
    counts = torch.bincount(s.topk(min(k, n), dim=1).indices.flatten(), minlength=n).double()
    centred = s - s.mean(dim=1, keepdim=True)
    offset = centred.mean(dim=0)
    total = float(centred.pow(2).mean())
    return {
        "top10_share": float(counts.sort(descending=True).values[:10].sum() / counts.sum()),
        "never_retrieved": float((counts == 0).double().mean()),
        "popularity_share": float(offset.pow(2).mean()) / total if total > 0 else 0.0,
    }
