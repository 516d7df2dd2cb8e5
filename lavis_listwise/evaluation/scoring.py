"""Which retrieval scores an evaluation computes: the model's own ``retrieval_scores`` method (every
plugin arch has one), or, for LAVIS's own retrieval models, the path that reproduces their
``compute_sim_matrix`` (the task serves both). A new plugin arch defines ``retrieval_scores`` in its
model file; nothing here or in the task changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .features import compute_sim_matrix_itc, reranks_with_itm, scores_with_lavis_sim_matrix
from .qformer_scores import compute_sim_matrix_qformer
from .rerank import RerankView, compute_sim_matrix_fast

__all__ = ["ScoringOptions", "itm_reranked_scores", "lavis_model_retrieval_scores", "retrieval_scores"]

#: ``(score_i2t [I_v, T_v], score_t2i [T_v, I_v])`` float32 of each view.
ViewScores = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ScoringOptions:
    """How an evaluation's scores are computed, from the run config.

    Attributes:
        k_test: candidates re-ranked by ITM per row and column of each view (``run.k_test``).
        amp: autocast the feature and ITM passes (``run.amp``).
        max_pairs: ITM pairs per forward pass (``run.itm_eval_pairs``; ``None``: the default).
        feature_device: where the encoded features live (``run.eval_feature_device``).
        progress: show a progress bar (the main process only).
    """

    k_test: int
    amp: bool = False
    max_pairs: int | None = None
    feature_device: str = "auto"
    progress: bool = True


def lavis_model_retrieval_scores(
    model, data_loader, views: Sequence[RerankView], options: ScoringOptions
) -> ViewScores:
    """The scores of one of LAVIS's own retrieval models, per view: BLIP-2's Q-Former by LAVIS's own
    ``compute_sim_matrix`` arithmetic (:func:`compute_sim_matrix_qformer`), a model with an ITM head
    (BLIP, ALBEF) by the fast re-ranking (:func:`compute_sim_matrix_fast`), a dual encoder (CLIP) by
    its ITC similarity (:func:`compute_sim_matrix_itc`)."""
    if scores_with_lavis_sim_matrix(model):
        return compute_sim_matrix_qformer(model, data_loader, options.k_test, views=views)
    if reranks_with_itm(model):
        return itm_reranked_scores(model, data_loader, views, options)
    return compute_sim_matrix_itc(model, data_loader, views=views, amp=options.amp)


def itm_reranked_scores(
    model, data_loader, views: Sequence[RerankView], options: ScoringOptions
) -> ViewScores:
    """:func:`compute_sim_matrix_fast` with ``options``: ITC top-``k_test`` re-ranked by ITM."""
    return compute_sim_matrix_fast(
        model,
        data_loader,
        options.k_test,
        views=views,
        max_pairs=options.max_pairs,
        amp=options.amp,
        feature_device=options.feature_device,
        progress=options.progress,
    )


def retrieval_scores(model, data_loader, views: Sequence[RerankView], options: ScoringOptions) -> ViewScores:
    """``model.retrieval_scores(data_loader, views, options)`` where the model defines it (the plugin's
    archs), else :func:`lavis_model_retrieval_scores`. One ``(score_i2t, score_t2i)`` per view."""
    own = getattr(model, "retrieval_scores", None)
    if own is not None:
        return own(data_loader, views, options)
    return lavis_model_retrieval_scores(model, data_loader, views, options)
