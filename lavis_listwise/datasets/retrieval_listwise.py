"""Retrieval datasets and builders that add what RSC needs to LAVIS's COCO/Flickr30k formats.

Annotation formats, storage config and processors are LAVIS's own. Each training sample also
carries ``caption_index`` (its caption's row in the caption-embedding table) and
``image_caption_index`` (the rows of its image's ground-truth captions, ``-1`` padded). When several
training datasets are combined, the task gives each one caption and image-id offsets, so indices
and image ids stay unique across them.

Annotation files are read and validated before LAVIS reads them (:func:`read_annotation_file`,
:func:`train_annotation_problems`, :func:`eval_annotation_problems`), so a bad file is one
:class:`~listwise_ranking.errors.DataError` naming the file and the entry, and the builders check that
every referenced image file exists (a stat, no decoding; ``lavis-listwise check-data`` decodes them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import lavis.common.utils as lavis_utils
import torch
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from lavis.datasets.datasets.retrieval_datasets import RetrievalDataset, RetrievalEvalDataset

from listwise_ranking.errors import DataError
from listwise_ranking.relevance import caption_groups_to_index

from ..registration import register_once
from ..resources import config_path

__all__ = [
    "ListwiseRetrievalDataset",
    "ListwiseRetrievalEvalDataset",
    "COCORetrievalListwiseBuilder",
    "Flickr30kListwiseBuilder",
    "JsonRetrievalListwiseBuilder",
    "caption_groups_to_index",
    "read_annotation_file",
    "train_annotation_problems",
    "eval_annotation_problems",
    "missing_image_files",
]

#: Problems listed in one build-time error; ``lavis-listwise check-data`` lists them all.
_SHOWN_PROBLEMS = 5


def read_annotation_file(path: str | os.PathLike) -> list:
    """The JSON list in an annotation file.

    Raises:
        DataError naming the file: unreadable, not UTF-8 (with the byte offset and line), not valid
        JSON (line and column), or not a JSON list.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read the annotation file: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}: not UTF-8 text: byte 0x{raw[err.start]:02x} at offset {err.start} (line {line}) "
            f"cannot be decoded ({err.reason}); re-save the file as UTF-8"
        ) from None
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    if not isinstance(entries, list):
        raise DataError(
            f"{path}: an annotation file must hold a JSON list of entries, got {type(entries).__name__}"
        )
    return entries


