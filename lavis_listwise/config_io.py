"""Reading a run's YAML file: one message naming the option and the file when it cannot be read."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_yaml_file"]


def read_yaml_file(path: str, key: str = "--cfg-path"):
    """The YAML file at ``path`` as an OmegaConf object; :class:`ConfigError` naming ``key`` and the file
    if it is missing, unreadable or not valid YAML."""
    from omegaconf import OmegaConf
    from yaml import YAMLError

    from .errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"{key}: {str(path)!r} does not exist")
    try:
        return OmegaConf.load(path)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}: cannot read {str(path)!r}: {err}") from None
    except YAMLError as err:
        raise ConfigError(f"{key}: {str(path)!r} is not valid YAML: {err}".replace("\n", " ")) from None
