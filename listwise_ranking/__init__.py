"""listwise_ranking: the torch-only core of lavis-listwise.

Listwise ranking for image-text retrieval, usable from any training stack: the Smooth-NDCG loss and
the plugin's loss registry (:mod:`.losses`), Relevance Score Calculation from caption-caption
similarity (:mod:`.relevance`), ranking metrics (:mod:`.metrics`) and their helpers. It imports no
LAVIS (``tests/test_layers.py`` checks this); the LAVIS plugin, :mod:`lavis_listwise`, builds on it.
"""

from . import errors, losses, metrics, relevance

__all__ = ["errors", "losses", "metrics", "relevance"]
