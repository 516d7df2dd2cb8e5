"""Relevance Score Calculation: sentence encoder, caption-embedding cache, relevance matrices, and
relevance or embeddings computed elsewhere (files)."""

from .cache import CacheCorruptError, CaptionEmbeddingCache, caption_cache_key
from .encoder import SentenceEncoder, default_encoder_path
from .files import RelevanceMatrix, read_caption_embeddings, read_relevance_file
from .rsc import (
    best_cosines,
    caption_groups_to_index,
    check_shaping,
    rsc_relevance,
    rsc_relevance_from_table,
    shape_cosines,
)

__all__ = [
    "CacheCorruptError",
    "CaptionEmbeddingCache",
    "best_cosines",
    "RelevanceMatrix",
    "SentenceEncoder",
    "caption_cache_key",
    "caption_groups_to_index",
    "check_shaping",
    "default_encoder_path",
    "read_caption_embeddings",
    "read_relevance_file",
    "rsc_relevance",
    "rsc_relevance_from_table",
    "shape_cosines",
]
