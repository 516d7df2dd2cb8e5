"""Idempotent registration in LAVIS's registry.

LAVIS's ``registry.register_*`` raises ``KeyError`` when a name is taken, so a module that is
reloaded, or imported under two paths, would fail on its second import. ``register_once`` accepts
the same class again (same module and qualified name) and only raises for a different class.

A model is also listed in ``lavis.models.model_zoo`` with its model types: LAVIS builds that listing
once, from the registry, when ``lavis.models`` is imported, before any plugin can register.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from lavis.common.registry import registry

T = TypeVar("T", bound=type)

_MAPPINGS = {
    "model": "model_name_mapping",
    "task": "task_name_mapping",
    "runner": "runner_name_mapping",
    "builder": "builder_name_mapping",
}


def register_once(kind: str, name: str) -> Callable[[T], T]:
    """Like ``registry.register_<kind>(name)``, but re-registering the same class is a no-op."""
    mapping = registry.mapping[_MAPPINGS[kind]]
    register = getattr(registry, f"register_{kind}")

    def wrap(cls: T) -> T:
        taken = mapping.get(name)
        if taken is not None and (taken.__module__, taken.__qualname__) == (cls.__module__, cls.__qualname__):
            del mapping[name]  # a reload of the same class: replace the stale entry
        register(name)(cls)
        if kind == "model":
            _list_in_model_zoo(name, cls)
        return cls

    return wrap


def _list_in_model_zoo(name: str, cls: type) -> None:
    """Add ``name`` and its model types to ``lavis.models.model_zoo``, as LAVIS lists its own models."""
    from lavis.models import model_zoo

    model_zoo.model_zoo[name] = list(cls.PRETRAINED_MODEL_CONFIG_DICT)
