"""Errors the plugin reports to the user as one message (the CLI prints them without a traceback).

Each subclasses the built-in exception a caller would otherwise expect (``ValueError``,
``OSError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ListwiseError",
    "ConfigError",
    "DataError",
    "NonFiniteLossError",
    "CheckpointError",
    "DistributedTimeoutError",
]


class ListwiseError(Exception):
    """Base class: a problem with the user's configuration, data or run, stated in one message."""


class ConfigError(ListwiseError, ValueError):
    """A YAML key or command-line option is missing, misspelled or out of range; names the key."""


class DataError(ListwiseError, ValueError):
    """An annotation file or image is unusable; names the file (and the entry)."""


class NonFiniteLossError(ListwiseError, RuntimeError):
    """A training step produced a non-finite loss or non-finite weights; nothing was saved after it."""


class CheckpointError(ListwiseError, OSError):
    """A checkpoint could not be written or read; names the path and the cause."""


class DistributedTimeoutError(ListwiseError, RuntimeError):
    """A collective operation waited longer than ``run.dist_timeout`` for another rank."""
