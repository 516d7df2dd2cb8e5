"""Evaluation against ground-truth graded relevance shipped with a dataset, and the agreement of a
training relevance with it.

A dataset that knows how relevant each caption is to each image (the synthetic demo data knows
this from its scenes, a user may have human grades) supplies one relevance file per evaluation
split, in the format of :mod:`listwise_ranking.relevance.files`, through the run YAML::

    run:
      gt_relevance: {val: /data/relevance/val.npy, test: /data/relevance/test.npz}
      gt_positive_threshold: 1.0    # plausible positives: pairs with relevance >= this

A relative path is taken under LAVIS's cache root, like ``run.coco_captions_json`` and dataset
storage. The task reads and checks each file when the datasets are built
(:func:`load_ground_truth`). Every query needs at least one plausible positive, in both directions.
Each evaluation of the split then adds, in percent (:func:`ground_truth_metrics`):

* ``gt_txt_ndcg{5,10,20}`` / ``gt_img_ndcg{5,10,20}``: NDCG@K, gain ``2^r - 1``, against the ground
  truth. Image->text ranks each image's row over captions; text->image uses the transpose.
* ``gt_txt_map_r`` / ``gt_img_map_r`` and ``gt_txt_r_precision`` / ``gt_img_r_precision``: mAP@R
  and R-Precision with the plausible positives as the relevant set (``R`` = their number for the
  query), as ECCV Caption reports them for its human-verified positives.

:func:`relevance_agreement` says how well a training relevance (RSC, shaped or not) matches the
ground truth, before any training.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from listwise_ranking.errors import ConfigError, DataError
from listwise_ranking.metrics import average_ranks, map_at_r_and_r_precision, ndcg_at_k, row_spearman
from listwise_ranking.relevance.calibration import calibration_figures
from listwise_ranking.relevance.files import read_relevance_file

__all__ = [
    "GT_NDCG_KS",
    "GroundTruth",
    "average_ranks",
    "gt_relevance_paths",
    "ground_truth_metrics",
    "load_ground_truth",
    "positive_threshold",
    "relevance_agreement",
]

GT_NDCG_KS = (5, 10, 20)
_KEY = "run.gt_relevance"
#: Elements of one row chunk of :func:`relevance_agreement` (a few float64 copies each).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class GroundTruth:
    """One evaluation split's ground truth.

    Attributes:
        relevance: ``[n_images, n_captions]`` float32 graded relevance in ``[0, 1]``.
        positive_threshold: pairs with relevance at least this are plausible positives.
        path: the file it was read from.
        key: the YAML key that named it (``run.gt_relevance.<split>``).
    """

    relevance: Tensor
    positive_threshold: float
    path: Path
    key: str

    @property
    def positives(self) -> Tensor:
        """``[n_images, n_captions]`` bool plausible positives."""
        return self.relevance >= self.positive_threshold


def positive_threshold(value: Any) -> float:
    """``run.gt_positive_threshold`` as a float in ``(0, 1]`` (default 1.0: every statement holds)."""
    key = "run.gt_positive_threshold"
    try:
        out = float(1.0 if value is None else value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number in (0, 1], got {value!r}") from None
    if not (math.isfinite(out) and 0.0 < out <= 1.0):
        raise ConfigError(f"{key} must be a number in (0, 1], got {value!r}")
    return out


def gt_relevance_paths(value: Any, eval_splits: set[str]) -> dict[str, Path]:
    """``run.gt_relevance`` as ``{split: absolute path}``; ``{}`` when unset.

    A relative path is under LAVIS's cache root (``env.cache_root``), like dataset storage.

    Raises:
        ConfigError: not a mapping, a split that is not evaluated, or an empty path.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{_KEY} must map evaluation split names to relevance files, e.g. {{val: val.npy}}, got {value!r}"
        )
    out = {}
    for split, path in value.items():
        if split not in eval_splits:
            raise ConfigError(
                f"{_KEY}.{split}: {split!r} is not an evaluation split of this run "
                f"(run.valid_splits + run.test_splits: {sorted(eval_splits)})"
            )
        if not path:
            raise ConfigError(f"{_KEY}.{split} is empty; give a .npy or .npz relevance file")
        path = str(path)
        if not os.path.isabs(os.path.expanduser(path)):
            from lavis.common.utils import get_cache_path

            path = get_cache_path(path)
        out[str(split)] = Path(os.path.expanduser(path))
    return out


