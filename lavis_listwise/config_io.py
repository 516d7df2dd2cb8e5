"""Reading a run's YAML file: one message naming the option and the file when it cannot be read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["parse_options", "read_yaml_file"]


def read_yaml_file(path: str, key: str = "--cfg-path"):
    """The YAML file at ``path`` as an OmegaConf object; :class:`ConfigError` naming ``key`` and the file
    if it is missing, unreadable or not valid YAML."""
    from omegaconf import OmegaConf
    from yaml import YAMLError

    from listwise_ranking.errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"{key}: {str(path)!r} does not exist")
    try:
        return OmegaConf.load(path)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}: cannot read {str(path)!r}: {err}") from None
    except YAMLError as err:
        raise ConfigError(f"{key}: {str(path)!r} is not valid YAML: {err}".replace("\n", " ")) from None


def parse_options(options: Sequence[str]):
    """``--options`` as an OmegaConf tree; :class:`ConfigError` naming a malformed item.

    Refused: an item without ``=`` (LAVIS pairs such items as ``key value`` when the first item has
    no ``=``, and silently drops an odd one out), an empty key, and ``model.arch``,
    ``model.model_type`` and ``datasets.<builder>.type``: LAVIS's Config picks the default YAMLs
    from the file's values before it applies the options, so an override would mix two configs.
    """
    from omegaconf import OmegaConf

    from listwise_ranking.errors import ConfigError

    items = list(options or [])
    for i, item in enumerate(items):
        key = item.split("=", 1)[0].strip()
        if "=" not in item:
            after = items[i + 1] if i + 1 < len(items) and "=" not in items[i + 1] else "<value>"
            raise ConfigError(f"--options: {item!r} is not key=value (write {item}={after})")
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--options: {item!r} has no valid key before '='")
        parts = key.split(".")
        if key in ("model.arch", "model.model_type") or (
            len(parts) == 3 and parts[0] == "datasets" and parts[2] == "type"
        ):
            raise ConfigError(
                f"--options: {key} cannot be overridden on the command line: LAVIS chooses the default "
                f"YAML from the file's {key} before it applies --options; set it in the YAML"
            )
    try:
        return OmegaConf.from_dotlist(items)
    except Exception as err:  # OmegaConf's grammar errors
        raise ConfigError(f"--options: cannot parse {items}: {err}".replace("\n", " ")) from None
