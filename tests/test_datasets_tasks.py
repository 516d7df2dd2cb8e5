"""Builders, task and CLI errors through LAVIS's own Config, on real files."""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import dataset_yaml, write_run_yaml
from lavis.common.config import Config
from lavis.common.registry import registry

import lavis_listwise  # noqa: F401


def _config(path, options=()):
    return Config(argparse.Namespace(cfg_path=str(path), options=list(options)))


def test_builder_adds_rsc_indices(tmp_path, tiny_dataset):
    cfg = _config(write_run_yaml(tmp_path / "r.yaml", tiny_dataset, tmp_path / "o", tmp_path / "c"))
    task = registry.get_task_class("retrieval_listwise").setup_task(cfg=cfg)
    datasets = task.build_datasets(cfg)["retrieval_listwise_json"]
    train = datasets["train"]
    assert len(train) == 80 and train.num_images == 16 and train.image_caption_index.shape == (16, 5)
    sample = train[7]
    assert sample["caption_index"] == 7 and train.captions[7] == sample["text_input"]
    assert 7 in sample["image_caption_index"].tolist()
    assert all(train.captions[i] for i in sample["image_caption_index"].tolist())
    assert task.train_captions() == train.captions
    assert datasets["test"].image_caption_index.shape == (8, 5)


def test_two_training_datasets_do_not_collide(tmp_path, tiny_dataset):
    second = tmp_path / "second"
    shutil.copytree(tiny_dataset, second)
    extra = dataset_yaml(second, builder="coco_retrieval_listwise") + "\n"
    text = write_run_yaml(tmp_path / "r.yaml", tiny_dataset, tmp_path / "o", tmp_path / "c").read_text()
    (tmp_path / "r.yaml").write_text(text.replace("run:\n", extra + "run:\n", 1))
    cfg = _config(tmp_path / "r.yaml")
    task = registry.get_task_class("retrieval_listwise").setup_task(cfg=cfg)
    built = task.build_datasets(cfg)
    first, other = task.train_caption_datasets
    assert {id(first), id(other)} == {id(built[n]["train"]) for n in built}
    ids = {first[i]["image_id"] for i in range(len(first))} | {
        other[i]["image_id"] for i in range(len(other))
    }
    assert len(ids) == 32  # 16 images each, no collision
    rows = [other[i]["caption_index"] for i in range(len(other))]
    assert min(rows) == len(first.captions) and len(task.train_captions()) == 160
    assert task.train_captions()[rows[3]] == other[3]["text_input"]


def test_missing_annotation_file_names_the_yaml_key(tmp_path, tiny_dataset):
    cfg_path = write_run_yaml(tmp_path / "r.yaml", tiny_dataset, tmp_path / "o", tmp_path / "c")
    cfg_path.write_text(cfg_path.read_text().replace("annotations/val.json", "annotations/nope.json"))
    cfg = _config(cfg_path)
    task = registry.get_task_class("retrieval_listwise").setup_task(cfg=cfg)
    with pytest.raises(
        FileNotFoundError, match=r"datasets\.retrieval_listwise_json\.build_info\.annotations\.val"
    ):
        task.build_datasets(cfg)


def test_eval_image_without_captions_is_an_error(tmp_path, tiny_dataset):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    test = json.loads((data / "annotations" / "test.json").read_text())
    test[2]["caption"] = []
    (data / "annotations" / "test.json").write_text(json.dumps(test))
    cfg = _config(write_run_yaml(tmp_path / "r.yaml", data, tmp_path / "o", tmp_path / "c"))
    task = registry.get_task_class("retrieval_listwise").setup_task(cfg=cfg)
    with pytest.raises(ValueError, match="have no caption"):
        task.build_datasets(cfg)


_RELOAD = """
import importlib
from lavis.common.registry import registry
import lavis_listwise
for name in (
    "lavis_listwise.models.blip_retrieval_listwise",
    "lavis_listwise.models.albef_retrieval_listwise",
    "lavis_listwise.models.clip_retrieval_listwise",
    "lavis_listwise.tasks.retrieval_listwise",
    "lavis_listwise.runners.runner_listwise",
    "lavis_listwise.datasets.retrieval_listwise",
    "lavis_listwise",
):
    importlib.reload(importlib.import_module(name))
assert registry.get_model_class("blip_retrieval_listwise").__module__.startswith("lavis_listwise")
try:
    registry.register_model("blip_retrieval_listwise")(registry.get_model_class("blip_retrieval"))
except KeyError as err:
    assert "already registered" in str(err), err
else:
    raise AssertionError("a LAVIS class took the plugin's name")
"""


