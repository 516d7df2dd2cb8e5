"""The strict key check's table (``lavis_listwise/config_keys.json``) is what its generator,
``scripts/generate_config_keys.py``, derives from the installed LAVIS and the plugin's current source;
and the generator follows a new arch's ``from_config`` with no list of keys."""

import configparser
import json
import sys
from importlib.resources import files
from pathlib import Path

from lavis.models.blip_models.blip_retrieval import BlipRetrieval

from lavis_listwise import config_check

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import generate_config_keys as generator  # noqa: E402


def _differences(old, new, where: str = "") -> list[str]:
    """Dotted paths where two JSON trees differ, each with what was added or removed."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(old.keys() | new.keys()):
            if key not in new or key not in old:
                out.append(f"{where}{key}: {'removed' if key not in new else 'added'}")
            else:
                out += _differences(old[key], new[key], f"{where}{key}.")
        return out
    if old == new:
        return []
    if isinstance(old, list) and isinstance(new, list):
        added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
        return [f"{where.rstrip('.')}: added {added}, removed {removed}"]
    return [f"{where.rstrip('.')}: {old!r} -> {new!r}"]


def test_the_committed_key_table_is_current():
    committed = generator.TABLE.read_text(encoding="utf-8")
    derived = generator.generate()
    differences = _differences(json.loads(committed), derived)
    assert not differences and committed == generator.render(derived), (
        f"{generator.TABLE.relative_to(ROOT)} is stale (the source of LAVIS or of the plugin reads other "
        f"keys now): regenerate it with `{generator.COMMAND}` and review the diff. Differences: "
        + "; ".join(differences or ["formatting only"])
    )


def test_the_check_reads_the_shipped_table_and_parses_no_source():
    assert Path(str(files("lavis_listwise").joinpath(config_check.TABLE_FILE))) == generator.TABLE
    assert config_check.key_table() == json.loads(generator.TABLE.read_text(encoding="utf-8"))
    assert "ast" not in vars(config_check) and "inspect" not in vars(config_check)
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert config_check.TABLE_FILE in setup["options.package_data"]["lavis_listwise"]  # in the wheel


class _ArchWithOwnKey(BlipRetrieval):
    """A new arch: its from_config alone defines its keys."""

    @classmethod
    def from_config(cls, cfg=None):
        return cls._helper(cfg, size=cfg.get("my_size", 3))

    @classmethod
    def _helper(cls, model_cfg, size):
        return model_cfg["my_depth"], size


class _ArchWithDynamicCall(BlipRetrieval):
    @classmethod
    def from_config(cls, cfg=None):
        build = {"a": print}[cfg.get("kind")]
        return build(cfg)


def test_a_new_arch_needs_no_list_of_keys():
    keys, unresolved = generator.model_keys_of_class(_ArchWithOwnKey)
    assert {"my_size", "my_depth", "arch", "model_type"} <= keys and unresolved == ()
    # a call the scan cannot follow is reported (and the arch's model keys are then not checked)
    keys, unresolved = generator.model_keys_of_class(_ArchWithDynamicCall)
    assert "kind" in keys and unresolved == ("_ArchWithDynamicCall.from_config: build(cfg)",)
