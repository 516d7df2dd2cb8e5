"""Ranking losses and their registry: ``smooth_ndcg`` (listwise) and ``triplet`` (pairwise)."""

from .listwise import PairwiseListwiseLoss, bidirectional_listwise_loss, bidirectional_smooth_ndcg_loss
from .registry import build_loss, get_loss_class, list_losses, register_loss
from .smooth_ndcg import SmoothNDCGLoss, smooth_ndcg_loss
from .triplet import TripletLoss, triplet_loss

__all__ = [
    "PairwiseListwiseLoss",
    "SmoothNDCGLoss",
    "TripletLoss",
    "bidirectional_listwise_loss",
    "bidirectional_smooth_ndcg_loss",
    "build_loss",
    "get_loss_class",
    "list_losses",
    "register_loss",
    "smooth_ndcg_loss",
    "triplet_loss",
]
