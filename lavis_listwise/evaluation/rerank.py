"""Fast ITC + ITM re-ranking evaluation for LAVIS's BLIP and ALBEF retrieval models.

Same semantics as LAVIS's ``compute_sim_matrix`` (``lavis/models/albef_models/__init__.py``): ITC
similarity for every pair; the top ``k_test`` captions of every image and the top ``k_test`` images
of every caption re-scored by the ITM cross-encoder; final score ``itm + itc`` there and ``-100``
elsewhere. What changes is how the ITM work is done:

* the ITM logit of a pair does not depend on which direction asked for it, so each distinct
  (image, caption) pair is scored once, even when both directions (or several views, such as the
  COCO 1K folds) select it;
* many images' pairs go through one batched forward of the packed cross-encoder
  (:mod:`.packed_encoder`: each image's keys/values projected once, real tokens only);
* ALBEF's text-only layers (below ``fusion_layer``) run once per caption, in the ITC pass
  (:mod:`.features`);
* under ``torch.distributed`` every rank encodes only its share of images and captions; ranks own
  the ITM pairs of their own images, and the scores are summed once over ranks (no ``-100`` sums).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from ..distributed import rank_and_world
from .features import RetrievalFeatures, encode_retrieval_features, eval_autocast
from .packed_encoder import packed_itm_logits

__all__ = [
    "DEFAULT_MAX_PAIRS",
    "RerankView",
    "candidate_pairs",
    "compute_sim_matrix_fast",
    "itm_batches",
    "itm_pair_scores",
    "rerank_views",
    "view_similarity",
]

#: Default pairs per ITM forward: cache-sized on CPU (measured: 256 is fastest), large on GPUs.
DEFAULT_MAX_PAIRS = {"cpu": 256, "cuda": 4096}


@dataclass(frozen=True)
class RerankView:
    """A sub-problem to re-rank: the images ``image_index`` against the captions ``text_index``.

    The whole split is ``RerankView(arange(n_img), arange(n_txt))``; a COCO 1K fold is its images
    with their captions.
    """

    image_index: Tensor  # [n_img_view] long
    text_index: Tensor  # [n_txt_view] long


def view_similarity(sims: Tensor, view: RerankView, k_test: int) -> Tensor:
    """The ``[n_img_view, n_txt_view]`` block of ``sims`` ``[n_img, n_txt]`` that a view re-ranks.

    Raises:
        ValueError if ``k_test`` is larger than the view's images or captions.
    """
    sub = sims.index_select(0, view.image_index.to(sims.device)).index_select(
        1, view.text_index.to(sims.device)
    )
    if int(k_test) > min(sub.shape):
        raise ValueError(
            f"run.k_test = {k_test} is larger than the candidates ({sub.shape[0]} images, "
            f"{sub.shape[1]} captions)"
        )
    return sub


def candidate_pairs(sims: Tensor, view: RerankView, k_test: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ITC top-``k_test`` of every row and column of a view, as LAVIS selects them.

    Returns:
        ``i2t_sim, i2t_idx``: ``[n_img_view, k]`` top similarities and view-local caption columns;
        ``t2i_sim, t2i_idx``: ``[n_txt_view, k]`` the same for captions against the view's images.
    """
    sub = view_similarity(sims, view, k_test)
    k = int(k_test)
    i2t_sim, i2t_idx = sub.topk(k, dim=1)
    t2i_sim, t2i_idx = sub.t().topk(k, dim=1)
    return i2t_sim, i2t_idx, t2i_sim, t2i_idx


