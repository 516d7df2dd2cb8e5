"""Strict configuration keys: a key nothing reads is refused before anything is built.

LAVIS reads its YAML with ``cfg.get("key", default)`` and attribute access, so a misspelled key
(``run.max_epochs`` for ``max_epoch``) is silently ignored and the default applies. This check refuses
any key nothing reads under ``run``, under ``model`` (for the plugin's archs), under each
``datasets.<builder>`` and its ``build_info``, under the demo's ``demo`` section, and at the top
level, naming the key and the closest valid one.

The valid keys are looked up in ``config_keys.json`` (shipped in this package), a table generated from
the source of LAVIS and of the plugin by ``python scripts/generate_config_keys.py`` (the script's
docstring says how each section's keys are derived); this module parses no source.
``tests/test_config_keys_table.py`` fails when the committed table differs from what the script
derives from the installed LAVIS and the plugin's current source.

- The table covers every builder registered by LAVIS and the plugin, and the ``model`` keys of the
  plugin's archs (LAVIS's own archs' ``model`` keys are not checked, as before). An arch or builder
  outside the table, such as one of your own LAVIS extensions, is not checked: one warning names
  every such section. So is a plugin arch whose ``from_config`` passes the config to calls the
  generator could not follow (its ``unresolved`` entry).
- The table records the LAVIS version it was generated from (``lavis_version``). With another
  installed ``salesforce-lavis``, the check still uses the table, after one warning naming both
  versions: that LAVIS may read keys the table lacks, and ``run.strict_config: false`` skips the check.

``run.strict_config: false`` (default ``true``) turns the unknown-key check off, for users whose own
LAVIS extensions read keys the table does not know. Malformed ``--options`` and unregistered
names (arch, task, runner, builder) are refused either way: LAVIS would mis-handle or crash on them.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from listwise_ranking.errors import ConfigError

from .config_io import parse_options

__all__ = [
    "STRICT_SWITCH",
    "TABLE_FILE",
    "ModelKeys",
    "check_config",
    "key_table",
    "model_keys",
    "plugin_archs",
    "valid_build_info_keys",
    "valid_dataset_keys",
    "valid_demo_keys",
    "valid_model_keys",
    "valid_run_keys",
    "valid_top_level_keys",
]

#: The one switch that turns the unknown-key check off (read below as ``run_cfg.get("strict_config")``).
STRICT_SWITCH = "run.strict_config"
_HINT = f"(set {STRICT_SWITCH}: false to skip this check for your own LAVIS extensions)"
#: The generated table of valid keys, a data file of this package.
TABLE_FILE = "config_keys.json"


# ----------------------------------------------------------------------------- the table
@functools.cache
def key_table() -> dict[str, Any]:
    """The generated table (``config_keys.json``): ``lavis_version``, ``top_level``, ``run`` (by the
    package that reads each key), ``demo``, ``model`` (per plugin arch) and ``datasets`` (per builder).
    Warns once when the installed LAVIS is not the version the table was generated from."""
    table = json.loads(files(__package__).joinpath(TABLE_FILE).read_text(encoding="utf-8"))
    try:
        installed = importlib.metadata.version("salesforce-lavis")
    except importlib.metadata.PackageNotFoundError:  # LAVIS from a source tree, not installed
        installed = "of unknown version"
    _warn_if_other_lavis(table["lavis_version"], installed)
    return table


def _warn_if_other_lavis(pinned: str, installed: str) -> None:
    if installed != pinned:
        logging.warning(
            "the strict key check's table was generated from LAVIS %s, but LAVIS %s is installed: its "
            "keys are checked as LAVIS %s reads them %s",
            pinned,
            installed,
            pinned,
            _HINT,
        )


@dataclass(frozen=True)
class ModelKeys:
    """What an arch's ``from_config`` reads: ``keys``, and the calls that receive the config but could
    not be followed (``unresolved``; the check is skipped for such an arch, with a warning)."""

    keys: frozenset[str]
    unresolved: tuple[str, ...]


def plugin_archs() -> list[str]:
    """The archs registered by lavis-listwise (their ``model`` keys are checked)."""
    from lavis.common.registry import registry

    import lavis_listwise  # noqa: F401

    mapping = registry.mapping["model_name_mapping"]
    return sorted(n for n, c in mapping.items() if c.__module__.startswith("lavis_listwise."))


def model_keys(arch: str) -> ModelKeys:
    """What ``arch`` reads from ``model`` (see :class:`ModelKeys`). Raises KeyError for an arch
    outside the table (only the plugin's archs are in it)."""
    entry = key_table()["model"][arch]
    return ModelKeys(frozenset(entry["keys"]), tuple(entry["unresolved"]))


def valid_model_keys(arch: str) -> frozenset[str]:
    """The ``model`` keys ``arch`` reads: its ``from_config`` chain plus LAVIS's Config and task."""
    return model_keys(arch).keys


def valid_run_keys() -> frozenset[str]:
    """The ``run`` keys LAVIS's runners and tasks and the plugin read."""
    return frozenset().union(*key_table()["run"].values())


def valid_top_level_keys() -> frozenset[str]:
    """Top-level keys of a run YAML: ``model``, ``datasets``, ``run`` (LAVIS) and ``demo`` (the demo)."""
    return frozenset(key_table()["top_level"])


def valid_demo_keys() -> frozenset[str]:
    """The keys of the demo's ``demo`` section."""
    return frozenset(key_table()["demo"])


def valid_dataset_keys(builder: str) -> frozenset[str]:
    """Keys of ``datasets.<builder>``: read by the builder's classes and by LAVIS's Config (``type``).
    Raises KeyError for a builder outside the table."""
    return frozenset(key_table()["datasets"][builder]["keys"])


def valid_build_info_keys(builder: str, data_type: str | None) -> frozenset[str]:
    """Keys of ``datasets.<builder>.build_info``. The builders read the visual storage as
    ``build_info.get(self.data_type)`` (base_dataset_builder.py), a key named by ``data_type``."""
    keys = frozenset(key_table()["datasets"][builder]["build_info"])
    return keys | {str(data_type)} if data_type else keys


# ----------------------------------------------------------------------------- the check
def _closest(name: str, valid: Iterable[str], where: str) -> str:
    valid = sorted(valid)
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if match:
        return f"did you mean {where}{match[0]}?"
    return f"valid keys: {', '.join(valid)}"


def _unknown(section: Mapping, valid: frozenset[str], where: str, from_options: set[str]) -> list[str]:
    problems = []
    for key in section.keys():
        if key in valid:
            continue
        dotted = f"{where}{key}"
        origin = " (given in --options)" if dotted in from_options else ""
        problems.append(f"{dotted}{origin}: unknown key; {_closest(str(key), valid, where)}")
    return problems


def _flat_keys(tree: Mapping, prefix: str = "") -> set[str]:
    """Every dotted key of a nested mapping: ``{"a": {"b": 1}}`` -> ``{"a", "a.b"}``."""
    out = set()
    for key, value in tree.items():
        out.add(f"{prefix}{key}")
        if isinstance(value, Mapping):
            out |= _flat_keys(value, f"{prefix}{key}.")
    return out


def _value(cfg, key: str):
    """``cfg[key]`` or ``None`` when absent or ``???``."""
    from omegaconf import OmegaConf

    if key not in cfg or OmegaConf.is_missing(cfg, key):
        return None
    return cfg[key]


def _section(cfg, key: str, required: bool = True):
    from omegaconf import DictConfig

    value = _value(cfg, key)
    if value is None:
        if required:
            raise ConfigError(f"{key}: the run YAML has no {key!r} section")
        return None
    if not isinstance(value, DictConfig):
        raise ConfigError(f"{key}: must be a mapping, got {value!r}")
    return value


def _registered(kind: str, name, key: str):
    from lavis.common.registry import registry

    mapping = registry.mapping[f"{kind}_name_mapping"]
    if name is None:
        raise ConfigError(f"{key} is not set")
    if name in mapping:
        return mapping[name]
    match = difflib.get_close_matches(str(name), sorted(mapping), n=1, cutoff=0.5)
    hint = f"did you mean {match[0]!r}?" if match else f"registered: {', '.join(sorted(mapping))}"
    raise ConfigError(f"{key}: {name!r} is not a registered LAVIS {kind}; {hint}")


def _config_type(cls, table: str, name, key: str) -> str:
    types = getattr(cls, table, {})
    if name not in types:
        match = difflib.get_close_matches(str(name), sorted(types), n=1, cutoff=0.5)
        hint = f"did you mean {match[0]!r}?" if match else f"available: {', '.join(sorted(types))}"
        raise ConfigError(f"{key}: {name!r} is not a type of {cls.__name__}; {hint}")
    return name


def _default_data_type(default_path: str, builder: str) -> str | None:
    from omegaconf import OmegaConf

    section = OmegaConf.load(default_path).get("datasets", {}).get(builder, {})
    return section.get("data_type")


def _check_values(model_cfg, run_cfg, model_cls, model_defaults) -> None:
    """The values of the plugin's settings, the model's merged over the arch's default YAML
    (``model_defaults``, None for an arch not of the plugin) as LAVIS merges them
    (:func:`~lavis_listwise.config.check_settings`)."""
    from omegaconf import OmegaConf

    from .config import check_settings

    if model_defaults is None:
        check_settings(model_cfg, run_cfg)
        return
    check_settings(OmegaConf.merge(model_defaults, model_cfg), run_cfg, model_defaults, model_cls)


def check_config(user_cfg, options: Sequence[str] = ()) -> None:
    """Refuse a run YAML (an OmegaConf tree, as parsed from ``--cfg-path``) plus ``--options`` that
    LAVIS would silently mis-read. Call it after registering the plugin, before LAVIS's Config.

    Raises:
        ConfigError naming the key: malformed ``--options``; a missing ``model`` / ``datasets`` /
        ``run``; an unregistered arch, task, runner or dataset builder, or an unknown model or dataset
        ``type``; the values of the plugin's keys (:func:`~lavis_listwise.config.check_settings`); and,
        unless ``run.strict_config: false``, every key nothing reads, each with the closest valid key.
    """
    from omegaconf import DictConfig, OmegaConf

    import lavis_listwise  # noqa: F401  (registers the plugin's archs, builders, task and runner)

    from_options = parse_options(options)
    if not isinstance(user_cfg, DictConfig):
        raise ConfigError(
            f"--cfg-path: the YAML must be a mapping of sections, not {type(user_cfg).__name__}"
        )
    merged = OmegaConf.merge(user_cfg, from_options)
    option_keys = _flat_keys(OmegaConf.to_container(from_options))
    model_cfg, datasets_cfg = _section(merged, "model"), _section(merged, "datasets")
    run_cfg = _section(merged, "run")

    strict = run_cfg.get("strict_config", True)
    if not isinstance(strict, bool):
        raise ConfigError(f"{STRICT_SWITCH} must be true or false, got {strict!r}")

    model_cls = _registered("model", _value(model_cfg, "arch"), "model.arch")
    model_type = _value(model_cfg, "model_type")
    if model_type is None:
        types = sorted(model_cls.PRETRAINED_MODEL_CONFIG_DICT)
        raise ConfigError(f"model.model_type is not set ({model_cls.__name__} has the types {types})")
    _config_type(model_cls, "PRETRAINED_MODEL_CONFIG_DICT", model_type, "model.model_type")
    _registered("task", _value(run_cfg, "task"), "run.task")
    if _value(run_cfg, "runner") is not None:
        _registered("runner", run_cfg.runner, "run.runner")
    builders = {}
    for name in datasets_cfg.keys():
        builder_cls = _registered("builder", name, f"datasets.{name}")
        section = _section(datasets_cfg, name)
        config_type = _config_type(
            builder_cls, "DATASET_CONFIG_DICT", section.get("type", "default"), f"datasets.{name}.type"
        )
        builders[name] = (section, builder_cls.default_config_path(type=config_type))
    # LAVIS merges the arch's default model YAML under the user's model section; read once, for the
    # plugin's archs (the ones whose settings and keys are checked)
    model_defaults = None
    if model_cls.__module__.startswith("lavis_listwise."):
        model_defaults = OmegaConf.load(model_cls.default_config_path(model_type=model_type)).get("model", {})
    values = (model_cfg, run_cfg, model_cls, model_defaults)
    if not strict:
        _check_values(*values)
        return

    problems = _unknown(merged, valid_top_level_keys(), "", option_keys)
    problems += _unknown(run_cfg, valid_run_keys(), "run.", option_keys)
    arch, table = str(model_cfg.arch), key_table()
    # LAVIS's own archs' model keys are not checked (none are in the table); anything else is named
    unchecked = (
        [] if arch in table["model"] or model_cls.__module__.startswith("lavis.") else [f"model ({arch})"]
    )
    if arch in table["model"]:
        found = model_keys(arch)
        if found.unresolved:
            logging.warning(
                "model keys of %s not checked: its from_config passes the config to calls this check "
                "cannot follow: %s",
                arch,
                "; ".join(found.unresolved),
            )
        else:
            merged_model = OmegaConf.merge(model_defaults, model_cfg)
            problems += _unknown(merged_model, found.keys, "model.", option_keys)
    for name, (section, default_path) in builders.items():
        where = f"datasets.{name}."
        if name not in table["datasets"]:
            unchecked.append(where[:-1])
            continue
        problems += _unknown(section, valid_dataset_keys(name), where, option_keys)
        build_info = _section(section, "build_info", required=False)
        if build_info is not None:
            # data_type names build_info's visual key; LAVIS merges it from the builder's default YAML
            data_type = _value(section, "data_type") or _default_data_type(default_path, name)
            valid = valid_build_info_keys(name, data_type)
            problems += _unknown(build_info, valid, f"{where}build_info.", option_keys)
    demo = _value(merged, "demo")
    if isinstance(demo, DictConfig):
        problems += _unknown(demo, valid_demo_keys(), "demo.", option_keys)
    if unchecked:
        logging.warning(
            "keys not checked under %s: not in the strict key check's table (generated from LAVIS %s "
            "and lavis-listwise; your own LAVIS extensions are not in it)",
            ", ".join(unchecked),
            table["lavis_version"],
        )
    if problems:
        raise ConfigError("; ".join(problems) + f" {_HINT}")
    _check_values(*values)  # after the key names: a misspelled key is the first thing to fix
