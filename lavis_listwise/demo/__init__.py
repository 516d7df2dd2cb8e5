"""The ``lavis-listwise demo``: pairwise vs listwise fine-tuning of a tiny BLIP on synthetic data.

:mod:`.runner` trains and compares the two models (``run_demo``) and draws their rankings;
:mod:`.synthetic` generates the dataset they train on, with its ground-truth relevance.
"""

from .runner import (
    DATASET,
    GT_METRICS,
    GT_SPLITS,
    METRICS,
    demo_data_root,
    draw_rankings,
    run_demo,
    seed_comparison,
    train_arms,
    usable_cores,
    validation_data_options,
)

__all__ = [
    "DATASET",
    "GT_METRICS",
    "GT_SPLITS",
    "METRICS",
    "demo_data_root",
    "draw_rankings",
    "run_demo",
    "seed_comparison",
    "train_arms",
    "usable_cores",
    "validation_data_options",
]