def itm_batches(image_of_pair: Tensor, max_pairs: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Pack pairs (sorted by image) into ITM batches of whole images, ``<= max_pairs`` pairs each.

    Returns a list of ``(images [G], rows [N], row_group [N])``: ``rows`` indexes the pair list and
    ``row_group`` says which of the batch's images each row pairs with (non-decreasing).
    """
    images, counts = torch.unique_consecutive(image_of_pair, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    segments = []  # (image, first pair, count); an image with more pairs than a batch is split
    for img, start, count in zip(images.tolist(), starts.tolist(), counts.tolist()):
        for s in range(start, start + count, max_pairs):
            segments.append((img, s, min(max_pairs, start + count - s)))
    segments.sort(key=lambda seg: -seg[2])  # similar sizes side by side: little padding in the grid
    out, batch, size = [], [], 0
    for seg in segments + [None]:
        if seg is None or size + seg[2] > max_pairs:
            if batch:
                rows = torch.cat([torch.arange(s, s + c) for _, s, c in batch])
                group = torch.repeat_interleave(
                    torch.arange(len(batch)), torch.tensor([c for _, _, c in batch])
                )
                out.append((torch.tensor([img for img, _, _ in batch]), rows, group))
            batch, size = [], 0
        if seg is not None:
            batch.append(seg)
            size += seg[2]
    return out


@torch.no_grad()
def itm_pair_scores(
    model,
    features: RetrievalFeatures,
    pair_image: Tensor,
    pair_text: Tensor,
    max_pairs: int | None = None,
    amp: bool = False,
    progress: bool = True,
) -> Tensor:
    """ITM "match" logits of (image, caption) pairs, computed by the rank that owns each image.

    Args:
        pair_image, pair_text: ``[U]`` global indices, sorted by image (as :func:`torch.unique` of
            ``image * n_txt + text`` leaves them).
        max_pairs: pairs per ITM forward (default :data:`DEFAULT_MAX_PAIRS` for the device).
    Returns: ``[U]`` float32 logits on CPU, the same on every rank.
    """
    device = model.device
    max_pairs = max_pairs or DEFAULT_MAX_PAIRS.get(device.type, 1024)
    i0, i1 = features.image_range
    own = (pair_image >= i0) & (pair_image < i1)
    own_rows = own.nonzero().squeeze(1)
    scores = torch.zeros(len(pair_image), dtype=torch.float32, device=device)
    batches = itm_batches(pair_image[own_rows], max_pairs) if len(own_rows) else []
    bar = tqdm(total=len(own_rows), desc="ITM re-ranking", unit="pair", disable=not progress, leave=False)
    with eval_autocast(device, amp):
        for images, rows, row_group in batches:
            flat = own_rows[rows]
            txt = pair_text[flat]
            mask = features.text_mask[txt]
            length = int(mask.sum(1).max())
            mask = mask[:, :length].to(device)
            ids = features.text_ids[txt, :length].to(device)
            states = None
            if features.text_states is not None:
                states = features.text_states[txt.to(features.text_states.device), :length].to(device)
            feats = features.image_feats[(images - i0).to(features.image_feats.device)].to(device)
            logits = packed_itm_logits(
                model, feats, ids, mask, row_group.to(device), states, features.first_fusion_layer
            )
            scores[flat.to(device)] = logits.float()
            bar.update(len(rows))
    bar.close()
    if rank_and_world()[1] > 1:
        dist.all_reduce(scores)  # each pair was scored by exactly one rank, zeros elsewhere
    return scores.cpu()


@torch.no_grad()
def rerank_views(
    model,
    features: RetrievalFeatures,
    views: Sequence[RerankView],
    k_test: int,
    max_pairs: int | None = None,
    amp: bool = False,
    progress: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """LAVIS's re-ranked score matrices for each view, scoring each distinct pair once overall.

    Returns: per view, ``(score_i2t [n_img_view, n_txt_view], score_t2i [n_txt_view, n_img_view])``
    float32 numpy arrays: ``itm + itc`` for the ITC top-``k_test`` candidates, ``-100`` elsewhere.
    """
    n_txt = features.sims.shape[1]
    selected, keys = [], []
    for view in views:
        i2t_sim, i2t_idx, t2i_sim, t2i_idx = (t.cpu() for t in candidate_pairs(features.sims, view, k_test))
        img, txt = view.image_index.cpu(), view.text_index.cpu()
        keys.append((img[:, None] * n_txt + txt[i2t_idx]).reshape(-1))
        keys.append((img[t2i_idx] * n_txt + txt[:, None]).reshape(-1))
        selected.append((i2t_sim, i2t_idx, t2i_sim, t2i_idx))
    unique, inverse = torch.unique(torch.cat(keys), return_inverse=True)
    logging.info(
        "ITM re-ranking: %d distinct pairs for %d selections", len(unique), sum(len(k) for k in keys)
    )
    itm = itm_pair_scores(
        model, features, unique // n_txt, unique % n_txt, max_pairs=max_pairs, amp=amp, progress=progress
    )
    out, offset = [], 0
    for view, (i2t_sim, i2t_idx, t2i_sim, t2i_idx) in zip(views, selected):
        n_i, n_t = len(view.image_index), len(view.text_index)
        i2t_itm = itm[inverse[offset : offset + i2t_idx.numel()]].view_as(i2t_sim)
        offset += i2t_idx.numel()
        t2i_itm = itm[inverse[offset : offset + t2i_idx.numel()]].view_as(t2i_sim)
        offset += t2i_idx.numel()
        score_i2t = torch.full((n_i, n_t), -100.0).scatter_(1, i2t_idx, i2t_itm + i2t_sim)
        score_t2i = torch.full((n_t, n_i), -100.0).scatter_(1, t2i_idx, t2i_itm + t2i_sim)
        out.append((score_i2t.numpy(), score_t2i.numpy()))
    return out


def compute_sim_matrix_fast(
    model,
    data_loader,
    k_test: int,
    views: Sequence[RerankView] | None = None,
    max_pairs: int | None = None,
    amp: bool = False,
    feature_device: str = "auto",
    progress: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]] | tuple[np.ndarray, np.ndarray]:
    """Drop-in for ``model.compute_sim_matrix(data_loader, task_cfg)``.

    With ``views=None`` returns ``(score_i2t, score_t2i)`` of the whole split, as LAVIS does;
    otherwise one such pair per view (all views share one feature pass and one ITM pass).
    """
    start = time.time()
    was_training = model.training
    model.eval()
    try:
        features = encode_retrieval_features(model, data_loader, amp=amp, feature_device=feature_device)
        n_img, n_txt = features.sims.shape
        whole = RerankView(torch.arange(n_img), torch.arange(n_txt))
        result = rerank_views(
            model, features, [whole] if views is None else list(views), k_test, max_pairs, amp, progress
        )
    finally:
        model.train(was_training)
    logging.info("Evaluation (fast ITM re-ranking) took %.1f s", time.time() - start)
    return result[0] if views is None else result
