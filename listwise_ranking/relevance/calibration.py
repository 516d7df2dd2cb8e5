"""How well a relevance setting's gains match human judgments, a rule to choose the setting, and a
label-free floor.

RSC ranks captions well: on COCO a caption people verified as a positive has a much higher best
cosine to an image's own captions than one nobody judged relevant. What the listwise loss trains on is
the *gain* ``2^r - 1`` of the shaped relevance ``r``, and the paper's mapping ``(1 + cos) / 2`` gives
an unrelated caption about half a positive's gain. The figures here say how a setting spends the
list's gain (:func:`calibration_figures`); :func:`select_setting` is the documented rule that picks a
setting from them; :func:`auto_floor_from_table` is ``floor: auto``, computed from the captions alone.

A setting is a shaping (``floor``, ``sharpen``) of the same best cosines
(:func:`~listwise_ranking.relevance.best_cosines`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..metrics import map_at_r_and_r_precision, row_spearman
from .rsc import best_cosines, shape_cosines

__all__ = [
    "DEFAULT_FLOORS",
    "RULE",
    "MIN_RELEVANT_KEPT",
    "RelevanceSetting",
    "auto_floor_from_table",
    "calibration_figures",
    "equal_error_cosine",
    "calibration_table",
    "select_setting",
    "settings_grid",
    "shaped",
]

#: The selection rule keeps at least this share of the judged-relevant extra pairs above gain 0.
MIN_RELEVANT_KEPT = 0.9
#: The rule in words, as reports print it.
RULE = (
    f"among the settings that keep at least {MIN_RELEVANT_KEPT:.0%} of the judged-relevant extra pairs above "
    "gain 0, the one whose judged-irrelevant pairs take the smallest share of an in-batch list's gain"
)
#: Floors a report compares by default.
DEFAULT_FLOORS = (0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7)
#: Images and captions :func:`auto_floor_from_table` samples (a COCO-size table in about a second).
_AUTO_IMAGES, _AUTO_CAPTIONS = 2_000, 10_000


@dataclass(frozen=True)
class RelevanceSetting:
    """One shaping of RSC cosines: ``floor`` (``None``: the paper's ``(1 + cos) / 2``) and ``sharpen``."""

    label: str
    floor: float | None = None
    sharpen: float = 1.0

    @property
    def keys(self) -> dict:
        """The ``model.listwise.relevance`` keys that select it."""
        return {"floor": self.floor} | ({"sharpen": self.sharpen} if self.sharpen != 1.0 else {})


def auto_floor_from_table(
    table: Tensor,
    image_caption_index: Tensor,
    *,
    max_images: int = _AUTO_IMAGES,
    max_captions: int = _AUTO_CAPTIONS,
) -> float:
    """``floor: auto`` for a caption-embedding table, from the captions and their grouping alone.

    An image's own captions are paraphrases of one another: each caption's best cosine to the other
    captions of its image is what a relevant caption looks like. The best cosines of images to
    other images' captions are, nearly all, what an unrelated one looks like. The floor is the
    equal-error cut between the two (:func:`equal_error_cosine`), over up to ``max_images`` images and
    ``max_captions`` captions drawn with a fixed seed (the same captions give the same floor on every
    rank and machine).

    Args:
        table: ``[T, D]`` caption embeddings.
        image_caption_index: ``[I, K]`` table rows of each image's captions, ``-1`` padded.
    Raises:
        ValueError: no image has two captions, or there is only one image.
    """
    n_images, n_captions = image_caption_index.shape[0], table.shape[0]
    g = torch.Generator().manual_seed(0)
    images = torch.randperm(n_images, generator=g)[:max_images].sort().values
    captions = torch.randperm(n_captions, generator=g)[:max_captions].sort().values
    index = image_caption_index[images].to(torch.long)
    valid = index >= 0
    emb = F.normalize(table.float(), dim=-1)
    own_emb = emb[index.clamp(min=0)]  # [n, K, D]
    pair = torch.einsum("ikd,ijd->ikj", own_emb, own_emb)
    pair.masked_fill_(~(valid[:, :, None] & valid[:, None, :]), float("-inf"))
    pair.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    paraphrase = pair.amax(dim=2)[valid]
    paraphrase = paraphrase[paraphrase.isfinite()]
    column = torch.full((n_captions,), -1, dtype=torch.long)
    column[captions] = torch.arange(len(captions))
    own_column = torch.where(valid, column[index.clamp(min=0)], -1)
    own = torch.zeros(len(images), len(captions) + 1, dtype=torch.bool)
    own.scatter_(1, torch.where(own_column >= 0, own_column, len(captions)), True)  # last column: padding
    other = best_cosines(own_emb, emb[captions], valid)[~own[:, :-1]]
    if paraphrase.numel() == 0 or other.numel() == 0:
        raise ValueError("floor auto needs two images or more, and images with two captions or more")
    return equal_error_cosine(paraphrase, other)


def equal_error_cosine(relevant: Tensor, irrelevant: Tensor) -> float:
    """The cosine at which the share of relevant pairs below it equals the share of irrelevant pairs
    at or above it: the equal-error cut between the two (the middle of the gap where they do not
    overlap; NaN if either is empty)."""
    if relevant.numel() == 0 or irrelevant.numel() == 0:
        return float("nan")
    pos = np.sort(relevant.double().cpu().numpy())
    neg = np.sort(irrelevant.double().cpu().numpy())

    def first(past) -> float:  # bisection for the first cut where past(misses, false alarms) holds
        lo, hi = float(min(pos[0], neg[0])), float(max(pos[-1], neg[-1])) + 1e-9
        for _ in range(60):
            mid = (lo + hi) / 2
            misses = np.searchsorted(pos, mid, side="left") / len(pos)  # rises with the cut
            false_alarms = 1.0 - np.searchsorted(neg, mid, side="left") / len(neg)  # falls
            lo, hi = (lo, mid) if past(misses, false_alarms) else (mid, hi)
        return hi

    return round((first(lambda m, f: m >= f) + first(lambda m, f: m > f)) / 2, 4)


def _gain(relevance: Tensor) -> Tensor:
    return torch.expm1(relevance.double() * math.log(2.0))


def calibration_figures(
    relevance: Tensor, annotated: Tensor, relevant: Tensor, judged: Tensor, batch_size: int
) -> dict[str, float]:
    """How a relevance spends the list's gain, against judgments.

    Over the judged queries' rows, each image's own captions left out: judged-relevant pairs are the
    extra positives people confirmed; every other pair of a judged row counts as judged irrelevant
    (ECCV Caption and CxC ship positives only: what was not confirmed is the negative).

    Args:
        relevance: ``[I, T]`` training relevance in ``[0, 1]`` (e.g. RSC cosines shaped by a setting).
        annotated: ``[I, T]`` bool, each image's own captions.
        relevant: ``[I, T]`` bool, judged-relevant pairs (own captions may be included; they are left out).
        judged: ``[I]`` bool, the images whose rows were judged.
        batch_size: the run's global batch size ``B``: an in-batch list holds the image's own caption
            and ``B - 1`` captions of other images.
    Returns:
        ``gain_relevant`` / ``gain_irrelevant``: mean gain ``2^r - 1`` of the two groups (a positive
        has 1) and ``gain_ratio`` between them; ``relevant_at_zero``: share of judged-relevant pairs with
        gain 0; ``irrelevant_share``: the judged-irrelevant pairs' expected share of an in-batch list's
        total gain, ``(B-1) m_irr / (1 + (B-1)(m_irr + m_rel))``, where ``m_*`` are the mean gains per
        other-image caption of each group (the image's own caption brings 1).
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")
    rows = judged.to(torch.bool).nonzero().flatten()
    if rows.numel() == 0:
        raise ValueError("no judged query: nothing to calibrate against")
    own = annotated[rows].to(torch.bool)
    rel = relevant[rows].to(torch.bool) & ~own
    irr = ~rel & ~own
    gain = _gain(relevance[rows])
    n_other = int((~own).sum())
    g_rel, g_irr = gain[rel], gain[irr]
    m_rel, m_irr = float(g_rel.sum()) / n_other, float(g_irr.sum()) / n_other
    others = batch_size - 1
    mean_rel = float(g_rel.mean()) if g_rel.numel() else float("nan")
    mean_irr = float(g_irr.mean()) if g_irr.numel() else float("nan")
    return {
        "gain_relevant": mean_rel,
        "gain_irrelevant": mean_irr,
        "gain_ratio": mean_rel / mean_irr if mean_irr > 0 else float("inf"),
        "relevant_at_zero": float((g_rel == 0).double().mean()) if g_rel.numel() else float("nan"),
        "irrelevant_share": others * m_irr / (1.0 + others * (m_irr + m_rel)),
    }


def shaped(cosines: Tensor, setting: RelevanceSetting) -> Tensor:
    """A copy of ``cosines`` mapped by ``setting`` (:func:`~listwise_ranking.relevance.shape_cosines`)."""
    return shape_cosines(cosines.clone(), setting.floor, setting.sharpen)


def select_setting(
    rows: Sequence[tuple[RelevanceSetting, dict]], min_relevant_kept: float = MIN_RELEVANT_KEPT
) -> RelevanceSetting | None:
    """The documented rule: among the settings that keep at least ``min_relevant_kept`` of the
    judged-relevant extras above gain 0, the one whose judged-irrelevant pairs take the smallest share
    of the list's gain at the run's batch size (ties: the earlier row). ``None`` if none qualifies.

    Apply it to validation or calibration judgments only, never to the split a result is reported on.
    """
    kept = [(figures["irrelevant_share"], i) for i, (_, figures) in enumerate(rows)
            if 1.0 - figures["relevant_at_zero"] >= min_relevant_kept]  # fmt: skip
    if not kept:
        return None
    return rows[min(kept)[1]][0]


def settings_grid(floors: Sequence[float], auto: float | None) -> list[RelevanceSetting]:
    """The paper's mapping, each fixed floor, then ``floor: auto`` (its value computed) if given."""
    grid = [RelevanceSetting("paper (1 + cos) / 2")]
    grid += [RelevanceSetting(f"floor {f:g}", float(f)) for f in floors]
    if auto is not None:
        grid.append(RelevanceSetting(f"floor auto (= {auto:.3f})", auto))
    return grid


def _spearman(x: Tensor, y: Tensor) -> float:
    """Spearman correlation of two ``[n]`` vectors (ties averaged)."""
    return float(row_spearman(x.view(1, -1), y.view(1, -1), torch.ones(1, x.numel(), dtype=torch.bool))[0])


def calibration_table(
    cosines: Tensor,
    annotated: Tensor,
    relevant: Tensor,
    judged: Tensor,
    settings: Sequence[RelevanceSetting],
    batch_size: int,
    ratings: tuple[Tensor, Tensor, Tensor] | None = None,
) -> dict:
    """One judgment source against every setting: ranking quality and calibration.

    Args:
        cosines, annotated, relevant, judged, batch_size: as :func:`calibration_figures` (``cosines``
            the best cosines of the split).
        settings: the shapings to compare (e.g. :func:`settings_grid`).
        ratings: graded pairs ``(image [n], caption [n], rating [n])`` for a Spearman per setting over
            the rated pairs of other images' captions.
    Returns:
        ``{"judged_images", "relevant_pairs", "equal_error_cosine", "rows": [...], "recommended"}``; each
        row has the setting's ``label`` and ``keys``, ``map_r`` / ``r_precision`` (percent, the relevance
        as an image->text ranker of the judged images' other captions, the judged-relevant ones as the
        positives), ``spearman`` against the ratings (``None`` without), and :func:`calibration_figures`.
        ``recommended``: the label :func:`select_setting` picks, or ``None``.
    """
    rows_index = judged.to(torch.bool).nonzero().flatten()
    own = annotated[rows_index].to(torch.bool)
    extra = relevant[rows_index].to(torch.bool) & ~own
    ranked = extra.any(dim=1)  # mAP@R needs a positive per query
    cos = cosines[rows_index]
    out: dict = {
        "judged_images": int(rows_index.numel()),
        "relevant_pairs": int(extra.sum()),
        "equal_error_cosine": equal_error_cosine(cos[extra], cos[~extra & ~own]),
        "rows": [],
    }
    for setting in settings:
        relevance = shaped(cosines, setting)
        scores = relevance[rows_index].masked_fill(own, float("-inf"))[ranked]
        map_r, r_prec = (
            map_at_r_and_r_precision(scores, extra[ranked]) if ranked.any() else (float("nan"),) * 2
        )
        spearman = None
        if ratings is not None:  # own captions left out: every setting gives them 1
            other = ~annotated[ratings[0], ratings[1]].to(torch.bool)
            if int(other.sum()) > 1:
                spearman = _spearman(relevance[ratings[0], ratings[1]][other], ratings[2][other])
        figures = calibration_figures(relevance, annotated, relevant, judged, batch_size)
        row = {
            "label": setting.label,
            "keys": setting.keys,
            "map_r": 100 * map_r,
            "r_precision": 100 * r_prec,
        }
        out["rows"].append(row | {"spearman": spearman} | figures)
    picked = select_setting([(s, r) for s, r in zip(settings, out["rows"])])
    out["recommended"] = None if picked is None else picked.label
    return out
