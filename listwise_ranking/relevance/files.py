"""Relevance and caption embeddings computed elsewhere, read from disk.

Three YAML keys read these formats: ``run.gt_relevance.<split>`` (ground truth for evaluation),
``model.listwise.relevance.relevance_file`` (a training relevance instead of RSC) and
``model.listwise.relevance.embeddings`` (precomputed caption embeddings, the published code's
``.npy`` workflow).

**Relevance file**: the graded relevance, in ``[0, 1]``, of every (image, caption) pair of one split.

* dense ``.npy``: a numeric array ``[n_images, n_captions]``;
* sparse ``.npz``: integer arrays ``image`` and ``caption`` and a numeric array ``relevance`` of
  equal length, one entry per listed pair. Pairs not listed have relevance 0, and a pair listed
  twice is an error.

Rows are the split's images and columns its captions, both in LAVIS's order. For an evaluation
split that is one annotation entry per image, and the captions are ``dataset.text``, i.e. each
image's caption list in turn. For a training split the images are numbered in the order their
``image_id`` first appears, and the captions are the annotation entries in order. Several
training datasets are concatenated in the order of the YAML's ``datasets:``.

**Caption embeddings**: a float ``.npy`` ``[n_captions, D]``, the training captions in annotation
order (the caption-table order of :class:`~lavis_listwise.datasets.ListwiseRetrievalDataset`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

__all__ = ["RelevanceMatrix", "read_relevance_file", "read_caption_embeddings", "SPARSE_ARRAYS"]

#: Arrays of a sparse ``.npz`` relevance file.
SPARSE_ARRAYS = ("image", "caption", "relevance")
#: Caption-embedding rows with a larger (or below its inverse, smaller) peak magnitude are rescaled.
_FP16_SAFE_MAX = 1024.0
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelevanceMatrix:
    """One split's relevance ``[n_images, n_captions]``: dense, or sparse as sorted pair keys.

    Attributes:
        shape: ``(n_images, n_captions)``.
        dense: ``[n_images, n_captions]`` float32, or ``None`` for a sparse matrix.
        keys: ``[nnz]`` int64 ``image * n_captions + caption``, ascending (sparse only).
        values: ``[nnz]`` float32 relevance of each key (sparse only).
    """

    shape: tuple[int, int]
    dense: Tensor | None = None
    keys: Tensor | None = None
    values: Tensor | None = None

    def to_dense(self) -> Tensor:
        """``[n_images, n_captions]`` float32 (a new tensor for sparse matrices)."""
        if self.dense is not None:
            return self.dense
        out = torch.zeros(self.shape, dtype=torch.float32)
        out.view(-1)[self.keys] = self.values
        return out

    def lookup(self, rows: Tensor, cols: Tensor) -> Tensor:
        """``[len(rows), len(cols)]`` relevance of images ``rows`` to captions ``cols`` (CPU, float32).

        Sparse matrices find each pair by binary search, so a batch costs ``O(B^2 log nnz)``.
        """
        rows, cols = rows.to("cpu", torch.long), cols.to("cpu", torch.long)
        if self.dense is not None:
            return self.dense[rows][:, cols]
        wanted = rows[:, None] * self.shape[1] + cols[None, :]
        if self.keys.numel() == 0:
            return torch.zeros(wanted.shape, dtype=torch.float32)
        at = torch.searchsorted(self.keys, wanted).clamp_(max=self.keys.numel() - 1)
        found = self.keys[at] == wanted
        return torch.where(found, self.values[at], torch.zeros((), dtype=torch.float32))


def _load(path: Path, key: str):
    if not path.is_file():
        raise DataError(f"{key}: file {str(path)!r} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{key}: cannot read {str(path)!r} as a NumPy file: {err}") from None


def _numeric(array, what: str, key: str, path: Path) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise DataError(f"{key}: {str(path)!r} does not hold one array (a .npy file was expected)")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise DataError(f"{key}: {str(path)!r}: {what} must be numeric, got dtype {array.dtype}")
    return array


def _check_values(values: np.ndarray, key: str, path: Path) -> None:
    """Finite and in ``[0, 1]``, with the first offending value named."""
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        first = np.argwhere(bad)[0]
        raise DataError(
            f"{key}: {str(path)!r}: relevance must be finite and in [0, 1]; {int(bad.sum())} value(s) are "
            f"not (first: {values[tuple(first)].item()!r} at index {tuple(int(i) for i in first)})"
        )


def read_relevance_file(
    path: str | os.PathLike, n_images: int, n_captions: int, key: str, *, dense: bool = True
) -> RelevanceMatrix:
    """Read and check a relevance file (format in the module docstring) for a split of ``n_images``
    images and ``n_captions`` captions.

    Args:
        path: a ``.npy`` (dense) or ``.npz`` (sparse) file.
        n_images, n_captions: the split's size; the file must match it.
        key: the YAML key that named the file, for messages.
        dense: return a dense matrix even for a sparse file (evaluation does; training keeps a large
            sparse file sparse).
    Raises:
        DataError naming ``key`` and the file: missing or unreadable, wrong shape, arrays missing or of
        the wrong kind, indices out of range or repeated, values not finite or outside ``[0, 1]``.
    """
    path = Path(path)
    shape = (int(n_images), int(n_captions))
    if path.suffix == ".npy":
        array = _numeric(_load(path, key), "the array", key, path)
        if array.shape != shape:
            raise DataError(
                f"{key}: {str(path)!r} has shape {array.shape}, but the split has {shape[0]} images and "
                f"{shape[1]} captions (rows: images, columns: captions, in LAVIS's order)"
            )
        _check_values(array, key, path)
        return RelevanceMatrix(shape, dense=torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    if path.suffix != ".npz":
        raise DataError(f"{key}: {str(path)!r}: a relevance file is a dense .npy or a sparse .npz")
    with _load(path, key) as archive:
        names = sorted(archive.files)
        if sorted(SPARSE_ARRAYS) != names:
            raise DataError(
                f"{key}: {str(path)!r}: a sparse relevance file holds exactly the arrays "
                f"{list(SPARSE_ARRAYS)}, got {names}"
            )
        image, caption, values = (archive[name] for name in SPARSE_ARRAYS)
    lengths = {image.shape, caption.shape, values.shape}
    if any(len(s) != 1 for s in lengths) or len(lengths) != 1:
        raise DataError(
            f"{key}: {str(path)!r}: image, caption and relevance must be 1-D arrays of one length, got "
            f"shapes {image.shape}, {caption.shape}, {values.shape}"
        )
    for name, index, size in (("image", image, shape[0]), ("caption", caption, shape[1])):
        if not np.issubdtype(index.dtype, np.integer):
            raise DataError(
                f"{key}: {str(path)!r}: {name} must hold integer indices, got dtype {index.dtype}"
            )
        out_of_range = (index < 0) | (index >= size)
        if out_of_range.any():
            raise DataError(
                f"{key}: {str(path)!r}: {int(out_of_range.sum())} {name} index(es) outside [0, {size}) "
                f"(first: {int(index[out_of_range][0])}); the split has {shape[0]} images and {shape[1]} "
                "captions"
            )
    _check_values(_numeric(values, "relevance", key, path), key, path)
    keys = image.astype(np.int64) * shape[1] + caption.astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order].astype(np.float32)
    repeated = np.flatnonzero(keys[1:] == keys[:-1])
    if repeated.size:
        k = int(keys[repeated[0]])
        raise DataError(
            f"{key}: {str(path)!r}: {repeated.size} pair(s) are listed more than once (first: image "
            f"{k // shape[1]}, caption {k % shape[1]})"
        )
    matrix = RelevanceMatrix(shape, keys=torch.from_numpy(keys), values=torch.from_numpy(values))
    return RelevanceMatrix(shape, dense=matrix.to_dense()) if dense else matrix


def read_caption_embeddings(path: str | os.PathLike, n_captions: int, key: str) -> Tensor:
    """``[n_captions, D]`` float32 caption embeddings from a ``.npy`` file.

    Rows whose largest magnitude is above 1024 or below 1/1024 are rescaled to 1 (the model keeps the
    table in float16, and RSC's cosines do not depend on a row's scale).

    Raises:
        DataError naming ``key`` and the file: missing, unreadable, not 2-D, not one row per training
        caption, or not finite (the first such value named).
    """
    path = Path(path)
    array = _numeric(_load(path, key), "the array", key, path)
    if array.ndim != 2 or array.shape[1] < 1:
        raise DataError(f"{key}: {str(path)!r} must be a 2-D array [n_captions, D], got shape {array.shape}")
    if array.shape[0] != n_captions:
        raise DataError(
            f"{key}: {str(path)!r} has {array.shape[0]} rows, but the training split has {n_captions} "
            "captions (one row per training caption, in annotation order)"
        )
    finite = np.isfinite(array)
    if not finite.all():
        row, col = (int(i) for i in np.argwhere(~finite)[0])
        raise DataError(
            f"{key}: {str(path)!r} holds {int((~finite).sum())} non-finite value(s) (first: "
            f"{array[row, col].item()!r} at row {row}, column {col})"
        )
    # The model keeps the table in float16 (finite up to 65504, normal from 6e-5): a row beyond that
    # range would become inf (NaN relevance) or lose its digits. RSC uses cosines only, so such rows
    # are rescaled to a maximum magnitude of 1 first, in float64; the other rows are kept as they are.
    values = np.asarray(array, dtype=np.float64)
    peak = np.abs(values).max(axis=1)
    rescale = (peak > 0) & ((peak > _FP16_SAFE_MAX) | (peak < 1.0 / _FP16_SAFE_MAX))
    if rescale.any():
        values = values.copy()
        values[rescale] /= peak[rescale, None]
        logger.info(
            "%s: %d of the %d rows of %s lie outside float16's safe range; rescaled (cosines unchanged)",
            key,
            int(rescale.sum()),
            len(values),
            path,
        )
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
