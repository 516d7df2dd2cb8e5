"""Tasks registered in LAVIS: ``retrieval_listwise``."""

from .retrieval_listwise import RetrievalListwiseTask

__all__ = ["RetrievalListwiseTask"]
