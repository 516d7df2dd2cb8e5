"""Loss registry in LAVIS's registry style: ``register_loss`` / ``get_loss_class`` / ``list_losses``.

Listwise losses (class attribute ``is_listwise = True``, usable as ``model.listwise.loss``) take
``forward(scores [Q, N], relevance [Q, N])`` and are constructed as
``cls(tau=..., kernel=..., relevance_topk=..., ideal_dcg=...)``; ``cls.check_params(**those)``
checks the same keyword arguments without building (``ListwiseConfig`` calls it), and
``loss.unchecked(scores, relevance)``, where present, is ``forward`` without its per-call tensor
checks (the models' training step calls it).

LAVIS has no loss registry; this one follows ``lavis.common.registry`` (a name maps to a class,
a taken name raises ``KeyError``) with one difference: re-registering the *same* class, as a
module reload or a second import path does, replaces the entry instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

__all__ = ["register_loss", "get_loss_class", "list_losses", "build_loss", "lookup"]

_LOSSES: dict[str, type[nn.Module]] = {}

T = TypeVar("T", bound=type[nn.Module])
V = TypeVar("V")


def _same_class(a: type, b: type) -> bool:
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register_loss(name: str) -> Callable[[T], T]:
    """Class decorator registering an ``nn.Module`` loss under ``name``."""

    def wrap(loss_cls: T) -> T:
        if not (isinstance(loss_cls, type) and issubclass(loss_cls, nn.Module)):
            raise TypeError(f"loss {name!r} must be an nn.Module subclass, got {loss_cls!r}")
        taken = _LOSSES.get(name)
        if taken is not None and not _same_class(taken, loss_cls):
            raise KeyError(f"Name '{name}' already registered for {taken}.")
        _LOSSES[name] = loss_cls
        return loss_cls

    return wrap


def lookup(entries: dict[str, V], name: str, what: str) -> V:
    """``entries[name]``; otherwise ``KeyError("unknown <what> <name>; registered: <names>")``."""
    try:
        return entries[name]
    except KeyError:
        raise KeyError(f"unknown {what} {name!r}; registered: {sorted(entries)}") from None


def get_loss_class(name: str) -> type[nn.Module]:
    """The loss class registered under ``name``; ``KeyError`` listing the known names otherwise."""
    return lookup(_LOSSES, name, "loss")


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def build_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate the loss ``name`` with ``kwargs``."""
    return get_loss_class(name)(**kwargs)
