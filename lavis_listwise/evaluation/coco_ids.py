"""COCO image and caption ids of a LAVIS COCO Karpathy annotation, for ECCV Caption / CxC (:mod:`.eccv_cxc`).

LAVIS numbers images and captions by position in its annotation file; ECCV Caption and CxC key their
ground truth by COCO image ids and COCO caption annotation ids. :func:`coco_ids_from_annotation`
recovers those from COCO's own ``captions_val2014.json``.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CAPTIONS_JSON_KEY", "coco_ids_from_annotation", "coco_image_ids"]

#: The YAML key that points at COCO's ``captions_val2014.json`` (named in every error).
CAPTIONS_JSON_KEY = "run.coco_captions_json"
_TRAILING_DIGITS = re.compile(r"(\d+)\.[A-Za-z0-9]+$")


def _normalise_caption(text: str) -> str:
    """Lowercase, collapse whitespace, strip, and drop trailing periods (Karpathy's raw vs COCO text)."""
    text = " ".join(str(text).lower().split())
    return text.rstrip(". ").strip()


def _load_coco_captions(captions_json: str | Path) -> dict[int, list[tuple[int, str]]]:
    """``{coco_image_id: [(caption_id, caption), ...]}`` in file order, from a COCO captions file."""
    path = Path(captions_json)
    hint = f"{CAPTIONS_JSON_KEY} must point to COCO's annotations/captions_val2014.json"
    if not path.is_file():
        raise FileNotFoundError(f"COCO captions file not found: {str(path)!r} ({hint})")
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not a readable COCO captions JSON file ({hint}): {e}") from e
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list) or not isinstance(data.get("images"), list):
        raise ValueError(
            f"{str(path)!r} is not a COCO captions file: expected a JSON object with 'images' and "
            f"'annotations' lists ({hint})"
        )
    by_image: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for ann in anns:
        try:
            by_image[int(ann["image_id"])].append((int(ann["id"]), str(ann["caption"])))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{str(path)!r} is not a COCO captions file: annotation {ann!r:.200} lacks an int "
                f"'image_id', int 'id' and 'caption' ({hint})"
            ) from e
    return by_image


def _coco_image_id(entry: dict[str, Any], index: int) -> int:
    """COCO image id of one annotation entry: the trailing digits of its file name, else its ``image_id``."""
    image = str(entry.get("image", ""))
    # The file name digits are the COCO id; LAVIS's own "image_id" is sometimes a running index or a
    # prefixed string, so it is only a fallback.
    match = _TRAILING_DIGITS.search(os.path.basename(image))
    if match:
        return int(match.group(1))
    image_id = entry.get("image_id")
    if isinstance(image_id, (int, np.integer)) or (isinstance(image_id, str) and image_id.strip().isdigit()):
        return int(image_id)
    raise ValueError(
        f"annotation entry {index} (image {image!r}) has no COCO image id: expected a file name ending in "
        f"digits such as 'val2014/COCO_val2014_000000391895.jpg'"
    )


def _match_captions(raw: Sequence[str], coco: list[tuple[int, str]], image: str, path: Path) -> list[int]:
    """COCO caption ids for the raw captions of one image, each COCO caption used at most once."""
    ids: list[int | None] = [None] * len(raw)
    used = [False] * len(coco)
    # Two passes so that a normalised match cannot take the COCO caption a later raw caption matches
    # exactly; within a pass, identical texts are assigned in file order.
    for key in (lambda s: " ".join(str(s).split()), _normalise_caption):
        coco_keys = [key(text) for _, text in coco]
        for i, caption in enumerate(raw):
            if ids[i] is not None:
                continue
            k = key(caption)
            for j, coco_key in enumerate(coco_keys):
                if not used[j] and coco_key == k:
                    used[j], ids[i] = True, coco[j][0]
                    break
    for i, caption_id in enumerate(ids):
        if caption_id is None:
            raise ValueError(
                f"caption {i} of image {image!r}, {raw[i]!r}, matches none of that image's unused COCO "
                f"captions in {str(path)!r} ({CAPTIONS_JSON_KEY}); its COCO captions are "
                f"{[text for _, text in coco]!r}"
            )
    return ids  # type: ignore[return-value]


def coco_image_ids(annotation: list[dict[str, Any]]) -> list[int]:
    """COCO image id of each entry of a LAVIS annotation (from its file name); ``ValueError`` if none."""
    return [_coco_image_id(entry, index) for index, entry in enumerate(annotation)]


def coco_ids_from_annotation(
    annotation: list[dict[str, Any]], captions_json: str | Path
) -> tuple[list[int], list[int]]:
    """COCO image and caption ids of a LAVIS COCO retrieval eval annotation, in LAVIS's index order.

    Args:
        annotation: LAVIS's Karpathy eval annotation (e.g. ``coco_karpathy_test.json``): one entry per
            image, ``{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": [5 raw captions]}``.
        captions_json: COCO's ``captions_val2014.json`` (``{"images": [...], "annotations":
            [{"image_id", "id", "caption"}, ...]}``), set by the YAML key ``run.coco_captions_json``.
    Returns:
        ``(image_ids, caption_ids)``: ``image_ids[i]`` (length ``n_images``) is the COCO image id of
        entry ``i``; ``caption_ids[t]`` (length ``n_texts``) the COCO caption annotation id of text ``t``,
        numbered as ``RetrievalEvalDataset`` does (images in order, each image's captions in order).
    Raises:
        FileNotFoundError: ``captions_json`` does not exist.
        ValueError: it is not a COCO captions file, an image is not in it, or a caption has no match.
    """
    path = Path(captions_json)
    coco = _load_coco_captions(path)
    image_ids: list[int] = []
    caption_ids: list[int] = []
    for index, entry in enumerate(annotation):
        image = str(entry.get("image", ""))
        image_id = _coco_image_id(entry, index)
        if image_id not in coco:
            raise ValueError(
                f"COCO image id {image_id} (image {image!r}) has no captions in {str(path)!r}; "
                f"{CAPTIONS_JSON_KEY} must point to the COCO captions file of this split "
                f"(captions_val2014.json for the Karpathy test split)"
            )
        raw = entry.get("caption")
        if isinstance(raw, str) or not isinstance(raw, Sequence):
            raise ValueError(
                f"annotation entry {index} (image {image!r}) has 'caption' {raw!r:.100}; an eval annotation "
                f"lists each image's captions"
            )
        image_ids.append(image_id)
        caption_ids.extend(_match_captions(raw, coco[image_id], image, path))
    return image_ids, caption_ids
