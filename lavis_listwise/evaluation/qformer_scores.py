"""BLIP-2's retrieval scores (ITC top-``k_test``, then ITM re-ranking through the Q-Former) for several
views of a split from one feature pass: the whole split, and the COCO 1K folds re-ranked within each.

Per view it is LAVIS's ``lavis/models/blip2_models/blip2.py`` ``compute_sim_matrix`` with the same
operations in the same order (the whole split's scores are that function's, bit for bit, tested),
including its split of the re-ranked rows over ranks and the ``all_reduce`` of the ``-100``-filled
matrices. The plugin's fast re-ranking (:mod:`.rerank`) does not apply: BLIP-2's ITM runs the query
tokens through the Q-Former with the caption, not a text encoder cross-attending to ViT tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .rerank import RerankView, view_similarity

__all__ = ["compute_sim_matrix_qformer"]

#: LAVIS's compute_sim_matrix: captions tokenised (and encoded) 256 at a time, cut at 35 tokens.
_TEXT_BATCH, _MAX_TEXT_LEN = 256, 35


@torch.no_grad()
def _qformer_features(model, data_loader) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """LAVIS's feature pass: ``text_ids``, ``text_atts`` ``[T, 35]``, ``text_embeds`` ``[T, E]``,
    ``vit_feats`` ``[I, P, D]`` (on CPU, as LAVIS keeps them) and ``image_embeds`` ``[I, Q, E]``."""
    texts = data_loader.dataset.text
    ids, atts, text_embeds = [], [], []
    for i in range(0, len(texts), _TEXT_BATCH):
        text_input = model.tokenizer(
            texts[i : i + _TEXT_BATCH],
            padding="max_length",
            truncation=True,
            max_length=_MAX_TEXT_LEN,
            return_tensors="pt",
        ).to(model.device)
        text_embeds.append(F.normalize(model.text_proj(model.forward_text(text_input))))
        ids.append(text_input.input_ids)
        atts.append(text_input.attention_mask)
    vit_feats, image_embeds = [], []
    for samples in data_loader:
        image_feat, vit_feat = model.forward_image(samples["image"].to(model.device))
        vit_feats.append(vit_feat.cpu())
        image_embeds.append(F.normalize(model.vision_proj(image_feat), dim=-1))
    return tuple(torch.cat(parts) for parts in (ids, atts, text_embeds, vit_feats, image_embeds))


def _rows_of_this_rank(n: int) -> range:
    """LAVIS's split of ``n`` rows over ranks (``n // world + 1`` each)."""
    from lavis.common import dist_utils

    step = n // dist_utils.get_world_size() + 1
    start = dist_utils.get_rank() * step
    return range(start, min(n, start + step))


@torch.no_grad()
def _rerank_view(model, sims, vit_feats, text_ids, text_atts, k_test: int) -> tuple[np.ndarray, np.ndarray]:
    """One view's ``[I, T]`` and ``[T, I]`` scores from its ITC ``sims`` ``[I, T]``, as LAVIS."""
    import torch.distributed as dist
    from lavis.common import dist_utils

    n_img, n_txt = sims.shape
    score_i2t = torch.full((n_img, n_txt), -100.0).to(model.device)
    for i in _rows_of_this_rank(n_img):
        topk_sim, topk_idx = sims[i].topk(k=k_test, dim=0)
        score = model.compute_itm(
            image_inputs=vit_feats[i].repeat(k_test, 1, 1).to(model.device),
            text_ids=text_ids[topk_idx],
            text_atts=text_atts[topk_idx],
        ).float()
        score_i2t[i, topk_idx] = score + topk_sim
    sims_t = sims.t()
    score_t2i = torch.full((n_txt, n_img), -100.0).to(model.device)
    for t in _rows_of_this_rank(n_txt):
        topk_sim, topk_idx = sims_t[t].topk(k=k_test, dim=0)
        score = model.compute_itm(
            image_inputs=vit_feats[topk_idx.cpu()].to(model.device),
            text_ids=text_ids[t].repeat(k_test, 1),
            text_atts=text_atts[t].repeat(k_test, 1),
        ).float()
        score_t2i[t, topk_idx] = score + topk_sim
    if dist_utils.is_dist_avail_and_initialized():
        dist.barrier()
        dist.all_reduce(score_i2t, op=dist.ReduceOp.SUM)
        dist.all_reduce(score_t2i, op=dist.ReduceOp.SUM)
    return score_i2t.cpu().numpy(), score_t2i.cpu().numpy()


@torch.no_grad()
def compute_sim_matrix_qformer(
    model, data_loader, k_test: int, views: Sequence[RerankView]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(score_i2t [I_v, T_v], score_t2i [T_v, I_v])`` of each view, features computed once.

    Args:
        model: a LAVIS ``Blip2Qformer`` (``tokenizer``, ``forward_text``, ``forward_image``,
            ``text_proj``, ``vision_proj``, ``compute_itm``), in eval mode.
        data_loader: the evaluation loader, in dataset order; its dataset has ``text`` and ``image``.
        k_test: candidates re-ranked by ITM per row and column of each view.
        views: the sub-problems, e.g. the whole split and the COCO 1K folds.
    Raises:
        ValueError if ``k_test`` is larger than a view's images or captions.
    """
    text_ids, text_atts, text_embeds, vit_feats, image_embeds = _qformer_features(model, data_loader)
    # LAVIS's loop: for each image, the maximum over its query tokens of their cosine with each caption
    sims = torch.stack([(image_embed @ text_embeds.t()).max(0)[0] for image_embed in image_embeds])
    out = []
    for view in views:
        img, txt = view.image_index, view.text_index
        view_sims = view_similarity(sims, view, k_test)
        out.append(_rerank_view(model, view_sims, vit_feats[img], text_ids[txt], text_atts[txt], k_test))
    return out
