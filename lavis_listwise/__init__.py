"""lavis-listwise: listwise ranking (RSC + Smooth-NDCG) for LAVIS image-text retrieval."""

__version__ = "0.1.0"

from . import losses, metrics, relevance  # noqa: E402  (importing registers the losses)

__all__ = ["__version__", "losses", "metrics", "relevance"]
