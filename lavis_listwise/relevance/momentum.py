"""Self-distilled relevance: how the model's own momentum encoders rate each image-caption pair.

RSC sees only what the captions say; the momentum model (BLIP's and ALBEF's exponential moving
average of the encoders, already run by their ``forward`` for ITC distillation) sees the images too.
Its relevance of caption ``b`` to image ``a`` is the momentum ITC softmax of the pair relative to
the true pair's, averaged over the two directions (geometric mean):

    m_ab = min(1, exp((c_ab - (p_a + p_b) / 2) / T))

with ``c`` the momentum cosine, ``p_a`` image ``a``'s mean cosine to its own captions in the list,
``p_b`` caption ``b``'s mean cosine to its own images, and ``T`` the model's ITC temperature.
Same-image pairs are 1. ``model.listwise.relevance.momentum: alone`` uses it instead of RSC,
``fused`` multiplies RSC by it. Either is ramped in over the first two epochs
(:func:`momentum_rampup`), as BLIP's and ALBEF's own momentum distillation is: an untrained momentum
model rates every pair alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MOMENTUM_MODES", "momentum_rampup", "momentum_relevance"]

#: ``model.listwise.relevance.momentum`` values: the momentum relevance alone, or times RSC.
MOMENTUM_MODES = ("alone", "fused")


def momentum_relevance(cos: Tensor, positive: Tensor, temperature: Tensor | float) -> Tensor:
    """Relevance ``[I, T]`` in ``[0, 1]`` from the momentum model's cosines (see the module docstring).

    Args:
        cos: ``[I, T]`` cosine of image ``a``'s and caption ``b``'s normalised momentum ITC features.
        positive: ``[I, T]`` bool, True where caption ``b`` belongs to image ``a``; every row and
            every column needs one (an in-batch list: each sample's own pair).
        temperature: the ITC temperature ``T > 0`` (a scalar tensor or a float).
    Returns:
        ``[I, T]`` float32 relevance, 1 on ``positive``. Not differentiable.
    """
    if cos.shape != positive.shape or cos.dim() != 2:
        raise ValueError(f"cos and positive must be the same [I, T] shape, got {tuple(cos.shape)} and "
                         f"{tuple(positive.shape)}")  # fmt: skip
    with torch.no_grad():
        cos = cos.float()
        pos = positive.to(device=cos.device, dtype=cos.dtype)
        n_row, n_col = pos.sum(1), pos.sum(0)
        if bool((n_row == 0).any()) or bool((n_col == 0).any()):
            raise ValueError("every image and every caption of the list needs a positive pair")
        own_row = (cos * pos).sum(1) / n_row  # [I] p_a
        own_col = (cos * pos).sum(0) / n_col  # [T] p_b
        reference = 0.5 * (own_row[:, None] + own_col[None, :])
        out = ((cos - reference) / temperature).clamp_(max=0.0).exp_()
        return out.masked_fill_(positive.to(device=out.device, dtype=torch.bool), 1.0)


def momentum_rampup(samples: dict) -> float:
    """``min(1, (epoch * n + iters) / (2 n))`` of a training batch (LAVIS's runner sets ``epoch``,
    ``iters`` and ``num_iters_per_epoch`` = ``n``): 0 at the first step, 1 from the third epoch on,
    the ramp of BLIP's ``_rampup_factor``."""
    n = samples["num_iters_per_epoch"]
    return min(1.0, (samples["epoch"] * n + samples["iters"]) / (2 * n))
