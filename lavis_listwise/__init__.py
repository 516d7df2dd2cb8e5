"""lavis-listwise: listwise ranking (RSC + Smooth-NDCG) for LAVIS image-text retrieval.

Importing the package registers, once, in LAVIS's registry: models ``blip_retrieval_listwise``,
``albef_retrieval_listwise``, ``blip2_retrieval_listwise`` and ``clip_retrieval_listwise``, task
``retrieval_listwise``, runner ``runner_listwise``, builders ``coco_retrieval_listwise``,
``flickr30k_listwise``, ``retrieval_listwise_json``; and the losses ``smooth_ndcg`` and ``triplet``
in the plugin's loss registry.
"""

__version__ = "0.1.0"

import warnings  # noqa: E402

# LAVIS's runners and lr schedulers register themselves only when imported; `import lavis` does
# not import them, and LAVIS's Config resolves names as soon as it parses a YAML.
with warnings.catch_warnings():
    # Importing LAVIS prints deprecation notices of its dependencies that no user can act on
    # (fairscale's torch.cuda.amp decorators, torch.jit.script, timm's moved modules): keep them out
    # of every command's output.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(fairscale|timm|torch\.jit)(\.|$)")
    import lavis  # noqa: E402, F401
    import lavis.common.optims  # noqa: E402, F401
    import lavis.runners  # noqa: E402, F401

from . import datasets, evaluation, losses, metrics, models, relevance, runners, tasks  # noqa: E402

__all__ = [
    "__version__",
    "datasets",
    "evaluation",
    "losses",
    "metrics",
    "models",
    "relevance",
    "runners",
    "tasks",
]
