"""Paths of the YAML files shipped next to the package (``configs/`` and ``projects/``)."""

from __future__ import annotations

from pathlib import Path

#: The repository root: ``configs/`` and ``projects/`` live beside ``lavis_listwise/``.
ROOT = Path(__file__).resolve().parent.parent


def config_path(relative: str) -> str:
    """Absolute path of ``relative`` (e.g. ``configs/models/x.yaml``) under the repository root."""
    path = ROOT / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist (install lavis-listwise from its repository, editable)"
        )
    return str(path)
