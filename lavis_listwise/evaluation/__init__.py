"""Evaluation beyond LAVIS's recalls: ground-truth graded relevance and relevance agreement."""

from .ground_truth import (
    GT_NDCG_KS,
    GroundTruth,
    average_ranks,
    ground_truth_metrics,
    gt_relevance_paths,
    load_ground_truth,
    positive_threshold,
    relevance_agreement,
)

__all__ = [
    "GT_NDCG_KS",
    "GroundTruth",
    "average_ranks",
    "ground_truth_metrics",
    "gt_relevance_paths",
    "load_ground_truth",
    "positive_threshold",
    "relevance_agreement",
]
