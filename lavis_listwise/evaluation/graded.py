"""Graded metrics of an evaluation split: NDCG@5/10/20 in both directions against RSC relevance."""

from __future__ import annotations

import torch

from listwise_ranking.metrics import ndcg_at_k
from listwise_ranking.relevance import caption_groups_to_index, rsc_relevance_from_table

__all__ = ["NDCG_KS", "annotated_pairs", "rsc_ndcg_metrics", "split_rsc_relevance"]

NDCG_KS = (5, 10, 20)


def annotated_pairs(dataset) -> torch.Tensor:
    """``[n_images, n_captions]`` bool: the annotated (image, caption) pairs of an evaluation split."""
    positive = torch.zeros(len(dataset.image), len(dataset.text), dtype=torch.bool)
    for img, caps in dataset.img2txt.items():
        positive[img, caps] = True
    return positive


def split_rsc_relevance(dataset, relevance) -> torch.Tensor:
    """RSC relevance ``[n_images, n_captions]`` of an evaluation split (a LAVIS ``RetrievalEvalDataset``
    or the plugin's), with the caption cache and shaping of ``relevance`` (a ``RelevanceConfig``).
    A ``floor: auto`` that training has not resolved is computed from this split's captions."""
    emb = relevance.caption_cache().get(dataset.text)
    index = getattr(dataset, "image_caption_index", None)
    if index is None:  # a stock LAVIS eval dataset
        index = caption_groups_to_index([dataset.img2txt[i] for i in range(len(dataset.image))])
    relevance = relevance.with_auto_floor(emb, index)
    return rsc_relevance_from_table(
        emb, index, torch.arange(len(dataset.text)), annotated_pairs(dataset), **relevance.shaping
    )


def rsc_ndcg_metrics(score_i2t, score_t2i, relevance: torch.Tensor) -> dict[str, float]:
    """``txt_ndcg<k>`` (image->text) and ``img_ndcg<k>`` (text->image, the transposed relevance), in
    percent, for ``k`` in :data:`NDCG_KS`."""
    s_i2t, s_t2i = torch.as_tensor(score_i2t), torch.as_tensor(score_t2i)
    out = {}
    for k in NDCG_KS:
        out[f"txt_ndcg{k}"] = 100.0 * ndcg_at_k(s_i2t, relevance, k)
        out[f"img_ndcg{k}"] = 100.0 * ndcg_at_k(s_t2i, relevance.t(), k)
    return out
