"""Dataset builders registered in LAVIS: ``coco_retrieval_listwise``, ``flickr30k_listwise``,
``retrieval_listwise_json``."""

from .retrieval_listwise import (
    COCORetrievalListwiseBuilder,
    Flickr30kListwiseBuilder,
    JsonRetrievalListwiseBuilder,
    ListwiseRetrievalDataset,
    ListwiseRetrievalEvalDataset,
)

__all__ = [
    "COCORetrievalListwiseBuilder",
    "Flickr30kListwiseBuilder",
    "JsonRetrievalListwiseBuilder",
    "ListwiseRetrievalDataset",
    "ListwiseRetrievalEvalDataset",
]
