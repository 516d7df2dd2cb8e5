"""Listwise retrieval models registered in LAVIS:
``blip_retrieval_listwise``, ``albef_retrieval_listwise``, ``blip2_retrieval_listwise`` and
``clip_retrieval_listwise``.
"""

from .albef_retrieval_listwise import AlbefRetrievalListwise
from .blip2_retrieval_listwise import Blip2RetrievalListwise
from .blip_retrieval_listwise import BlipRetrievalListwise
from .clip_retrieval_listwise import ClipRetrievalListwise
from .listwise_mixin import RSC_SAMPLE_KEYS, ListwiseRetrievalMixin

__all__ = [
    "AlbefRetrievalListwise",
    "Blip2RetrievalListwise",
    "BlipRetrievalListwise",
    "ClipRetrievalListwise",
    "ListwiseRetrievalMixin",
    "RSC_SAMPLE_KEYS",
]