def _nonempty_str(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _image_problem(where: str, entry: dict) -> str | None:
    """The problem of an entry's ``image`` (absent, or not a non-empty string), or ``None``."""
    if "image" not in entry:
        return f"{where}: has no 'image'"
    if not _nonempty_str(entry["image"]):
        return f"{where}: 'image' must be a non-empty file name, got {entry['image']!r}"
    return None


def _entries(files: Sequence[tuple[str, list]]):
    for path, entries in files:
        for index, entry in enumerate(entries):
            yield path, index, entry


def train_annotation_problems(files: Sequence[tuple[str, list]]) -> list[str]:
    """Problems of training annotations (one entry per caption: ``image``, ``caption``, ``image_id``).

    Args:
        files: ``(path, entries)`` of each annotation file of the split, in LAVIS's order (their
            entries are concatenated, so an ``image_id`` is one image across all of them).

    Returns:
        One ``"<file>: entry <i>: <problem>"`` string per problem; empty when the split is usable.
    """
    problems = []
    image_of_id: dict = {}  # image_id -> (image, path, index) of its first entry
    for path, index, entry in _entries(files):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: is a {type(entry).__name__}, not an object (image, caption, image_id)")
            continue
        image, caption = entry.get("image"), entry.get("caption")
        if problem := _image_problem(where, entry):
            problems.append(problem)
        if "caption" not in entry:
            problems.append(f"{where}: has no 'caption'")
        elif not isinstance(caption, str):
            problems.append(f"{where}: 'caption' must be a string (one entry per caption), got {caption!r}")
        elif not caption.strip():
            problems.append(f"{where}: 'caption' is empty")
        if "image_id" not in entry:
            problems.append(f"{where}: has no 'image_id'")
            continue
        image_id = entry["image_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, (str, int)) or image_id == "":
            problems.append(f"{where}: 'image_id' must be a non-empty string or an integer, got {image_id!r}")
            continue
        if not _nonempty_str(image):
            continue
        first = image_of_id.setdefault(image_id, (image, path, index))
        if first[0] != image:
            problems.append(
                f"{where}: image_id {image_id!r} names image {image!r} here but {first[0]!r} in "
                f"{first[1]} entry {first[2]}: two images cannot share an image_id"
            )
    return problems


def eval_annotation_problems(files: Sequence[tuple[str, list]]) -> list[str]:
    """Problems of evaluation annotations (one entry per image: ``image`` and a ``caption`` list).

    An image listed twice is a problem: its captions would count as positives of one row only.
    """
    problems = []
    first_entry: dict[str, tuple[str, int]] = {}
    for path, index, entry in _entries(files):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: is a {type(entry).__name__}, not an object with image and caption")
            continue
        image, captions = entry.get("image"), entry.get("caption")
        if problem := _image_problem(where, entry):
            problems.append(problem)
        else:
            seen = first_entry.setdefault(image, (path, index))
            if seen != (path, index):
                problems.append(f"{where}: image {image!r} is listed twice (also {seen[0]} entry {seen[1]})")
        if "caption" not in entry:
            problems.append(f"{where}: has no 'caption'")
        elif not isinstance(captions, list):
            problems.append(f"{where}: 'caption' must be a list of the image's captions, got {captions!r}")
        elif not captions:
            problems.append(f"{where}: 'caption' is an empty list: image {image!r} would have no caption")
        else:
            for i, caption in enumerate(captions):
                if not _nonempty_str(caption):
                    what = "empty" if isinstance(caption, str) else f"not a string ({caption!r})"
                    problems.append(f"{where}: caption {i} is {what}")
    return problems


def _raise_problems(problems: list[str], what: str) -> None:
    if problems:
        more = len(problems) - _SHOWN_PROBLEMS
        tail = f"; and {more} more" if more > 0 else ""
        shown = "; ".join(problems[:_SHOWN_PROBLEMS])
        raise DataError(
            f"{len(problems)} problem(s) in {what}: {shown}{tail} "
            "(`lavis-listwise check-data --cfg-path <yaml>` lists every problem of every split)"
        )


def _checked_annotations(ann_paths: Sequence[str], train: bool) -> list[tuple[str, int]]:
    """Read and validate a split's annotation files (one :class:`DataError` listing the first problems);
    returns each file's path and entry count, to name the entry of a global annotation index."""
    files = [(os.fspath(p), read_annotation_file(p)) for p in ann_paths]
    problems = train_annotation_problems(files) if train else eval_annotation_problems(files)
    _raise_problems(problems, f"the {'training' if train else 'evaluation'} annotations")
    return [(path, len(entries)) for path, entries in files]


def _entry_name(spans: list[tuple[str, int]], index: int) -> str:
    """``"<file> entry <i>"`` of the ``index``-th annotation of the concatenated files."""
    for path, count in spans:
        if index < count:
            return f"{path}: entry {index}"
        index -= count
    raise IndexError(index)


def _check_processed(texts: Sequence[str], entry_of_text: Sequence[int], spans: list[tuple[str, int]]):
    """Captions the text processor turned into an empty string (e.g. only punctuation)."""
    problems = [
        f"{_entry_name(spans, entry_of_text[t])}: the caption is empty after the text processor"
        for t, text in enumerate(texts)
        if not text.strip()
    ]
    _raise_problems(problems, "the processed captions")


def missing_image_files(vis_root: str, images: Sequence[str]) -> list[str]:
    """The distinct entries of ``images`` (paths relative to ``vis_root``) that are not files."""
    return [i for i in dict.fromkeys(images) if not os.path.isfile(os.path.join(vis_root, i))]


class ListwiseRetrievalDataset(RetrievalDataset):
    """LAVIS's ``RetrievalDataset`` (one annotation per caption) plus the RSC indices.

    Attributes:
        captions: processed caption of each annotation, in order (what RSC embeds).
        image_caption_index: ``[n_images, K]`` annotation indices of each image's captions.
        caption_offset / image_id_offset: added to indices and image ids (set by the task when
            several training datasets are combined).
    """

    def __init__(self, vis_processor, text_processor, vis_root, ann_paths):
        spans = _checked_annotations(ann_paths, train=True)
        super().__init__(vis_processor, text_processor, vis_root, ann_paths)
        self.captions = [self.text_processor(ann["caption"]) for ann in self.annotation]
        _check_processed(self.captions, range(len(self.captions)), spans)
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
        spans = _checked_annotations(ann_paths, train=False)  # also: every image has a caption
        super().__init__(vis_processor, text_processor, vis_root, ann_paths)
        _check_processed(self.text, [self.txt2img[t] for t in range(len(self.text))], spans)
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

    def build(self):
        """LAVIS's ``build``, then a stat of every referenced image: a missing file fails now, not
        mid-epoch. (Decoding every image is ``lavis-listwise check-data``'s job.)"""
        datasets = super().build()
        for split, dataset in datasets.items():
            images = dataset.image if hasattr(dataset, "image") else [a["image"] for a in dataset.annotation]
            missing = missing_image_files(dataset.vis_root, images)
            if missing:
                shown = ", ".join(repr(m) for m in missing[:_SHOWN_PROBLEMS])
                raise DataError(
                    f"{self._key(self.data_type, 'storage')}: {len(missing)} of the {len(set(images))} "
                    f"images of the {split} annotations do not exist under {dataset.vis_root!r} "
                    f"(first: {shown})"
                )
        return datasets


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