def load_ground_truth(path: str | os.PathLike, dataset, split: str, threshold: float) -> GroundTruth:
    """Read ``path`` for an evaluation split and check it against the split.

    Args:
        path: the relevance file.
        dataset: the split (LAVIS ``RetrievalEvalDataset``: ``image`` and ``text`` lists).
        split: its name, for messages (``run.gt_relevance.<split>``).
        threshold: ``run.gt_positive_threshold``.
    Raises:
        DataError naming the key and the file: see :func:`~listwise_ranking.relevance.read_relevance_file`,
        a query (image or caption) without any plausible positive, and an image whose own annotated
        captions are not all plausible positives (the first such row named).
    """
    key = f"{_KEY}.{split}"
    path = Path(path)
    matrix = read_relevance_file(path, len(dataset.image), len(dataset.text), key).to_dense()
    positives = matrix >= threshold
    for what, have in (("images", positives.any(dim=1)), ("captions", positives.any(dim=0))):
        lacking = (~have).nonzero().flatten()
        if lacking.numel():
            raise DataError(
                f"{key}: {str(path)!r}: {lacking.numel()} of the {have.numel()} {what} have no plausible "
                f"positive (relevance >= run.gt_positive_threshold = {threshold:g}; first indices: "
                f"{lacking[:5].tolist()}); mAP@R and R-Precision need at least one per query"
            )
    # An image's own annotated captions are plausible positives by definition: a file of the right
    # shape from another split, or with its rows out of order, fails here.
    from .graded import annotated_pairs

    wrong = annotated_pairs(dataset) & ~positives
    rows = wrong.any(dim=1).nonzero().flatten()
    if rows.numel():
        row = int(rows[0])
        col = int(wrong[row].nonzero()[0])
        raise DataError(
            f"{key}: {str(path)!r}: row {row} (image {dataset.image[row]!r}) gives its own annotated "
            f"caption {col} ({dataset.text[col]!r}) relevance {float(matrix[row, col]):.4g}, below "
            f"run.gt_positive_threshold = {threshold:g}; {rows.numel()} of the {positives.shape[0]} images "
            "have such captions. An image's own captions are positives by definition: is the file from "
            "another split, or are its rows or columns in another order than LAVIS's?"
        )
    return GroundTruth(matrix, threshold, path, key)


def ground_truth_metrics(score_i2t, score_t2i, ground_truth: GroundTruth) -> dict[str, float]:
    """NDCG@5/10/20, mAP@R and R-Precision against the ground truth, both directions, in percent.

    Args:
        score_i2t: ``[n_images, n_captions]`` scores; score_t2i: ``[n_captions, n_images]``.
        ground_truth: the split's :class:`GroundTruth`.
    """
    s_i2t, s_t2i = torch.as_tensor(score_i2t), torch.as_tensor(score_t2i)
    rel, pos = ground_truth.relevance, ground_truth.positives
    out = {}
    for k in GT_NDCG_KS:
        out[f"gt_txt_ndcg{k}"] = 100.0 * ndcg_at_k(s_i2t, rel, k)
        out[f"gt_img_ndcg{k}"] = 100.0 * ndcg_at_k(s_t2i, rel.t(), k)
    for prefix, scores, positives in (("gt_txt", s_i2t, pos), ("gt_img", s_t2i, pos.t())):
        map_r, r_prec = map_at_r_and_r_precision(scores, positives)
        out[f"{prefix}_map_r"], out[f"{prefix}_r_precision"] = 100.0 * map_r, 100.0 * r_prec
    return out


