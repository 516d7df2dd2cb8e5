"""Retrieval datasets and builders that add what RSC needs to LAVIS's COCO/Flickr30k formats.

Annotation formats, storage config and processors are LAVIS's own. Each training sample also
carries ``caption_index`` (its caption's row in the caption-embedding table) and
``image_caption_index`` (the rows of its image's ground-truth captions, ``-1`` padded). When several
training datasets are combined, the task gives each one caption and image-id offsets, so indices
and image ids stay unique across them.
"""

from __future__ import annotations

import os

import lavis.common.utils as lavis_utils
import torch
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from lavis.datasets.datasets.retrieval_datasets import RetrievalDataset, RetrievalEvalDataset

from ..registration import register_once
from ..resources import config_path

__all__ = [
    "ListwiseRetrievalDataset",
    "ListwiseRetrievalEvalDataset",
    "COCORetrievalListwiseBuilder",
    "Flickr30kListwiseBuilder",
    "JsonRetrievalListwiseBuilder",
    "caption_groups_to_index",
]


def caption_groups_to_index(groups: list[list[int]], width: int | None = None) -> torch.Tensor:
    """``[len(groups), width]`` long tensor of each group's indices, ``-1`` padded."""
    width = max(len(g) for g in groups) if width is None else width
    out = torch.full((len(groups), width), -1, dtype=torch.long)
    for row, group in enumerate(groups):
        if len(group) > width:
            raise ValueError(f"an image has {len(group)} captions, more than the pad width {width}")
        out[row, : len(group)] = torch.tensor(group, dtype=torch.long)
    return out


class ListwiseRetrievalDataset(RetrievalDataset):
    """LAVIS's ``RetrievalDataset`` (one annotation per caption) plus the RSC indices.

    Attributes:
        captions: processed caption of each annotation, in order (what RSC embeds).
        image_caption_index: ``[n_images, K]`` annotation indices of each image's captions.
        caption_offset / image_id_offset: added to indices and image ids (set by the task when
            several training datasets are combined).
    """

    def __init__(self, vis_processor, text_processor, vis_root, ann_paths):
        super().__init__(vis_processor, text_processor, vis_root, ann_paths)
        self.captions = [self.text_processor(ann["caption"]) for ann in self.annotation]
        groups: list[list[int]] = [[] for _ in range(len(self.img_ids))]
        for i, ann in enumerate(self.annotation):
            groups[self.img_ids[ann["image_id"]]].append(i)
        self.image_caption_index = caption_groups_to_index(groups)
        self.caption_offset = 0
        self.image_id_offset = 0

    @property
    def num_images(self) -> int:
        return self.image_caption_index.shape[0]

    def pad_captions_to(self, width: int) -> None:
        """Pad ``image_caption_index`` to ``width`` columns so batches from several datasets stack."""
        have = self.image_caption_index.shape[1]
        if width < have:
            raise ValueError(f"cannot pad {have} caption columns down to {width}")
        pad = torch.full((self.num_images, width - have), -1, dtype=torch.long)
        self.image_caption_index = torch.cat([self.image_caption_index, pad], dim=1)

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        local_image = sample["image_id"]
        rows = self.image_caption_index[local_image]
        sample["image_id"] = local_image + self.image_id_offset
        sample["caption_index"] = index + self.caption_offset
        sample["image_caption_index"] = torch.where(rows >= 0, rows + self.caption_offset, rows)
        return sample


class ListwiseRetrievalEvalDataset(RetrievalEvalDataset):
    """LAVIS's ``RetrievalEvalDataset`` plus ``image_caption_index`` ``[n_images, K]`` into ``text``."""

    def __init__(self, vis_processor, text_processor, vis_root, ann_paths):
        super().__init__(vis_processor, text_processor, vis_root, ann_paths)
        empty = [i for i, caps in self.img2txt.items() if not caps]
        if empty:
            raise ValueError(
                f"{ann_paths}: {len(empty)} image(s) have no caption (first: {self.image[empty[0]]})"
            )
        self.image_caption_index = caption_groups_to_index([self.img2txt[i] for i in range(len(self.image))])


class _ListwiseBuilder(BaseDatasetBuilder):
    """Errors that name the YAML key instead of LAVIS's warnings or download attempts."""

    train_dataset_cls = ListwiseRetrievalDataset
    eval_dataset_cls = ListwiseRetrievalEvalDataset
    name = ""

    @classmethod
    def default_config_path(cls, type: str = "default") -> str:
        return config_path(cls.DATASET_CONFIG_DICT[type])

    def _key(self, *parts: str) -> str:
        return ".".join(("datasets", self.name, "build_info", *parts))

    @staticmethod
    def _abs(path: str) -> str:
        return path if os.path.isabs(path) else lavis_utils.get_cache_path(path)

    def _download_ann(self):
        needs_download = False
        for split, info in self.config.build_info.annotations.items():
            storages = [info.storage] if isinstance(info.storage, str) else list(info.storage)
            for storage in storages:
                if os.path.isfile(self._abs(storage)):
                    continue
                if not info.get("url"):
                    raise FileNotFoundError(
                        f"{self._key('annotations', split, 'storage')}: annotation file "
                        f"{self._abs(storage)!r} does not exist and no url is given to download it"
                    )
                needs_download = True
        if needs_download:
            super()._download_ann()

    def _download_vis(self):
        storage = self._abs(self.config.build_info.get(self.data_type).storage)
        if not os.path.isdir(storage):
            raise FileNotFoundError(
                f"{self._key(self.data_type, 'storage')}: image directory {storage!r} does not exist "
                "(see LAVIS's lavis/datasets/download_scripts to fetch COCO or Flickr30k)"
            )


@register_once("builder", "coco_retrieval_listwise")
class COCORetrievalListwiseBuilder(_ListwiseBuilder):
    """COCO Karpathy retrieval (LAVIS's ``coco_retrieval`` data) with RSC indices."""

    name = "coco_retrieval_listwise"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/coco/defaults_ret_listwise.yaml"}


@register_once("builder", "flickr30k_listwise")
class Flickr30kListwiseBuilder(_ListwiseBuilder):
    """Flickr30k retrieval (LAVIS's ``flickr30k`` data) with RSC indices."""

    name = "flickr30k_listwise"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/flickr30k/defaults_listwise.yaml"}


@register_once("builder", "retrieval_listwise_json")
class JsonRetrievalListwiseBuilder(_ListwiseBuilder):
    """Any dataset in LAVIS's retrieval JSON format, from paths given in YAML (no download)."""

    name = "retrieval_listwise_json"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/json/defaults_listwise.yaml"}
