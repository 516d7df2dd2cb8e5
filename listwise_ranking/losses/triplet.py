"""VSE++ triplet loss with the hardest in-batch negative (Faghri et al.), as the paper's code uses it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TripletLoss", "triplet_loss"]


def triplet_loss(sim: Tensor, positive_mask: Tensor, margin: float = 0.2) -> Tensor:
    """Hardest-negative triplet loss averaged over both directions.

    For every positive pair ``(i, t)`` the hinge ``[margin + s_neg - s_it]_+`` is taken against the
    hardest negative caption of image ``i`` (image->text) and the hardest negative image of caption
    ``t`` (text->image). Each direction is the mean over rows of its largest hinge (the published
    code's ``max`` then ``mean``); the result is their average. With one positive per row and
    column (``positive_mask = eye``) this is exactly the published ``TripletLoss``.

    Args:
        sim: ``[I, T]`` image-caption similarity.
        positive_mask: ``[I, T]`` bool, True where caption ``t`` belongs to image ``i``.
        margin: hinge margin.
    Returns:
        Scalar loss in ``sim``'s dtype.
    """
    if sim.dim() != 2 or positive_mask.shape != sim.shape:
        raise ValueError(
            f"sim must be 2-D and positive_mask the same shape, got {tuple(sim.shape)} and "
            f"{tuple(positive_mask.shape)}"
        )
    pos = positive_mask.to(torch.bool)
    neg_inf = torch.finfo(sim.dtype).min
    hardest_txt = sim.masked_fill(pos, neg_inf).max(dim=1, keepdim=True).values  # per image
    hardest_img = sim.masked_fill(pos, neg_inf).max(dim=0, keepdim=True).values  # per caption
    zero = sim.new_zeros(())
    cost_t = torch.where(pos, (margin + hardest_txt - sim).clamp(min=0), zero)
    cost_v = torch.where(pos, (margin + hardest_img - sim).clamp(min=0), zero)
    return 0.5 * (cost_t.max(dim=1).values.mean() + cost_v.max(dim=0).values.mean())


class TripletLoss(nn.Module):
    """``nn.Module`` form of :func:`triplet_loss`: ``forward(sim [I, T], positive_mask [I, T])``."""

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        self.margin = float(margin)

    def forward(self, sim: Tensor, positive_mask: Tensor) -> Tensor:
        return triplet_loss(sim, positive_mask, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
