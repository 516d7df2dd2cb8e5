"""Human relevance judgments mapped onto a LAVIS evaluation annotation (images in file order, captions
numbered as LAVIS's ``RetrievalEvalDataset`` numbers ``dataset.text``).

Sources (:func:`read_judgments`):

* ``eccv`` / ``cxc``: ECCV Caption's human-verified extra positives and CxC's positives, as the
  ``eccv-caption`` package ships them (COCO image and caption ids, Karpathy test split);
* ``cxc-graded:SITS.csv``: CxC's graded image-caption ratings (``caption,image,agg_score,...``; 0-5;
  captions as ``COCO_val2014:sentid:<COCO caption id>``, images as file names), e.g. its
  ``sits_test.csv``; ratings of 3 or more count as relevant;
* ``plain:FILE.csv``: any dataset, in LAVIS's own numbering: a header ``image,caption,relevant`` and
  one row per judged pair, ``image`` the entry's index in the annotation file, ``caption`` the
  caption's index in the split's caption list, ``relevant`` 1 or 0 (0: judged irrelevant).

A COCO Karpathy annotation is mapped to COCO ids with :func:`karpathy_test_coco_ids` (the
``eccv-caption`` package's caption-id list, checked image by image); the judgments that fall outside
the annotation (another split, or a slice of it) are counted and dropped.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

__all__ = [
    "CXC_RELEVANT_RATING",
    "Judgments",
    "karpathy_test_coco_ids",
    "read_judgments",
]

#: A CxC rating (0-5) at least this is relevant ("3: the caption describes the image with minor
#: errors" and up, as CxC derives its positives).
CXC_RELEVANT_RATING = 3.0
_TRAILING_DIGITS = re.compile(r"(\d+)\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class Judgments:
    """Judgments of one split in LAVIS's numbering.

    Attributes:
        relevant: ``[I, T]`` bool, pairs judged relevant (an image's own captions may be included).
        judged: ``[I]`` bool, images whose row was judged (its other pairs count as judged irrelevant).
        ratings: ``None`` or ``(image [n], caption [n], rating [n])`` graded pairs (0-5 for CxC).
        source: what was read, for the report.
        mapped, total: judgments placed on the annotation, and all read (the rest lie outside it).
    """

    relevant: Tensor
    judged: Tensor
    ratings: tuple[Tensor, Tensor, Tensor] | None
    source: str
    mapped: int
    total: int


def _eccv_data_dir() -> Path:
    import eccv_caption  # the package's data files only (its Metrics class is not needed)

    return Path(eccv_caption.__file__).parent / "data"


@functools.lru_cache(maxsize=4)
def _eccv_json(name: str) -> dict[int, list[int]]:
    with open(_eccv_data_dir() / f"{name}.json", encoding="utf-8") as f:
        return {int(k): [int(x) for x in v] for k, v in json.load(f).items()}


def _image_id(entry: dict, index: int, where: str) -> int:
    match = _TRAILING_DIGITS.search(os.path.basename(str(entry.get("image", ""))))
    if not match:
        raise DataError(
            f"{where}: entry {index} (image {entry.get('image')!r}) has no COCO id in its file name"
        )
    return int(match.group(1))


def karpathy_test_coco_ids(annotation: Sequence[dict], where: str) -> tuple[list[int], list[int | None]]:
    """COCO image ids and caption ids of a LAVIS COCO Karpathy *test* annotation (all of it or a slice).

    The ``eccv-caption`` package lists the split's 25,000 COCO caption ids in image order, five per
    image, ascending, which is the order of each image's captions in LAVIS's ``coco_karpathy_test.json``;
    ten images there have a sixth caption, which has no id (``None``: never judged). Each image's five
    ids are checked against the package's image-to-caption table.

    Raises:
        DataError naming ``where``: an image that is not in the Karpathy test split, or an entry with
        fewer than five captions.
    """
    per_image = _eccv_json("original_image_to_caption")
    ids = np.load(_eccv_data_dir() / "coco_test_ids.npy")
    caption_to_image = _eccv_json("original_caption_to_image")
    ordered = {
        caption_to_image[int(ids[5 * i])][0]: ids[5 * i : 5 * i + 5].tolist() for i in range(len(ids) // 5)
    }
    image_ids, caption_ids = [], []
    for index, entry in enumerate(annotation):
        image_id = _image_id(entry, index, where)
        if image_id not in ordered or sorted(ordered[image_id]) != sorted(per_image[image_id]):
            raise DataError(
                f"{where}: entry {index} (image {entry.get('image')!r}, COCO id {image_id}) is not an image "
                "of the COCO Karpathy test split that ECCV Caption and CxC judge"
            )
        captions = entry.get("caption")
        if not isinstance(captions, list) or len(captions) < 5:
            raise DataError(
                f"{where}: entry {index} has {captions!r:.80}; a Karpathy test image has 5 captions"
            )
        image_ids.append(image_id)
        caption_ids += ordered[image_id] + [None] * (len(captions) - 5)
    return image_ids, caption_ids


def _positives(source: str, image_ids: list[int], caption_ids: list[int | None], where: str) -> Judgments:
    table = _eccv_json(f"{source}_image_to_caption")
    row = {image: i for i, image in enumerate(image_ids)}
    col = {caption: t for t, caption in enumerate(caption_ids) if caption is not None}
    relevant = torch.zeros(len(image_ids), len(caption_ids), dtype=torch.bool)
    judged = torch.zeros(len(image_ids), dtype=torch.bool)
    mapped = total = 0
    for image, captions in table.items():
        total += len(captions)
        if image not in row:
            continue
        judged[row[image]] = True
        for caption in captions:
            if caption in col:
                relevant[row[image], col[caption]] = True
                mapped += 1
    name = {"eccv": "ECCV Caption positives", "cxc": "CxC positives"}[source]
    return Judgments(relevant, judged, None, f"{name} (eccv-caption package)", mapped, total)


def _read_csv(path: Path, columns: Sequence[str], where: str) -> list[dict]:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    f"{where}: {str(path)!r} lacks the column(s) {missing}; header {reader.fieldnames}"
                )
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{where}: cannot read {str(path)!r}: {err}") from None


def _cxc_graded(path: Path, image_ids: list[int], caption_ids: list[int | None], where: str) -> Judgments:
    rows = _read_csv(path, ("caption", "image", "agg_score"), where)
    row = {image: i for i, image in enumerate(image_ids)}
    col = {caption: t for t, caption in enumerate(caption_ids) if caption is not None}
    images, captions, ratings = [], [], []
    for n, r in enumerate(rows, start=2):
        try:
            caption = int(r["caption"].rsplit(":", 1)[-1])
            image = int(_TRAILING_DIGITS.search(r["image"]).group(1))  # type: ignore[union-attr]
            rating = float(r["agg_score"])
        except (AttributeError, ValueError):
            raise DataError(f"{where}: {str(path)!r} line {n} is not a CxC rating: {r}") from None
        if not 0.0 <= rating <= 5.0:
            raise DataError(f"{where}: {str(path)!r} line {n}: rating {rating} is outside 0-5")
        if image in row and caption in col:
            images.append(row[image])
            captions.append(col[caption])
            ratings.append(rating)
    image_t, caption_t = torch.tensor(images, dtype=torch.long), torch.tensor(captions, dtype=torch.long)
    rating_t = torch.tensor(ratings, dtype=torch.float64)
    relevant = torch.zeros(len(image_ids), len(caption_ids), dtype=torch.bool)
    good = rating_t >= CXC_RELEVANT_RATING
    relevant[image_t[good], caption_t[good]] = True
    judged = torch.zeros(len(image_ids), dtype=torch.bool)
    judged[image_t] = True
    return Judgments(
        relevant, judged, (image_t, caption_t, rating_t), f"CxC ratings {path.name}", len(ratings), len(rows)
    )


def _plain(path: Path, n_images: int, n_captions: int, where: str) -> Judgments:
    rows = _read_csv(path, ("image", "caption", "relevant"), where)
    relevant = torch.zeros(n_images, n_captions, dtype=torch.bool)
    judged = torch.zeros(n_images, dtype=torch.bool)
    for n, r in enumerate(rows, start=2):
        try:
            image, caption, label = int(r["image"]), int(r["caption"]), int(r["relevant"])
        except ValueError:
            raise DataError(
                f"{where}: {str(path)!r} line {n}: image, caption and relevant must be integers"
            ) from None
        if not (0 <= image < n_images and 0 <= caption < n_captions) or label not in (0, 1):
            raise DataError(
                f"{where}: {str(path)!r} line {n}: ({image}, {caption}, {label}) is not an image index < "
                f"{n_images}, a caption index < {n_captions} and a 0/1 label"
            )
        judged[image] = True
        relevant[image, caption] = bool(label)
    return Judgments(relevant, judged, None, f"plain judgments {path.name}", len(rows), len(rows))


def read_judgments(spec: str, annotation: Sequence[dict], n_captions: int, where: str) -> Judgments:
    """Judgments ``spec`` (``eccv``, ``cxc``, ``cxc-graded:PATH`` or ``plain:PATH``) mapped onto
    ``annotation`` (a LAVIS eval annotation: one entry per image) whose split has ``n_captions`` captions.

    Raises:
        DataError naming ``where`` (the option or key) and the file.
    """
    kind, _, path = spec.partition(":")
    if kind == "plain" and path:
        return _plain(Path(path), len(annotation), n_captions, where)
    if kind in ("eccv", "cxc") and not path:
        return _positives(kind, *karpathy_test_coco_ids(annotation, where), where)
    if kind == "cxc-graded" and path:
        return _cxc_graded(Path(path), *karpathy_test_coco_ids(annotation, where), where)
    raise DataError(f"{where}: {spec!r} is not eccv, cxc, cxc-graded:SITS.csv or plain:FILE.csv")
