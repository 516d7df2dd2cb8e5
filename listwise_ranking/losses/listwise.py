"""Both-direction Smooth-NDCG over an image-caption similarity matrix, and the paper's objective."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .registry import get_loss_class, register_loss
from .smooth_ndcg import SmoothNDCGLoss, smooth_ndcg_loss
from .triplet import TripletLoss

__all__ = [
    "COMBINE_RULES",
    "PairwiseListwiseLoss",
    "bidirectional_listwise_loss",
    "bidirectional_smooth_ndcg_loss",
    "check_combine",
    "combine_losses",
]

register_loss("smooth_ndcg")(SmoothNDCGLoss)
register_loss("triplet")(TripletLoss)

#: ``combine`` rules: ``add`` (``pairwise + w * listwise``), ``convex`` (``(1-w) * pairwise + w * listwise``).
COMBINE_RULES = ("add", "convex")


def check_combine(weight: float, combine: str) -> None:
    """Check a listwise ``weight`` and ``combine`` rule, the one place they are checked.

    Raises:
        ValueError whose message starts with the parameter's name.
    """
    if combine not in COMBINE_RULES:
        raise ValueError(f"combine must be 'add' or 'convex', got {combine!r}")
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight!r}")
    if combine == "convex" and weight > 1:
        raise ValueError(f"weight must be <= 1 with combine: convex, got {weight!r}")


def combine_losses(pairwise: Tensor, listwise: Tensor, weight: float, combine: str) -> Tensor:
    """The training objective: ``pairwise + weight * listwise`` (``add``) or the paper's
    ``(1 - weight) * pairwise + weight * listwise`` (``convex``)."""
    keep = 1.0 - weight if combine == "convex" else 1.0
    return keep * pairwise + weight * listwise


def bidirectional_listwise_loss(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    sim: Tensor,
    relevance: Tensor,
    reference_compat: bool = False,
) -> Tensor:
    """Mean of the image->text and text->image listwise losses.

    Image->text ranks row ``i`` of ``sim`` by ``relevance[i]``; text->image ranks column ``t`` by
    ``relevance[:, t]``, i.e. the transposed matrix.

    Args:
        loss_fn: a listwise loss ``(scores [Q, N], relevance [Q, N]) -> scalar``.
        sim: ``[I, T]`` image-caption similarity (differentiable).
        relevance: ``[I, T]`` RSC relevance of caption ``t`` to image ``i``.
        reference_compat: reproduce the published code, which ranks the text->image lists with the
            *untransposed* relevance (only defined for square matrices). Off by default: that is a
            bug of the reference implementation.
    Returns:
        Scalar loss.
    """
    if reference_compat and sim.shape[0] != sim.shape[1]:
        raise ValueError(f"reference_compat needs a square similarity matrix, got {tuple(sim.shape)}")
    i2t = loss_fn(sim, relevance)
    t2i = loss_fn(sim.t(), relevance if reference_compat else relevance.t())
    return 0.5 * (i2t + t2i)


def bidirectional_smooth_ndcg_loss(
    sim: Tensor, relevance: Tensor, tau: float = 0.01, reference_compat: bool = False
) -> Tensor:
    """:func:`bidirectional_listwise_loss` with Smooth-NDCG at temperature ``tau``."""
    return bidirectional_listwise_loss(
        lambda s, r: smooth_ndcg_loss(s, r, tau), sim, relevance, reference_compat
    )


class PairwiseListwiseLoss(nn.Module):
    """The paper's objective ``(1 - w) * pairwise + w * listwise`` (``combine="convex"``) or the
    additive ``pairwise + w * listwise`` (``combine="add"``).

    ``forward(sim [I, T], relevance [I, T], positive_mask [I, T])`` returns a dict with ``loss``,
    ``loss_pairwise`` and ``loss_listwise``.
    """

    def __init__(
        self,
        weight: float,
        tau: float = 0.01,
        pairwise: str = "triplet",
        pairwise_kwargs: dict | None = None,
        combine: str = "convex",
        reference_compat: bool = False,
    ) -> None:
        super().__init__()
        check_combine(weight, combine)
        self.pairwise = get_loss_class(pairwise)(**(pairwise_kwargs or {}))
        self.listwise = SmoothNDCGLoss(tau)
        self.weight, self.combine, self.reference_compat = float(weight), combine, reference_compat

    def forward(self, sim: Tensor, relevance: Tensor, positive_mask: Tensor) -> dict[str, Tensor]:
        pairwise = self.pairwise(sim, positive_mask)
        listwise = bidirectional_smooth_ndcg_loss(sim, relevance, self.listwise.tau, self.reference_compat)
        loss = combine_losses(pairwise, listwise, self.weight, self.combine)
        return {"loss": loss, "loss_pairwise": pairwise, "loss_listwise": listwise}
