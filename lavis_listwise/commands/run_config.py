"""The one way a command reads a run YAML: register the plugin, refuse keys nothing reads, parse."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..config_check import check_config
from ..config_io import read_yaml_file

__all__ = ["load_run_config"]


def load_run_config(cfg_path: str, options: Sequence[str] = ()):
    """LAVIS's ``Config`` of ``cfg_path`` with ``options`` (``key=value`` overrides), checked first.

    The plugin is registered before LAVIS parses the file, since LAVIS resolves ``model.arch``, the
    task, the runner and the dataset builders as it parses.

    Raises:
        ConfigError: the file is missing, unreadable or malformed, or the YAML and ``options`` are
            refused by :func:`~lavis_listwise.config_check.check_config` (naming the key).
    """
    from lavis.common.config import Config

    import lavis_listwise  # noqa: F401  (registers the plugin before the config is parsed)

    check_config(read_yaml_file(cfg_path), options)
    return Config(argparse.Namespace(cfg_path=cfg_path, options=list(options)))
