"""The COCO 1K protocol: the 5K Karpathy test split in five folds of 1,000 consecutive images, each
re-ranked on its own, LAVIS's recalls averaged over the folds."""

from __future__ import annotations

import numpy as np
import torch

from listwise_ranking.metrics import lavis_recalls

from .coco_ids import coco_image_ids
from .rerank import RerankView

__all__ = [
    "COCO_1K_FOLDS",
    "COCO_1K_IMAGES",
    "coco_1k_folds",
    "coco_1k_metrics",
    "is_coco_karpathy_test",
    "view_ground_truth",
]

#: COCO 1K: the 5K Karpathy test split in five folds of 1,000 consecutive images.
COCO_1K_FOLDS, COCO_1K_IMAGES = 5, 1000


def coco_1k_folds(dataset) -> list[RerankView]:
    """The five COCO 1K folds of a 5,000-image split: 1,000 consecutive images and their captions."""
    n_img = len(dataset.image)
    if n_img != COCO_1K_FOLDS * COCO_1K_IMAGES:
        raise ValueError(
            f"run.coco_1k: the COCO 1K protocol needs the 5,000-image COCO test split, this one has {n_img}"
        )
    txt2img = torch.tensor([dataset.txt2img[t] for t in range(len(dataset.text))])
    folds = []
    for f in range(COCO_1K_FOLDS):
        lo, hi = f * COCO_1K_IMAGES, (f + 1) * COCO_1K_IMAGES
        texts = ((txt2img >= lo) & (txt2img < hi)).nonzero().squeeze(1)
        folds.append(RerankView(torch.arange(lo, hi), texts))
    return folds


def view_ground_truth(dataset, view: RerankView) -> tuple[dict, dict]:
    """LAVIS's ``txt2img`` / ``img2txt`` renumbered to a view's local rows and columns."""
    img_pos = {int(i): r for r, i in enumerate(view.image_index.tolist())}
    txt_pos = {int(t): r for r, t in enumerate(view.text_index.tolist())}
    txt2img = {txt_pos[t]: img_pos[dataset.txt2img[t]] for t in txt_pos}
    img2txt = {img_pos[i]: [txt_pos[t] for t in dataset.img2txt[i] if t in txt_pos] for i in img_pos}
    return txt2img, img2txt


def coco_1k_metrics(dataset, folds: list[RerankView], fold_scores) -> dict[str, float]:
    """LAVIS's recalls on each COCO 1K fold (re-ranked within the fold), averaged over folds, as
    ``coco1k_<key>``."""
    per_fold = []
    for view, (s_i2t, s_t2i) in zip(folds, fold_scores):
        txt2img, img2txt = view_ground_truth(dataset, view)
        per_fold.append(lavis_recalls(s_i2t, s_t2i, txt2img, img2txt))
    keys = list(per_fold[0])
    return {f"coco1k_{k}": float(np.mean([m[k] for m in per_fold])) for k in keys}


def is_coco_karpathy_test(dataset) -> bool:
    """Whether an evaluation split is COCO's 5K Karpathy test split (by its COCO image ids)."""
    if len(dataset.image) != COCO_1K_FOLDS * COCO_1K_IMAGES or not hasattr(dataset, "annotation"):
        return False
    from .eccv_cxc import coco_karpathy_test_image_ids  # loads the eccv-caption package's data

    try:
        ids = coco_image_ids(dataset.annotation)
    except ValueError:  # file names without a COCO id
        return False
    return set(ids) == coco_karpathy_test_image_ids()
