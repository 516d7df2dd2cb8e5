"""On-disk cache of caption embeddings, keyed by (encoder identity, caption list).

One file per key: a magic line, a JSON header (full key, shape, payload digest) and the fp16
payload. A file is reused only when its stored key equals the requested one and its payload
matches the digest; a truncated or corrupt file is reported and rebuilt. Writes go to a temporary
file that is renamed into place, so a crash never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .encoder import SentenceEncoder

__all__ = ["CaptionEmbeddingCache", "CacheCorruptError", "caption_cache_key"]

logger = logging.getLogger(__name__)

_MAGIC = b"LAVIS-LISTWISE-EMB\x01\n"
#: Cache directories already reported as unwritable in this process (the warning is given once).
_UNWRITABLE_REPORTED: set[Path] = set()
_HEADER_LEN = struct.Struct("<Q")


class CacheCorruptError(RuntimeError):
    """A cache file exists but cannot be trusted (truncated, wrong digest, wrong key)."""


def caption_cache_key(encoder_identity: str, captions: Sequence[str]) -> str:
    """sha256 over the encoder identity and the exact caption list (order included)."""
    digest = hashlib.sha256(encoder_identity.encode())
    digest.update(b"\0")
    digest.update(json.dumps(list(captions), ensure_ascii=False).encode())
    return digest.hexdigest()


def _write(path: Path, key: str, emb: np.ndarray) -> None:
    payload = np.ascontiguousarray(emb, dtype=np.float16).tobytes()
    header = json.dumps(
        {
            "key": key,
            "shape": list(emb.shape),
            "dtype": "float16",
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + _HEADER_LEN.pack(len(header)) + header + payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, key: str) -> np.ndarray:
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        raise CacheCorruptError("not a caption-embedding cache file (bad magic)")
    offset = len(_MAGIC) + _HEADER_LEN.size
    if len(data) < offset:
        raise CacheCorruptError("truncated header")
    (header_len,) = _HEADER_LEN.unpack_from(data, len(_MAGIC))
    try:
        header = json.loads(data[offset : offset + header_len])
    except (UnicodeDecodeError, ValueError) as err:
        raise CacheCorruptError(f"unreadable header ({err})") from None
    if header.get("key") != key:
        raise CacheCorruptError("stored key differs from the requested captions/encoder")
    payload = data[offset + header_len :]
    shape = tuple(header["shape"])
    if len(payload) != int(np.prod(shape)) * 2:
        raise CacheCorruptError(f"payload has {len(payload)} bytes, expected {int(np.prod(shape)) * 2}")
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CacheCorruptError("payload digest mismatch")
    return np.frombuffer(payload, dtype=np.float16).reshape(shape)


class CaptionEmbeddingCache:
    """Embeds a caption list once and keeps the result under ``cache_dir``.

    ``get(captions)`` returns ``[T, D]`` fp32 embeddings rounded through fp16, the same values
    whether freshly computed or read back.
    """

    def __init__(self, cache_dir: str | os.PathLike, encoder: SentenceEncoder | None = None) -> None:
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self.encoder = encoder if encoder is not None else SentenceEncoder()

    def path_for(self, captions: Sequence[str]) -> Path:
        key = caption_cache_key(self.encoder.identity, captions)
        return self.cache_dir / f"captions-{key[:32]}.emb"

    def load(self, captions: Sequence[str]) -> Tensor | None:
        """The cached embeddings, ``None`` if absent; a corrupt file is reported and removed."""
        key = caption_cache_key(self.encoder.identity, captions)
        path = self.cache_dir / f"captions-{key[:32]}.emb"
        if not path.exists():
            return None
        try:
            emb = _read(path, key)
        except (CacheCorruptError, OSError) as err:
            logger.warning("caption-embedding cache %s is unusable (%s); rebuilding it", path, err)
            self._remove(path)
            return None
        if emb.shape[0] != len(captions):
            logger.warning(
                "caption-embedding cache %s holds %d rows for %d captions; rebuilding it",
                path,
                emb.shape[0],
                len(captions),
            )
            self._remove(path)
            return None
        return torch.from_numpy(emb.astype(np.float32))

    def _remove(self, path: Path) -> None:
        """Delete an unusable cache file; where the directory is read-only, say so and go on (the
        rebuilt embeddings then stay in memory, see :meth:`store`)."""
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            logger.warning(
                "caption-embedding cache %s cannot be removed (%s: %s); the embeddings are recomputed "
                "and, if the directory cannot be written either, kept in memory for this run only",
                path,
                type(err).__name__,
                err.strerror or err,
            )

    def get(self, captions: Sequence[str], progress: bool = True) -> Tensor:
        """``[T, D]`` embeddings of ``captions``, from the cache or computed and stored."""
        captions = list(captions)
        if not captions:
            raise ValueError("cannot embed an empty caption list")
        cached = self.load(captions)
        if cached is not None:
            return cached
        return self.store(captions, self.encoder.encode(captions, progress=progress))

    def store(self, captions: Sequence[str], emb: Tensor, write: bool = True) -> Tensor:
        """Round freshly computed ``[T, D]`` embeddings through fp16 as the cache stores them, and (if
        ``write``) save them. A cache directory that cannot be written is reported once; the
        embeddings are then kept in memory for the run only."""
        emb16 = emb.detach().cpu().numpy().astype(np.float16)
        if write:
            path = self.path_for(captions)
            try:
                _write(path, caption_cache_key(self.encoder.identity, captions), emb16)
            except OSError as err:
                if self.cache_dir not in _UNWRITABLE_REPORTED:
                    _UNWRITABLE_REPORTED.add(self.cache_dir)
                    logger.warning(
                        "caption-embedding cache %s cannot be written (%s: %s); keeping the embeddings "
                        "in memory for this run only (set model.listwise.relevance.cache_dir to a "
                        "writable directory to reuse them)",
                        path,
                        type(err).__name__,
                        err.strerror or err,
                    )
        return torch.from_numpy(emb16.astype(np.float32))
