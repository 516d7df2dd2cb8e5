"""Relevance Score Calculation (RSC): graded caption-to-image relevance from caption similarity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rsc_relevance", "rsc_relevance_from_table"]

#: Elements of the ``[chunk, K, T]`` similarity block computed at once.
_CHUNK_ELEMENTS = 1 << 24


def rsc_relevance(
    image_caption_emb: Tensor,
    caption_emb: Tensor,
    positive_mask: Tensor,
    caption_mask: Tensor | None = None,
) -> Tensor:
    """``r_it = (1 + max_k cos(e(c_ik), e(t))) / 2``, and ``1`` where ``t`` is a caption of ``i``.

    Args:
        image_caption_emb: ``[I, K, D]`` embeddings of each image's ground-truth captions.
        caption_emb: ``[T, D]`` embeddings of the candidate captions.
        positive_mask: ``[I, T]`` bool, True where caption ``t`` is a ground truth of image ``i``.
        caption_mask: ``[I, K]`` bool, True for real (not padded) captions; ``None``: all real.
    Returns:
        ``[I, T]`` relevance in ``[0, 1]``, fp32 (fp64 for fp64 inputs). Not differentiable.
    """
    if image_caption_emb.dim() != 3 or caption_emb.dim() != 2:
        raise ValueError(
            "image_caption_emb must be [I, K, D] and caption_emb [T, D], got "
            f"{tuple(image_caption_emb.shape)} and {tuple(caption_emb.shape)}"
        )
    n_img, k, dim = image_caption_emb.shape
    if caption_emb.shape[1] != dim:
        raise ValueError(f"embedding widths differ: {dim} (images) vs {caption_emb.shape[1]} (captions)")
    if positive_mask.shape != (n_img, caption_emb.shape[0]):
        raise ValueError(
            f"positive_mask must be [I, T] = {(n_img, caption_emb.shape[0])}, "
            f"got {tuple(positive_mask.shape)}"
        )
    if caption_mask is None:
        caption_mask = torch.ones(n_img, k, dtype=torch.bool, device=image_caption_emb.device)
    elif caption_mask.shape != (n_img, k):
        raise ValueError(f"caption_mask must be [I, K] = {(n_img, k)}, got {tuple(caption_mask.shape)}")
    caption_mask = caption_mask.to(torch.bool)
    empty = (~caption_mask.any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"{empty.numel()} image(s) have no ground-truth caption (first indices: {empty[:5].tolist()}); "
            "RSC needs at least one caption per image"
        )
    dtype = torch.float64 if image_caption_emb.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        img = F.normalize(image_caption_emb.to(dtype), dim=-1)
        txt = F.normalize(caption_emb.to(dtype), dim=-1)
        out = torch.empty(n_img, txt.shape[0], dtype=dtype, device=txt.device)
        rows = max(1, _CHUNK_ELEMENTS // max(1, k * txt.shape[0]))
        for i0 in range(0, n_img, rows):
            cos = torch.einsum("ikd,td->ikt", img[i0 : i0 + rows], txt)
            cos.masked_fill_(~caption_mask[i0 : i0 + rows, :, None], float("-inf"))
            out[i0 : i0 + rows] = cos.amax(dim=1)
        out.add_(1.0).mul_(0.5).clamp_(0.0, 1.0)  # rounding can put cos a hair outside [-1, 1]
        out.masked_fill_(positive_mask.to(torch.bool), 1.0)
    return out


def rsc_relevance_from_table(
    table: Tensor, image_caption_index: Tensor, caption_index: Tensor, positive_mask: Tensor
) -> Tensor:
    """:func:`rsc_relevance` with embeddings looked up in a caption-embedding table.

    Args:
        table: ``[N, D]`` caption embeddings.
        image_caption_index: ``[I, K]`` table rows of each image's ground-truth captions, ``-1`` padded.
        caption_index: ``[T]`` table rows of the candidate captions.
        positive_mask: ``[I, T]`` bool ground truth.
    Returns:
        ``[I, T]`` relevance (on the table's device).
    """
    device = table.device
    image_rows = image_caption_index.to(device)
    return rsc_relevance(
        table[image_rows.clamp(min=0)],
        table[caption_index.to(device)],
        positive_mask.to(device),
        image_rows >= 0,
    )