def _mean_spearman(x: Tensor, y: Tensor, keep: Tensor) -> tuple[float, int]:
    """Mean per-row Spearman over rows where it is defined, and the number of rows left out."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, x.shape[1]))
    rhos = torch.cat(
        [
            row_spearman(x[r : r + rows].contiguous(), y[r : r + rows].contiguous(), keep[r : r + rows])
            for r in range(0, x.shape[0], rows)
        ]
    )
    defined = ~rhos.isnan()
    return (float(rhos[defined].mean()) if defined.any() else float("nan")), int((~defined).sum())


def relevance_agreement(
    relevance: Tensor,
    ground_truth: Tensor,
    annotated: Tensor | None = None,
    k: int = 10,
    positive_threshold: float = 1.0,
    batch_size: int | None = None,
) -> dict[str, float | int | None]:
    """How well a training relevance agrees with the ground truth on one split.

    Both relevance sources give an image's own (annotated) captions the top relevance by
    construction, so those pairs are left out: what is measured is how a source grades the
    captions it has to judge. Measured in both directions, since image->text lists are rows and
    text->image lists are columns of the same matrix.

    Args:
        relevance: ``[I, T]`` training relevance of the split (e.g. the task's RSC for it).
        ground_truth: ``[I, T]`` ground-truth relevance.
        annotated: ``[I, T]`` bool, the annotated (image, caption) pairs left out; ``None``: none.
        k: the cut-off of the NDCG.
        positive_threshold: ground truth at least this is a plausible positive.
    Returns:
        * ``spearman_i2t`` / ``spearman_t2i``: mean over images (rows) / captions (columns) of the
          Spearman rank correlation (ties averaged) between the two relevances over the row's
          non-annotated pairs; rows where either side is constant are left out, and counted in
          ``spearman_rows_left_out``;
        * ``ndcg{k}_i2t`` / ``ndcg{k}_t2i``: NDCG@k in percent of the training relevance used as the
          ranking scores, against the ground truth, over the non-annotated pairs;
        * ``gain_p10`` / ``gain_p50`` / ``gain_p90``: quantiles of the training gain ``2^r - 1`` of the
          non-annotated pairs (exact, rounded to 1e-4), i.e. the share of a positive's gain they receive;
        * ``gain_mae``: mean absolute difference between the training gain and the ground-truth gain
          ``2^gt - 1`` over the non-annotated pairs. Spearman and NDCG judge only the order, which a
          monotone shaping (``floor``, ``sharpen``) leaves unchanged (apart from ties it creates); this
          judges the magnitudes, which set how much the loss weighs each pair against the positives;
        * ``gain_mean_gt_zero``: mean training gain of non-annotated pairs whose ground truth is 0
          (nothing the caption states holds), and ``gain_mean_gt_positive`` of the non-annotated
          plausible positives (``None`` if there are none);
        * with ``batch_size`` (the run's global batch, an in-batch list's length), the calibration
          figures of :func:`~listwise_ranking.relevance.calibration.calibration_figures` with the plausible
          positives as the judged-relevant pairs and every other pair as judged irrelevant:
          ``gain_relevant``, ``gain_irrelevant``, ``gain_ratio``, ``relevant_at_zero``,
          ``irrelevant_share`` and ``batch_size``, as the relevance report gives them against human
          judgments.
    """
    if relevance.shape != ground_truth.shape or relevance.dim() != 2:
        raise ValueError(
            f"relevance {tuple(relevance.shape)} and ground_truth {tuple(ground_truth.shape)} must be one "
            "[I, T] shape"
        )
    # float32 whole matrices (a COCO 5K split is 125M pairs); the Spearman chunks are ranked in float64
    rel, gt = relevance.detach().cpu().float(), ground_truth.detach().cpu().float()
    annotated = torch.zeros(rel.shape, dtype=torch.bool) if annotated is None else annotated.cpu().bool()
    keep = ~annotated
    out: dict[str, float | int | None] = {}
    rho_i2t, left_i2t = _mean_spearman(rel, gt, keep)
    rho_t2i, left_t2i = _mean_spearman(rel.t(), gt.t(), keep.t())
    out["spearman_i2t"], out["spearman_t2i"] = rho_i2t, rho_t2i
    out["spearman_rows_left_out"] = left_i2t + left_t2i
    scores = rel.masked_fill(annotated, float("-inf"))
    gains_gt = gt.masked_fill(annotated, 0.0)
    out[f"ndcg{k}_i2t"] = 100.0 * ndcg_at_k(scores, gains_gt, k)
    out[f"ndcg{k}_t2i"] = 100.0 * ndcg_at_k(scores.t(), gains_gt.t(), k)

    gain = torch.expm1(rel * math.log(2.0))
    kept_gain = gain[keep]
    # exact quantiles (numpy's partition: any size; torch.histc's float32 bin counts stop at 2^24)
    quantiles = np.quantile(kept_gain.numpy(), (0.1, 0.5, 0.9)) if kept_gain.numel() else [float("nan")] * 3
    for q, value in zip((10, 50, 90), quantiles):
        out[f"gain_p{q}"] = round(float(value), 4)
    out["gain_mae"] = float((kept_gain - torch.expm1(gt[keep] * math.log(2.0))).abs().double().mean())
    zero, positive = keep & (gt == 0), keep & (gt >= positive_threshold)
    out["gain_mean_gt_zero"] = float(gain[zero].double().mean()) if zero.any() else None
    out["gain_mean_gt_positive"] = float(gain[positive].double().mean()) if positive.any() else None
    if batch_size is not None:
        judged = torch.ones(rel.shape[0], dtype=torch.bool)
        relevant = gt >= positive_threshold
        out |= calibration_figures(rel, annotated, relevant, judged, batch_size) | {"batch_size": batch_size}
    return out
