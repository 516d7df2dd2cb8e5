"""Global random-number state: capture, restore, and blocks that leave it untouched.

Training draws from the global generators of torch (CPU and CUDA), numpy and ``random``: dropout,
shuffling, ITM hard negatives. Anything the plugin runs outside the training step (building the
caption-embedding cache, evaluation) runs under :func:`isolated_rng`, so a run's numbers do not
depend on what was cached or how often it was evaluated.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["isolated_rng", "rng_state", "set_rng_state"]


def _cuda_devices() -> list[int]:
    # Only devices that already have a CUDA context: asking for the state would create one.
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return []
    return list(range(torch.cuda.device_count()))


def rng_state() -> dict:
    """The global RNG states of this process: torch CPU, numpy, ``random`` and (if used) CUDA.

    Only tensors, tuples, ints, floats and strings (numpy's key array as a list of ints), so a
    checkpoint holding it loads with ``torch.load(weights_only=True)``, the default of torch >= 2.6
    that LAVIS's ``load_checkpoint`` uses for ``model.finetuned``.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = (name, keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if _cuda_devices():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without changing any global RNG state (the block may still draw from them)."""
    saved_python, saved_numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=_cuda_devices()):
        try:
            yield
        finally:
            random.setstate(saved_python)
            np.random.set_state(saved_numpy)
