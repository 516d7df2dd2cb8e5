"""Relevance Score Calculation (RSC): graded caption-to-image relevance from caption similarity.

The paper maps the best cosine ``c = max_k cos(e(c_ik), e(t))`` to ``(1 + c) / 2``. On templated or
otherwise similar captions that keeps unrelated captions at about half a positive's gain (on the
demo's captions the median non-matching relevance is 0.78), so two shaping options the paper lacks
can make the relevance discriminate (``model.listwise.relevance.floor`` / ``sharpen``):

    floor f:    r = max(0, (c - f) / (1 - f))    cosines at or below f give 0, the rest rescaled to [0, 1]
    sharpen p:  r = r ** p                        applied after the mapping (p > 1 widens the gaps)

``floor = -1`` is the paper's mapping exactly; ground-truth captions stay 1 whatever the shaping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "best_cosines",
    "caption_groups_to_index",
    "check_shaping",
    "rsc_relevance",
    "rsc_relevance_from_table",
    "shape_cosines",
]

#: Elements of the ``[chunk, K, T]`` similarity block computed at once.
_CHUNK_ELEMENTS = 1 << 24


def check_shaping(floor: float | None, sharpen: float) -> None:
    """``ValueError`` unless ``floor`` is ``None`` or in ``[-1, 1)`` and ``sharpen`` is finite and ``> 0``."""
    if floor is not None and not (math.isfinite(floor) and -1.0 <= floor < 1.0):
        raise ValueError(f"floor must be None or in [-1, 1), got {floor!r}")
    if not (math.isfinite(sharpen) and sharpen > 0):
        raise ValueError(f"sharpen must be a finite number > 0, got {sharpen!r}")


def shape_cosines(cos: Tensor, floor: float | None = None, sharpen: float = 1.0) -> Tensor:
    """Relevance from best cosines, in place: the paper's ``(1 + cos) / 2`` (``floor=None``) or
    ``max(0, (cos - floor) / (1 - floor))``, then ``** sharpen``; clamped to ``[0, 1]``.

    Args:
        cos: ``[...]`` cosines in ``[-1, 1]`` (overwritten and returned).
        floor: ``None`` for the paper's mapping, else a cosine in ``[-1, 1)`` mapped to 0.
        sharpen: exponent ``> 0`` applied after the mapping (1: none).
    """
    check_shaping(floor, sharpen)
    if floor is None:
        cos.add_(1.0).mul_(0.5)
    else:
        cos.sub_(floor).div_(1.0 - floor)
    cos.clamp_(0.0, 1.0)  # rounding can put cos a hair outside [-1, 1]
    if sharpen != 1.0:
        cos.pow_(sharpen)
    return cos


def best_cosines(
    image_caption_emb: Tensor, caption_emb: Tensor, caption_mask: Tensor | None = None
) -> Tensor:
    """``c_it = max_k cos(e(c_ik), e(t))``: each candidate caption's best cosine to an image's own captions.

    Args:
        image_caption_emb: ``[I, K, D]`` embeddings of each image's ground-truth captions.
        caption_emb: ``[T, D]`` embeddings of the candidate captions.
        caption_mask: ``[I, K]`` bool, True for real (not padded) captions; ``None``: all real.
    Returns:
        ``[I, T]`` cosines in ``[-1, 1]``, fp32 (fp64 for fp64 inputs). Not differentiable.
    """
    if image_caption_emb.dim() != 3 or caption_emb.dim() != 2:
        raise ValueError(
            "image_caption_emb must be [I, K, D] and caption_emb [T, D], got "
            f"{tuple(image_caption_emb.shape)} and {tuple(caption_emb.shape)}"
        )
    n_img, k, dim = image_caption_emb.shape
    if caption_emb.shape[1] != dim:
        raise ValueError(f"embedding widths differ: {dim} (images) vs {caption_emb.shape[1]} (captions)")
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
    return out


def rsc_relevance(
    image_caption_emb: Tensor,
    caption_emb: Tensor,
    positive_mask: Tensor,
    caption_mask: Tensor | None = None,
    *,
    floor: float | None = None,
    sharpen: float = 1.0,
) -> Tensor:
    """``r_it = (1 + max_k cos(e(c_ik), e(t))) / 2``, and ``1`` where ``t`` is a caption of ``i``.

    With ``floor`` / ``sharpen`` the best cosine is mapped by :func:`shape_cosines` instead; the
    defaults are the paper's formula (and the published code's).

    Args:
        image_caption_emb: ``[I, K, D]`` embeddings of each image's ground-truth captions.
        caption_emb: ``[T, D]`` embeddings of the candidate captions.
        positive_mask: ``[I, T]`` bool, True where caption ``t`` is a ground truth of image ``i``.
        caption_mask: ``[I, K]`` bool, True for real (not padded) captions; ``None``: all real.
        floor: ``None`` (the paper's ``(1 + c) / 2``) or a cosine in ``[-1, 1)`` that maps to 0.
        sharpen: exponent ``> 0`` applied to the mapped relevance.
    Returns:
        ``[I, T]`` relevance in ``[0, 1]``, fp32 (fp64 for fp64 inputs). Not differentiable.
    """
    check_shaping(floor, sharpen)
    expected = (image_caption_emb.shape[0], caption_emb.shape[0]) if caption_emb.dim() == 2 else None
    if expected is not None and image_caption_emb.dim() == 3 and positive_mask.shape != expected:
        raise ValueError(f"positive_mask must be [I, T] = {expected}, got {tuple(positive_mask.shape)}")
    out = best_cosines(image_caption_emb, caption_emb, caption_mask)
    shape_cosines(out, floor, sharpen)
    out.masked_fill_(positive_mask.to(device=out.device, dtype=torch.bool), 1.0)
    return out


def rsc_relevance_from_table(
    table: Tensor,
    image_caption_index: Tensor,
    caption_index: Tensor,
    positive_mask: Tensor,
    *,
    floor: float | None = None,
    sharpen: float = 1.0,
) -> Tensor:
    """:func:`rsc_relevance` with embeddings looked up in a caption-embedding table.

    Args:
        table: ``[N, D]`` caption embeddings.
        image_caption_index: ``[I, K]`` table rows of each image's ground-truth captions, ``-1`` padded.
        caption_index: ``[T]`` table rows of the candidate captions.
        positive_mask: ``[I, T]`` bool ground truth.
        floor, sharpen: the shaping of :func:`rsc_relevance`.
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
        floor=floor,
        sharpen=sharpen,
    )


def caption_groups_to_index(groups: list[list[int]], width: int | None = None) -> torch.Tensor:
    """``[len(groups), width]`` long tensor of each group's indices, ``-1`` padded."""
    width = max(len(g) for g in groups) if width is None else width
    out = torch.full((len(groups), width), -1, dtype=torch.long)
    for row, group in enumerate(groups):
        if len(group) > width:
            raise ValueError(f"an image has {len(group)} captions, more than the pad width {width}")
        out[row, : len(group)] = torch.tensor(group, dtype=torch.long)
    return out
