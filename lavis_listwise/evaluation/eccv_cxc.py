"""ECCV Caption (mAP@R, R-Precision, R@1) and CxC (R@1/5/10) metrics for COCO Karpathy-test retrieval.

Both benchmarks re-annotate the 5,000-image COCO Karpathy test split with extra positives, keyed by COCO
image ids and COCO caption annotation ids (:mod:`.coco_ids` maps LAVIS's numbering to them). They are
computed by the ``eccv-caption`` package (NAVER, MIT license), which bundles its ground truth;
:func:`eccv_caption_metrics` turns LAVIS score matrices into the package's ranked-id lists. (This module
is not named ``eccv_caption``, so it cannot shadow the package.)

Reference: Chun et al., "ECCV Caption: Correcting False Negatives by Collecting Machine-and-Human-verified
Image-Caption Associations for MS-COCO", ECCV 2022; Parekh et al., "Crisscrossed Captions", EACL 2021.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from listwise_ranking.metrics import row_chunks  # the same row chunking as the other ranking metrics

if TYPE_CHECKING:
    from eccv_caption import Metrics

__all__ = ["ECCV_CAPTION_METRIC_KEYS", "coco_karpathy_test_image_ids", "eccv_caption_metrics"]

#: Keys returned by :func:`eccv_caption_metrics`; ``txt_`` = image->text, ``img_`` = text->image (as LAVIS).
ECCV_CAPTION_METRIC_KEYS = (
    "txt_eccv_map_at_r",
    "img_eccv_map_at_r",
    "txt_eccv_rprecision",
    "img_eccv_rprecision",
    "txt_eccv_r1",
    "img_eccv_r1",
    "txt_cxc_r1",
    "txt_cxc_r5",
    "txt_cxc_r10",
    "img_cxc_r1",
    "img_cxc_r5",
    "img_cxc_r10",
)

_CXC_KS = (1, 5, 10)
_DIRECTIONS = {"i2t": "txt", "t2i": "img"}


def coco_karpathy_test_image_ids() -> frozenset[int]:
    """The COCO ids of the 5,000 Karpathy test images (from the ``eccv-caption`` package's data)."""
    return _ground_truth().test_images


@dataclass(frozen=True)
class _GroundTruth:
    """The package's ``Metrics`` and what the input checks need from its ground truth."""

    metrics: Metrics
    query_images: frozenset[int]  # i2t queries of ECCV Caption and CxC
    query_captions: frozenset[int]  # t2i queries of ECCV Caption and CxC
    test_images: frozenset[int]  # the 5,000 Karpathy test images
    test_captions: frozenset[int]  # their 25,000 captions
    max_positives: dict[str, int]  # most ECCV positives of any query, per direction


@functools.lru_cache(maxsize=1)
def _ground_truth() -> _GroundTruth:
    """Load ``eccv_caption.Metrics`` (parses its bundled JSON) once per process."""
    from eccv_caption import Metrics  # lazy: only runs that ask for these metrics pay the import

    m = Metrics(verbose=False)
    return _GroundTruth(
        metrics=m,
        query_images=frozenset(m.eccv_gts["i2t"]) | frozenset(m.cxc_gts["i2t"]),
        query_captions=frozenset(m.eccv_gts["t2i"]) | frozenset(m.cxc_gts["t2i"]),
        test_images=frozenset(m.coco_gts["i2t"]),
        test_captions=frozenset(m.coco_gts["t2i"]),
        max_positives={d: max(len(v) for v in m.eccv_gts[d].values()) for d in ("i2t", "t2i")},
    )


def _unique_ids(ids: Sequence[int], n: int, name: str, axis: str) -> np.ndarray:
    """``[n]`` int64 array of ``ids``, checked against the score matrix size and for duplicates."""
    arr = np.asarray([int(i) for i in ids], dtype=np.int64)
    if arr.shape != (n,):
        raise ValueError(f"{name} has {arr.size} ids but the score matrices have {n} {axis}")
    if np.unique(arr).size != n:
        raise ValueError(f"{name} has duplicate ids; every {axis[:-1]} needs its own COCO id")
    return arr


def _ranked_ids(scores: torch.Tensor, ids: np.ndarray, k: int, name: str) -> list[list[int]]:
    """Candidate ids of each row's ``k`` highest scores, best first: ``[rows]`` lists of ``k`` ints."""
    out: list[list[int]] = []
    # Row chunks bound the extra memory to top-k indices (and a float32 copy of half-precision rows) instead
    # of a full argsort of e.g. 25,000 x 5,000 scores. Ties are broken however topk breaks them; LAVIS's
    # -100 fill outside its k_test re-ranked candidates only ties below rank k_test (256 in BLIP's COCO
    # configs), so it does not matter while k_test >= k.
    for rows in row_chunks(*scores.shape):
        chunk = scores[rows]
        if chunk.dtype not in (torch.float32, torch.float64):  # half / bfloat16 / int: topk in float32
            chunk = chunk.float()
        if torch.isnan(chunk).any():
            raise ValueError(f"{name} contains NaN scores, which would rank first")
        top = torch.topk(chunk, k, dim=1, largest=True, sorted=True).indices.cpu().numpy()
        out.extend(ids[top].tolist())
    return out


def eccv_caption_metrics(
    score_i2t: np.ndarray | torch.Tensor,
    score_t2i: np.ndarray | torch.Tensor,
    image_ids: Sequence[int],
    caption_ids: Sequence[int],
    top_n: int = 100,
) -> dict[str, float]:
    """ECCV Caption mAP@R / R-Precision / R@1 and CxC R@1/5/10 of COCO Karpathy-test score matrices.

    Args:
        score_i2t: ``[n_images, n_texts]`` image->text scores (numpy or torch, any float dtype/device).
        score_t2i: ``[n_texts, n_images]`` text->image scores.
        image_ids: ``[n_images]`` COCO image id of each image row/column (see
            :func:`coco_ids_from_annotation`).
        caption_ids: ``[n_texts]`` COCO caption annotation id of each text row/column.
        top_n: how many best-scored candidates per query are handed to the package; raised to the most
            ECCV positives of any query (mAP@R reads the top R; 48 for image->text) and to 10 (CxC R@10).
    Returns:
        Percentages (0-100) under :data:`ECCV_CAPTION_METRIC_KEYS`: ``txt_*`` is image->text retrieval,
        ``img_*`` text->image, as in LAVIS's ``txt_r1`` / ``img_r1``.
    Raises:
        ValueError: shapes or ids disagree, a score is NaN, or some image/caption that ECCV Caption or
            CxC queries is absent (they need the full 5,000-image Karpathy test split).
    """
    s_i2t, s_t2i = torch.as_tensor(score_i2t), torch.as_tensor(score_t2i)
    if s_i2t.dim() != 2 or s_t2i.dim() != 2 or s_t2i.shape != s_i2t.shape[::-1]:
        raise ValueError(
            f"score_i2t must be [n_images, n_texts] and score_t2i [n_texts, n_images], got "
            f"{tuple(s_i2t.shape)} and {tuple(s_t2i.shape)}"
        )
    if int(top_n) != top_n or top_n < 1:
        raise ValueError(f"top_n must be a positive integer, got {top_n!r}")
    n_images, n_texts = s_i2t.shape
    images = _unique_ids(image_ids, n_images, "image_ids", "images")
    captions = _unique_ids(caption_ids, n_texts, "caption_ids", "captions")

    gt = _ground_truth()
    # The package indexes the retrieved dicts by every query of its ground truth (KeyError otherwise), and
    # on a subset the scores would not be comparable to published ones, so require the whole split.
    given_images, given_captions = set(images.tolist()), set(captions.tolist())
    if not (gt.query_images <= given_images and gt.query_captions <= given_captions):
        raise ValueError(
            f"ECCV Caption / CxC need the 5,000-image COCO Karpathy test split: "
            f"{len(gt.test_images - given_images)} of its {len(gt.test_images)} images and "
            f"{len(gt.test_captions - given_captions)} of its {len(gt.test_captions)} captions are missing "
            f"from the {n_images} images / {n_texts} captions given"
        )

    retrieved: dict[str, dict[int, list[int]]] = {}
    for direction, scores, queries, candidates in (
        ("i2t", s_i2t, images, captions),
        ("t2i", s_t2i, captions, images),
    ):
        # Fewer than R candidates would make the package index past the end of the list.
        k = min(len(candidates), max(int(top_n), gt.max_positives[direction], max(_CXC_KS)))
        ranked = _ranked_ids(scores, candidates, k, f"score_{direction}")
        retrieved[direction] = dict(zip(queries.tolist(), ranked))

    m = gt.metrics
    # compute_eccv_metrics draws a tqdm bar on stderr whatever `verbose` says; swallow it.
    with contextlib.redirect_stderr(io.StringIO()):
        eccv = m.eccv_metrics(retrieved, "all")
    out: dict[str, float] = {}
    for name in ("eccv_map_at_r", "eccv_rprecision", "eccv_r1"):
        for direction, prefix in _DIRECTIONS.items():
            out[f"{prefix}_{name}"] = 100.0 * float(eccv[name][direction])
    for k in _CXC_KS:
        cxc = m.cxc_recalls(retrieved, "all", K=k)
        for direction, prefix in _DIRECTIONS.items():
            out[f"{prefix}_cxc_r{k}"] = 100.0 * float(cxc[direction])
    return {key: out[key] for key in ECCV_CAPTION_METRIC_KEYS}
