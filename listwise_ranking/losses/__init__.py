"""Ranking losses and their registry: ``smooth_ndcg`` (listwise) and ``triplet`` (pairwise).

Layout: :mod:`.smooth_ndcg` (the public S-NDCG API and its autograd function), :mod:`.chunked`
(the portable rank computation), :mod:`.dcg` (gains, ideal DCG, DCG), :mod:`.smooth_ndcg_topk`
(the sparse approximation), :mod:`.kernels` (fast rank kernels: compiled, Triton),
:mod:`.reference` (the published broadcast formula, for tests and benchmarks), :mod:`.triplet`,
:mod:`.listwise` (both directions, the combined objective, the registrations), :mod:`.registry`.
"""

from .listwise import (
    COMBINE_RULES,
    PairwiseListwiseLoss,
    bidirectional_listwise_loss,
    bidirectional_smooth_ndcg_loss,
    check_combine,
    combine_losses,
)
from .registry import build_loss, get_loss_class, list_losses, register_loss
from .smooth_ndcg import SmoothNDCGLoss, smooth_ndcg_loss
from .triplet import TripletLoss, triplet_loss

__all__ = [
    "COMBINE_RULES",
    "PairwiseListwiseLoss",
    "SmoothNDCGLoss",
    "TripletLoss",
    "bidirectional_listwise_loss",
    "bidirectional_smooth_ndcg_loss",
    "build_loss",
    "check_combine",
    "combine_losses",
    "get_loss_class",
    "list_losses",
    "register_loss",
    "smooth_ndcg_loss",
    "triplet_loss",
]
