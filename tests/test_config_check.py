"""Strict configuration keys: keys nothing reads are refused before anything is built, naming the
key and the closest valid one; the valid keys come from the table generated from LAVIS's and the
plugin's source (tests/test_config_keys_table.py tests the generator and that the table is current)."""

import argparse
import importlib.metadata
import logging
import os
import subprocess
import sys
from pathlib import Path

import lavis
import pytest
from conftest import write_run_yaml
from omegaconf import OmegaConf

import lavis_listwise  # noqa: F401
from lavis_listwise.commands.train import build_run
from lavis_listwise.config_check import (
    STRICT_SWITCH,
    _warn_if_other_lavis,
    check_config,
    key_table,
    model_keys,
    plugin_archs,
    valid_build_info_keys,
    valid_dataset_keys,
    valid_model_keys,
    valid_run_keys,
    valid_top_level_keys,
)
from lavis_listwise.resources import data_dir
from listwise_ranking.errors import ConfigError

LAVIS_PROJECTS = Path(lavis.__file__).parent / "projects"
BUILDER = "datasets.retrieval_listwise_json"


@pytest.fixture
def run_yaml(tmp_path, tiny_dataset):
    return write_run_yaml(tmp_path / "run.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache")


def _edited(path: Path, **sections) -> Path:
    """The YAML at ``path`` with ``sections`` (dotted key -> value) set, written next to it."""
    cfg = OmegaConf.load(path)
    for key, value in sections.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    out = path.with_name("edited.yaml")
    OmegaConf.save(cfg, out)
    return out


# ----------------------------------------------------------------------------- derived facts
def test_run_keys_are_what_lavis_and_the_plugin_read():
    keys = valid_run_keys()
    # LAVIS: RunnerBase.max_epoch / lr_scheduler / scaler, RetrievalTask via compute_sim_matrix(task_cfg),
    # init_distributed_mode(args); the plugin: EvalSettings, runner, process group, this check
    lavis_reads = (
        "max_epoch",
        "warmup_steps",
        "beta2",
        "amp",
        "k_test",
        "dist_url",
        "world_size",
        "max_iters",
    )
    plugin_reads = ("itm_eval", "coco_1k", "save_rankings", "dist_timeout", "keep_epoch_checkpoints")
    for key in (*lavis_reads, *plugin_reads, "agg_metric"):
        assert key in keys, key
    assert "strict_config" in keys and STRICT_SWITCH == "run.strict_config"
    assert "max_epochs" not in keys and "itm_evals" not in keys and "run." not in keys


def test_model_keys_follow_from_config_into_lavis():
    blip, albef = model_keys("blip_retrieval_listwise"), model_keys("albef_retrieval_listwise")
    assert blip.unresolved == () and albef.unresolved == ()
    # from_config, build_vision_encoder -> VisionTransformerEncoder.from_config (LAVIS), build_text_encoder,
    # load_configured_checkpoint -> BaseModel.load_checkpoint_from_config (LAVIS), Config (arch, model_type)
    read = ("queue_size", "negative_all_rank", "vit_drop_path_rate", "vit_layer_norm_epsilon", "vit_depth")
    read += ("text_config", "med_config_path", "finetuned", "pretrained", "listwise", "arch", "model_type")
    for key in read:
        assert key in blip.keys, key
    assert {"use_distill", "temp"} <= albef.keys and "negative_all_rank" not in albef.keys
    assert "use_distill" not in blip.keys and "queue_sise" not in blip.keys
    assert plugin_archs() == [
        "albef_retrieval_listwise",
        "blip2_retrieval_listwise",
        "blip_retrieval_listwise",
        "clip_retrieval_listwise",
    ]
    clip = model_keys("clip_retrieval_listwise")
    assert clip.unresolved == ()
    assert {"model_config", "pretrained", "precision", "max_logit_scale", "listwise"} <= clip.keys
    assert "vit_type" not in clip.keys and "med_config_path" not in clip.keys


