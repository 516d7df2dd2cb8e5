"""Listwise retrieval models registered in LAVIS:
``blip_retrieval_listwise`` and ``albef_retrieval_listwise``.
"""

from .albef_retrieval_listwise import AlbefRetrievalListwise
from .blip_retrieval_listwise import BlipRetrievalListwise
from .listwise_mixin import RSC_SAMPLE_KEYS, ListwiseRetrievalMixin

__all__ = ["AlbefRetrievalListwise", "BlipRetrievalListwise", "ListwiseRetrievalMixin", "RSC_SAMPLE_KEYS"]
