"""Relevance Score Calculation: sentence encoder, caption-embedding cache, relevance matrices."""

from .cache import CacheCorruptError, CaptionEmbeddingCache, caption_cache_key
from .encoder import SentenceEncoder, default_encoder_path
from .rsc import rsc_relevance, rsc_relevance_from_table

__all__ = [
    "CacheCorruptError",
    "CaptionEmbeddingCache",
    "SentenceEncoder",
    "caption_cache_key",
    "default_encoder_path",
    "rsc_relevance",
    "rsc_relevance_from_table",
]
