"""Evaluation beyond LAVIS's recalls, and a faster re-ranking to compute them.

* :mod:`.features`, :mod:`.packed_encoder`, :mod:`.rerank`: the fast ITC + ITM re-ranking
  (``run.itm_eval: fast``), LAVIS's ``compute_sim_matrix`` scores with far less ITM work; for models
  without an ITM head (CLIP) the ITC similarity alone (``compute_sim_matrix_itc``); BLIP-2
  (``scores_with_lavis_sim_matrix``) by :mod:`.qformer_scores`, LAVIS's own ``compute_sim_matrix``
  per view (whole split, COCO 1K folds) from one feature pass;
* protocols: :mod:`.coco_1k` (COCO 1K folds), :mod:`.coco_ids` + :mod:`.eccv_cxc` (ECCV Caption and
  CxC through the ``eccv-caption`` package);
* metrics: :mod:`.graded` (NDCG against RSC), :mod:`.ground_truth` (graded ground truth and the
  relevance's agreement with it);
* :mod:`.rankings`: the per-query rankings report;
* :mod:`.scoring`: which of these computes a model's scores (the model's own ``retrieval_scores``).
"""

from .coco_1k import COCO_1K_FOLDS, COCO_1K_IMAGES, coco_1k_folds, coco_1k_metrics, is_coco_karpathy_test
from .coco_ids import coco_ids_from_annotation, coco_image_ids
from .eccv_cxc import ECCV_CAPTION_METRIC_KEYS, coco_karpathy_test_image_ids, eccv_caption_metrics
from .features import compute_sim_matrix_itc, reranks_with_itm, scores_with_lavis_sim_matrix
from .graded import NDCG_KS, annotated_pairs, rsc_ndcg_metrics, split_rsc_relevance
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
from .qformer_scores import compute_sim_matrix_qformer
from .rankings import ranking_report, write_rankings
from .rerank import DEFAULT_MAX_PAIRS, RerankView, compute_sim_matrix_fast
from .scoring import ScoringOptions, itm_reranked_scores, lavis_model_retrieval_scores, retrieval_scores

__all__ = [
    "COCO_1K_FOLDS",
    "COCO_1K_IMAGES",
    "DEFAULT_MAX_PAIRS",
    "ECCV_CAPTION_METRIC_KEYS",
    "GT_NDCG_KS",
    "NDCG_KS",
    "GroundTruth",
    "RerankView",
    "ScoringOptions",
    "annotated_pairs",
    "average_ranks",
    "coco_1k_folds",
    "coco_1k_metrics",
    "coco_ids_from_annotation",
    "coco_image_ids",
    "coco_karpathy_test_image_ids",
    "compute_sim_matrix_fast",
    "compute_sim_matrix_itc",
    "compute_sim_matrix_qformer",
    "eccv_caption_metrics",
    "ground_truth_metrics",
    "gt_relevance_paths",
    "is_coco_karpathy_test",
    "itm_reranked_scores",
    "lavis_model_retrieval_scores",
    "load_ground_truth",
    "positive_threshold",
    "ranking_report",
    "relevance_agreement",
    "reranks_with_itm",
    "retrieval_scores",
    "rsc_ndcg_metrics",
    "scores_with_lavis_sim_matrix",
    "split_rsc_relevance",
    "write_rankings",
]