def test_dataset_and_top_level_keys():
    assert valid_top_level_keys() == {"model", "datasets", "run", "demo"}
    for builder in ("coco_retrieval_listwise", "retrieval_listwise_json", "coco_retrieval"):
        keys = valid_dataset_keys(builder)
        assert {"data_type", "build_info", "vis_processor", "text_processor", "type"} <= keys, builder
        assert valid_build_info_keys(builder, "images") == {"annotations", "images"}


# ----------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize("path", sorted(data_dir("projects").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_run_yaml_passes(path):
    check_config(OmegaConf.load(path))  # also checks the arch's default model YAML it merges


@pytest.mark.parametrize("path", sorted(data_dir("configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_default_yaml_carries_only_read_keys(path):
    cfg = OmegaConf.load(path)
    if "model" in cfg:
        # LAVIS reads a model default YAML's `model` (BaseModel.from_pretrained, Config) and
        # `preprocess` (load_model_and_preprocess)
        assert set(cfg) <= {"model", "preprocess"}
        assert set(cfg.model) <= valid_model_keys(cfg.model.arch)
    else:
        assert set(cfg) == {"datasets"}
        for builder, section in cfg.datasets.items():
            assert set(section) <= valid_dataset_keys(builder)
            assert set(section.build_info) <= valid_build_info_keys(builder, section.data_type)


@pytest.mark.parametrize(
    "path", sorted(LAVIS_PROJECTS.rglob("*retrieval*.yaml")), ids=lambda p: f"{p.parent.parent.name}/{p.name}"
)
def test_lavis_own_retrieval_yamls_pass_with_the_plugin_archs(path):
    cfg = OmegaConf.load(path)
    assert set(cfg) <= valid_top_level_keys() and set(cfg.run) <= valid_run_keys()
    if cfg.model.arch in ("blip_retrieval", "albef_retrieval"):
        assert set(cfg.model) <= valid_model_keys(cfg.model.arch + "_listwise")


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "sections, options, needle",
    [
        ({"run.max_epochs": 3}, [], "run.max_epochs: unknown key; did you mean run.max_epoch?"),
        ({"run.itm_evals": "stock"}, [], "run.itm_evals: unknown key; did you mean run.itm_eval?"),
        ({"model.queue_sise": 64}, [], "model.queue_sise: unknown key; did you mean model.queue_size?"),
        ({"runn.max_epoch": 3}, [], "runn: unknown key; did you mean run?"),
        (
            {f"{BUILDER}.vis_procesor": {}},
            [],
            f"{BUILDER}.vis_procesor: unknown key; did you mean {BUILDER}.vis_p",
        ),
        (
            {f"{BUILDER}.build_info.imagse": {"storage": "/x"}},
            [],
            f"{BUILDER}.build_info.imagse: unknown key; did you mean {BUILDER}.build_info.images?",
        ),
        (
            {"demo.listwise_weigth": 1},
            [],
            "demo.listwise_weigth: unknown key; did you mean demo.listwise_weight?",
        ),
        (
            {},
            ["run.max_epochs=3"],
            "run.max_epochs (given in --options): unknown key; did you mean run.max_epoch",
        ),
        ({}, ["run.max_epoch"], "--options: 'run.max_epoch' is not key=value (write run.max_epoch=<value>)"),
        ({}, ["run.max_epoch", "3"], "(write run.max_epoch=3)"),
        ({}, ["model.model_type=flickr"], "model.model_type cannot be overridden on the command line"),
        ({}, ["run.task=retrieval_listwis"], "run.task: 'retrieval_listwis' is not a registered LAVIS task"),
        (
            {"model.model_type": "cocoo"},
            [],
            "model.model_type: 'cocoo' is not a type of BlipRetrievalListwise;",
        ),
        ({}, ["run.strict_config=maybe"], "run.strict_config must be true or false, got 'maybe'"),
    ],
)
def test_unread_keys_are_refused_before_anything_is_built(tmp_path, run_yaml, sections, options, needle):
    path = _edited(run_yaml, **sections)
    with pytest.raises(ConfigError) as err:
        build_run(argparse.Namespace(cfg_path=str(path), options=options, job_id="job"), quiet=True)
    assert needle in str(err.value), str(err.value)
    if "unknown key" in needle:
        assert f"set {STRICT_SWITCH}: false" in str(err.value)
    assert not (tmp_path / "out").exists()  # the runner was never built


def test_every_unknown_key_is_named_in_one_message(run_yaml):
    path = _edited(run_yaml, **{"run.max_epochs": 3, "model.queue_sise": 64})
    with pytest.raises(ConfigError, match=r"run\.max_epochs: .*; model\.queue_sise: .*strict_config"):
        check_config(OmegaConf.load(path), ["run.seeed=1"])


def test_strict_config_false_skips_the_unknown_key_check(run_yaml):
    path = _edited(run_yaml, **{"run.max_epochs": 3, "run.strict_config": False, "model.my_extension": 1})
    check_config(OmegaConf.load(path), ["run.my_option=2"])
    with pytest.raises(ConfigError, match="not key=value"):  # malformed options are refused either way
        check_config(OmegaConf.load(path), ["run.my_option"])


def test_a_misspelled_key_fails_the_real_cli_instead_of_training(run_yaml):
    path = _edited(run_yaml, **{"run.max_epochs": 3})
    out = subprocess.run(
        [sys.executable, "-m", "lavis_listwise", "train", "--cfg-path", str(path), "--job-id", "job"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "lavis-listwise: error: run.max_epochs: unknown key; did you mean run.max_epoch?" in out.stderr
    assert "Start training" not in out.stderr + out.stdout


# ----------------------------------------------------------------------------- outside the table
def test_an_arch_or_builder_outside_the_table_is_not_checked_with_one_warning(run_yaml, caplog):
    from lavis.common.registry import registry

    from lavis_listwise.datasets.retrieval_listwise import JsonRetrievalListwiseBuilder
    from lavis_listwise.models import BlipRetrievalListwise

    class UserArch(BlipRetrievalListwise):
        """A user's own LAVIS extension: registered, but not in the generated table."""

    class UserBuilder(JsonRetrievalListwiseBuilder):
        pass

    registry.register_model("user_arch_ext")(UserArch)
    registry.register_builder("user_builder_ext")(UserBuilder)
    try:
        cfg = OmegaConf.load(run_yaml)
        cfg.model.arch, cfg.model.my_extension = "user_arch_ext", 1
        cfg.datasets.user_builder_ext = cfg.datasets.pop("retrieval_listwise_json")
        cfg.datasets.user_builder_ext.my_key = 2
        with caplog.at_level(logging.WARNING):
            check_config(cfg)
        warned = [r.getMessage() for r in caplog.records if "not checked" in r.getMessage()]
        assert len(warned) == 1, warned
        assert warned[0].startswith(
            "keys not checked under model (user_arch_ext), datasets.user_builder_ext: not in the strict "
            "key check's table (generated from LAVIS 1.0.2"
        )
        cfg.run.max_epochs = 3  # the sections the table covers are still checked
        with pytest.raises(ConfigError, match="run.max_epochs: unknown key"):
            check_config(cfg)
    finally:
        registry.mapping["model_name_mapping"].pop("user_arch_ext", None)
        registry.mapping["builder_name_mapping"].pop("user_builder_ext", None)


def test_another_lavis_version_is_named_in_a_warning(caplog):
    assert key_table()["lavis_version"] == importlib.metadata.version("salesforce-lavis") == "1.0.2"
    with caplog.at_level(logging.WARNING):
        _warn_if_other_lavis("1.0.2", "1.0.2")
        assert not caplog.records
        _warn_if_other_lavis("1.0.2", "1.1.0")
    assert [r.getMessage() for r in caplog.records] == [
        "the strict key check's table was generated from LAVIS 1.0.2, but LAVIS 1.1.0 is installed: its "
        f"keys are checked as LAVIS 1.0.2 reads them (set {STRICT_SWITCH}: false to skip this check for your "
        "own LAVIS extensions)"
    ]
