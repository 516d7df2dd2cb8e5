"""The YAML files the plugin ships: ``configs/`` (model and dataset defaults, LAVIS style) and
``projects/`` (runnable experiments).

Both are packages of their own, ``lavis_listwise.configs`` and ``lavis_listwise.projects``, found
through :mod:`importlib.resources`: a wheel carries them inside ``lavis_listwise/``, and an editable
install maps them to the repository's top-level ``configs/`` and ``projects/`` (``package_dir`` in
setup.cfg, see setup.py), so the repository keeps one copy and every install finds it.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

__all__ = ["DATA_PACKAGES", "config_path", "data_dir"]

#: The repository's top-level data directory -> the package it is installed as.
DATA_PACKAGES = {"configs": "lavis_listwise.configs", "projects": "lavis_listwise.projects"}


@cache
def data_dir(name: str) -> Path:
    """The installed ``configs`` or ``projects`` directory, e.g. ``data_dir("projects") / "blip"``."""
    if name not in DATA_PACKAGES:
        raise ValueError(f"{name!r} is not one of the plugin's data directories {sorted(DATA_PACKAGES)}")
    directory = files(DATA_PACKAGES[name])
    # LAVIS and OmegaConf open YAMLs by path, so the package must be files on disk (not a zip)
    if not isinstance(directory, Path):
        raise FileNotFoundError(
            f"{DATA_PACKAGES[name]} is not a directory on disk ({directory}): install lavis-listwise "
            "unzipped, as pip does"
        )
    return directory


def config_path(relative: str) -> str:
    """Absolute path of a shipped YAML, named as in the repository: ``configs/models/x.yaml``,
    ``projects/demo/demo.yaml``."""
    top, _, rest = relative.partition("/")
    path = data_dir(top) / rest
    if not path.is_file():
        raise FileNotFoundError(f"{relative}: lavis-listwise ships no such file (looked at {path})")
    return str(path)