def test_reloading_plugin_modules_never_raises():
    # in a fresh process: a reload registers new class objects, which would change the classes the
    # other tests of this session find in the registry
    out = subprocess.run([sys.executable, "-c", _RELOAD], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lavis_listwise", *args], capture_output=True, text=True, timeout=600
    )


def test_evaluate_cli_and_k_test_too_large(tmp_path, tiny_dataset):
    cfg = write_run_yaml(tmp_path / "r.yaml", tiny_dataset, tmp_path / "o", tmp_path / "c")
    ok = _cli("evaluate", "--cfg-path", str(cfg), "--job-id", "ev", "--options", "run.evaluate=True")
    assert ok.returncode == 0, ok.stderr[-3000:]
    results = json.loads((tmp_path / "o" / "ev" / "evaluate_results.json").read_text())
    assert {"txt_r1", "img_r1", "r_mean", "txt_ndcg10", "img_ndcg20"} <= set(results["test"])
    bad = _cli(
        "evaluate",
        "--cfg-path",
        str(cfg),
        "--job-id",
        "ev2",
        "--options",
        "run.evaluate=True",
        "run.k_test=9",
    )
    assert (
        bad.returncode == 1
        and "run.k_test = 9 is larger than the retrieval_listwise_json val split" in bad.stderr
    )
    missing = _cli("train", "--cfg-path", str(tmp_path / "nope.yaml"))
    assert missing.returncode != 0 and "--cfg-path" in missing.stderr and "nope.yaml" in missing.stderr


def test_changed_captions_rebuild_the_cache(tmp_path, tiny_dataset):
    """The runner embeds the current captions: a changed caption gets a new cache file, never the old one."""
    from listwise_ranking.relevance import CaptionEmbeddingCache

    cfg = _config(write_run_yaml(tmp_path / "r.yaml", tiny_dataset, tmp_path / "o", tmp_path / "c"))
    task = registry.get_task_class("retrieval_listwise").setup_task(cfg=cfg)
    task.build_datasets(cfg)
    captions = task.train_captions()
    cache = CaptionEmbeddingCache(tmp_path / "c")
    before = cache.get(captions, progress=False)
    changed = captions[:5] + ["a purple elephant"] + captions[6:]
    after = cache.get(changed, progress=False)
    assert cache.path_for(changed) != cache.path_for(captions)
    assert not torch.allclose(after[5], before[5]) and torch.equal(after[:5], before[:5])


@pytest.mark.parametrize("name", ["blip", "albef"])
def test_project_yamls_parse_and_validate(name):
    """Every shipped experiment YAML goes through LAVIS's Config and the plugin's key checks."""
    from lavis_listwise.config import EvalSettings, ListwiseConfig
    from lavis_listwise.resources import config_path

    paths = sorted(Path(config_path(f"projects/{name}/retrieval_coco_eval.yaml")).parent.glob("*.yaml"))
    assert len(paths) == 4
    for path in paths:
        cfg = _config(path)
        settings = EvalSettings.from_run_cfg(cfg.run_cfg)
        assert settings.itm_eval == "fast" and settings.coco_1k in ("auto", "true", "false"), path
        ListwiseConfig.from_cfg(cfg.model_cfg.listwise)


def test_coco_1k_on_another_split_fails_when_datasets_are_built(tmp_path, tiny_dataset):
    """Not at the end of training, when the test split is finally evaluated."""
    cfg = _config(
        write_run_yaml(tmp_path / "r.yaml", tiny_dataset, tmp_path / "o", tmp_path / "c"),
        ["run.coco_1k=True"],
    )
    task = registry.get_task_class("retrieval_listwise").setup_task(cfg=cfg)
    with pytest.raises(ValueError, match="run.coco_1k: the COCO 1K protocol needs the 5,000-image"):
        task.build_datasets(cfg)
