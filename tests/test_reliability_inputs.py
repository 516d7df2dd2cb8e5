"""Bad inputs found by a probe of main (edc6da6): each is refused with the plugin's error type (one
``lavis-listwise: error:`` line, exit 1, no traceback) before anything is built or trained, or
reported as a warning / check-data problem. Real LAVIS, tiny models, real files throughout."""

import argparse
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_run_yaml
from lavis.common.config import Config
from lavis.common.registry import registry

import lavis_listwise  # noqa: F401
from lavis_listwise.demo.synthetic import relevance_file
from lavis_listwise_cli import main
from listwise_ranking.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError

MARKER = "lavis-listwise: error:"


@pytest.fixture
def run_yaml(tmp_path, tiny_dataset):
    return write_run_yaml(tmp_path / "run.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache")


@pytest.fixture
def data(tmp_path, tiny_dataset) -> Path:
    """A private copy of the tiny dataset to change."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


def _user_error(capsys, argv, *needles) -> str:
    """``main(argv)`` returns 1 with one ``lavis-listwise: error:`` line holding every needle."""
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line[line.index(MARKER) :] for line in err.splitlines() if MARKER in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _task_and_cfg(cfg_path, options=()):
    cfg = Config(argparse.Namespace(cfg_path=str(cfg_path), options=list(options)))
    return registry.get_task_class("retrieval_listwise").setup_task(cfg=cfg), cfg


# ----------------------------------------------------------------------------- 4. ground truth
def test_ground_truth_of_another_split_or_reversed_is_refused(tmp_path, tiny_dataset, data, capsys):
    """Own annotated captions are positives by definition: val's file with its rows reversed, or the
    test split's file (the same shape) for a val split whose images have 6, 5, ..., 5, 4 captions,
    names the file and the first bad row. (A file of another split with the very same caption
    layout cannot be told apart this way: its own-caption blocks are all 1 too.)"""
    run_yaml = write_run_yaml(tmp_path / "run.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache")
    val = np.load(relevance_file(tiny_dataset, "val"))
    reversed_rows = tmp_path / "reversed.npy"
    np.save(reversed_rows, val[::-1].copy())
    own = r"run\.gt_relevance\.val: .* row (\d+) \(image .*own annotated"
    task, cfg = _task_and_cfg(run_yaml, [f"run.gt_relevance.val={reversed_rows}"])
    with pytest.raises(DataError, match=own) as err:
        task.build_datasets(cfg)
    assert str(reversed_rows) in str(err.value) and "row 0 " in str(err.value)
    # relevance-report says so instead of printing a meaningless Spearman
    argv = ["relevance-report", "--cfg-path", str(run_yaml), "--options"]
    _user_error(capsys, [*argv, f"run.gt_relevance.val={reversed_rows}"], "run.gt_relevance.val", "row 0")
    # the right file passes
    task, cfg = _task_and_cfg(run_yaml, [f"run.gt_relevance.val={relevance_file(tiny_dataset, 'val')}"])
    assert task.build_datasets(cfg)["retrieval_listwise_json"]["val"].ground_truth is not None

    # another split's file of the same shape, for a split whose caption layout differs
    path = data / "annotations" / "val.json"
    entries = json.loads(path.read_text())
    entries[0]["caption"].append(entries[0]["caption"][0] + " again")
    entries[-1]["caption"].pop()
    path.write_text(json.dumps(entries))
    other = relevance_file(tiny_dataset, "test")
    yaml = write_run_yaml(tmp_path / "changed.yaml", data, tmp_path / "out", tmp_path / "cache")
    task, cfg = _task_and_cfg(yaml, [f"run.gt_relevance.val={other}"])
    with pytest.raises(DataError, match=own) as err:
        task.build_datasets(cfg)
    assert str(other) in str(err.value)


# ----------------------------------------------------------------------------- 5. fp16 overflow
def test_embeddings_beyond_float16_keep_their_cosines(tmp_path):
    from listwise_ranking.relevance.files import read_caption_embeddings

    g = torch.Generator().manual_seed(0)
    raw = torch.randn(6, 8, generator=g, dtype=torch.float64)
    raw[0] *= 3.8e5 / raw[0].abs().max()  # finite in float32, inf in float16
    raw[1] *= 1e-7  # underflows in float16
    np.save(tmp_path / "emb.npy", raw.numpy().astype(np.float32))
    table = read_caption_embeddings(tmp_path / "emb.npy", 6, "model.listwise.relevance.embeddings")
    kept = table.half().float()  # what the model keeps
    assert torch.isfinite(kept).all()
    cos = torch.nn.functional.normalize(kept, dim=-1) @ torch.nn.functional.normalize(kept, dim=-1).t()
    expected = torch.nn.functional.normalize(raw, dim=-1) @ torch.nn.functional.normalize(raw, dim=-1).t()
    torch.testing.assert_close(cos.double(), expected, atol=2e-3, rtol=0)
    assert torch.equal(table[2:], raw[2:].float())  # rows in range are kept as they are

    bad = raw.numpy().astype(np.float32)
    bad[3, 5] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match=r"embeddings: .*nan.npy.* non-finite value\(s\) .*row 3, column 5"):
        read_caption_embeddings(tmp_path / "nan.npy", 6, "model.listwise.relevance.embeddings")


def test_non_finite_listwise_gradients_stop_before_the_optimizer_step():
    """Non-finite relevance gives a finite (zero) listwise loss with NaN gradients: the per-step check
    covers the gradients and names the listwise term, before any weight is updated."""
    from test_models import batch, tiny_cfg

    from lavis_listwise.tasks.retrieval_listwise import checked_loss_values, gradient_norm

    arch = "blip_retrieval_listwise"
    model = registry.get_model_class(arch).from_config(tiny_cfg(arch, weight=1.0)).train()
    model.set_caption_embeddings(torch.full((20, 16), float("inf")))  # what fp16 overflow gave
    torch.manual_seed(0)
    output = model(batch())
    terms = {k: v.detach() for k, v in output.items() if k.startswith("loss_")}
    output.loss.backward()
    norm = gradient_norm(model)
    assert not torch.isfinite(norm)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*gradients are non-finite.*loss_listwise"):
        checked_loss_values(output.loss, terms, 0, 3, norm)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    finite = checked_loss_values(torch.tensor(1.0), {"loss_itc": torch.tensor(0.5)}, 0, 0, torch.tensor(2.0))
    assert finite == {"loss": 1.0, "loss_itc": 0.5}  # the norm is checked, not logged


# ----------------------------------------------------------------------------- 7. shared image files
def _share_image(data: Path) -> tuple[str, str]:
    """Every entry of the second training image points at the first image's file."""
    path = data / "annotations" / "train.json"
    train = json.loads(path.read_text())
    first, second = train[0], next(e for e in train if e["image_id"] != train[0]["image_id"])
    for entry in train:
        if entry["image_id"] == second["image_id"]:
            entry["image"] = first["image"]
    path.write_text(json.dumps(train))
    return first["image"], second["image_id"]


def test_one_image_under_two_image_ids_is_reported(tmp_path, data, caplog):
    from lavis_listwise.commands.check_data import check_data

    image, image_id = _share_image(data)
    cfg_path = write_run_yaml(tmp_path / "r.yaml", data, tmp_path / "o", tmp_path / "c")
    report = check_data(str(cfg_path), workers=1, progress=False)
    shared = [p for p in report.problems if "under image_id" in p]
    assert len(shared) == 1 and repr(image) in shared[0] and repr(image_id) in shared[0], report.problems
    assert str(data / "annotations" / "train.json") in shared[0]
    task, cfg = _task_and_cfg(cfg_path)
    with caplog.at_level(logging.WARNING):
        task.build_datasets(cfg)
    assert any("more than one image_id" in r.getMessage() and image in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- 9 / 10. one message
def _no_weights_dir(tmp_path) -> Path:
    from listwise_ranking.relevance.encoder import default_encoder_path

    out = tmp_path / "bert-no-weights"
    out.mkdir()
    shutil.copy(Path(default_encoder_path()) / "config.json", out / "config.json")
    return out


CASES = {
    "itm_eval": (["run.itm_eval=slow"], ["run.itm_eval"]),
    "itm_eval_pairs": (["run.itm_eval_pairs=0"], ["run.itm_eval_pairs"]),
    "eval_feature_device": (["run.eval_feature_device=gpu"], ["run.eval_feature_device"]),
    "save_rankings": (["run.save_rankings=-1"], ["run.save_rankings"]),
    "coco_1k": (["run.coco_1k=maybe"], ["run.coco_1k"]),
    "text_config": (["model.text_config.hiden_size=64"], ["model.text_config", "hiden_size"]),
    "text_init_missing": (["model.text_init={tmp}/no-such-bert"], ["model.text_init", "no-such-bert"]),
    "text_init_no_weights": (["model.text_init={nowt}"], ["model.text_init", "model.safetensors"]),
    "encoder": (["model.listwise.relevance.encoder={tmp}/no-enc"], ["model.listwise.relevance.encoder"]),
    "annotations": (
        ["datasets.retrieval_listwise_json.build_info.annotations.val.storage={tmp}/no.json"],
        ["datasets.retrieval_listwise_json.build_info.annotations.val.storage", "no.json"],
    ),
    "images": (
        ["datasets.retrieval_listwise_json.build_info.images.storage={tmp}/no-images"],
        ["datasets.retrieval_listwise_json.build_info.images.storage", "no-images"],
    ),
    "batch_size_abc": (["model.listwise.relevance.batch_size=abc"], ["model.listwise.relevance.batch_size"]),
    "max_txt_len_abc": (["model.max_txt_len=abc"], ["model.max_txt_len"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_values_are_one_message_before_anything_is_built(tmp_path, run_yaml, capsys, case):
    options, needles = CASES[case]
    nowt = _no_weights_dir(tmp_path) if case == "text_init_no_weights" else ""
    options = [o.format(tmp=tmp_path, nowt=nowt) for o in options]
    _user_error(capsys, ["train", "--cfg-path", str(run_yaml), "--options", *options], *needles)
    assert not (tmp_path / "out").exists()  # nothing built: the runner creates output_dir


def test_cuda_and_triton_without_a_gpu_are_one_message(tmp_path, run_yaml, capsys):
    from listwise_ranking.losses.kernels.triton import triton_available

    argv = ["train", "--cfg-path", str(run_yaml), "--options"]
    if not torch.cuda.is_available():
        _user_error(capsys, [*argv, "run.device=cuda"], "run.device", "no CUDA GPU")
    if not triton_available(torch.device("cpu")):
        _user_error(capsys, [*argv, "model.listwise.kernel=triton"], "model.listwise.kernel", "triton")
    assert not (tmp_path / "out").exists()


def test_a_misspelled_clip_vision_key_is_one_message(tmp_path, tiny_dataset, capsys):
    cfg_path = write_run_yaml(
        tmp_path / "clip.yaml", tiny_dataset, tmp_path / "out", tmp_path / "c", arch="clip_retrieval_listwise"
    )
    argv = ["train", "--cfg-path", str(cfg_path), "--options", "model.model_config.vision_cfg.layer=2"]
    _user_error(capsys, argv, "model.model_config.vision_cfg", "'layer'", "did you mean 'layers'")


def test_a_corrupt_text_init_file_names_the_key_and_the_file(tmp_path):
    from test_models import tiny_cfg

    init = _no_weights_dir(tmp_path)
    (init / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    cfg = tiny_cfg("blip_retrieval_listwise")
    cfg.text_init = str(init)
    cfg.text_config = None
    with pytest.raises(CheckpointError, match=r"model\.text_init: cannot read .*model\.safetensors"):
        registry.get_model_class("blip_retrieval_listwise").from_config(cfg)


def _jpeg_claiming(path: Path, width: int, height: int) -> None:
    """Rewrite a real JPEG's frame header (SOF0) to claim ``width`` x ``height`` pixels."""
    raw = bytearray(path.read_bytes())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(raw))


def test_a_decompression_bomb_fails_when_the_datasets_are_built(tmp_path, data):
    bomb = data / "images" / "train" / "train_000003.jpg"
    _jpeg_claiming(bomb, 30000, 30000)
    task, cfg = _task_and_cfg(write_run_yaml(tmp_path / "r.yaml", data, tmp_path / "o", tmp_path / "c"))
    with pytest.raises(DataError) as err:
        task.build_datasets(cfg)
    message = str(err.value)
    assert "datasets.retrieval_listwise_json.build_info.images.storage" in message
    assert str(bomb) in message and "DecompressionBombError" in message


# ----------------------------------------------------------------------------- 11. read-only cache
def _read_only(path: Path):
    """Make ``path`` read-only for this process; returns the undo. Root ignores permissions, so for
    root the directory is bind-mounted read-only over itself (EROFS, as on a read-only volume)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    for cmd in (["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,bind,ro", str(path)]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["umount", str(path)], capture_output=True)
            pytest.skip(f"running as root and cannot mount a read-only directory: {done.stderr.strip()}")
    return lambda: subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_cache_with_a_corrupt_table_warns_and_keeps_the_embeddings_in_memory(
    tmp_path, minilm, caplog
):
    from listwise_ranking.relevance import CaptionEmbeddingCache

    root = tmp_path / "cache"
    root.mkdir()
    captions = ["a red circle", "two blue squares"]
    cache = CaptionEmbeddingCache(root, minilm)
    corrupt = cache.path_for(captions)
    corrupt.write_bytes(b"LAVIS-LISTWISE-EMB\x01\n garbage")
    undo = _read_only(root)
    try:
        with pytest.raises(OSError):
            (root / "probe").write_text("x")  # really read-only
        with caplog.at_level(logging.WARNING):
            emb = cache.get(captions, progress=False)
    finally:
        undo()
    assert tuple(emb.shape) == (2, 384) and torch.isfinite(emb).all()
    assert torch.equal(emb, cache.store(captions, minilm.encode(captions, progress=False), write=False))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "is unusable" in messages and "cannot be removed" in messages and "cannot be written" in messages
    assert corrupt.read_bytes().endswith(b"garbage")  # untouched


# ----------------------------------------------------------------------------- 12. smaller ones
@pytest.mark.parametrize("weight", ["-1", "nan"])
def test_demo_weight_and_paths_are_checked_before_any_training(tmp_path, capsys, weight):
    def demo(output_dir, data_dir, *extra):
        return ["demo", "--quick", "--output-dir", str(output_dir), "--data-dir", str(data_dir), *extra]

    out, data = tmp_path / "o", tmp_path / "d"
    _user_error(capsys, demo(out, data, "--weight", weight), "--weight")
    assert not data.exists() and not list(tmp_path.rglob("*.pth"))  # no data generated, nothing trained
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _user_error(capsys, demo(a_file, data), "--output-dir", "is a file, not a directory")
    _user_error(capsys, demo(out, a_file), "--data-dir", "is a file, not a directory")


def test_a_directory_as_cfg_path_is_named_as_such(tmp_path, capsys):
    _user_error(capsys, ["train", "--cfg-path", str(tmp_path)], "--cfg-path", "is a directory")


def test_a_fractional_relevance_batch_size_is_refused():
    from lavis_listwise.config import RelevanceConfig

    with pytest.raises(
        ConfigError, match=r"model\.listwise\.relevance\.batch_size must be an integer, got 2\.7"
    ):
        RelevanceConfig.from_cfg({"batch_size": 2.7})
    assert RelevanceConfig.from_cfg({"batch_size": 3}).batch_size == 3


def test_resuming_with_a_changed_config_names_the_differing_keys(tmp_path, run_yaml, caplog):
    from lavis_listwise.commands.train import build_run
    from lavis_listwise.distributed import process_group_released

    def runner(job, *options):
        args = argparse.Namespace(cfg_path=str(run_yaml), options=list(options), job_id=job)
        return build_run(args, quiet=True)

    with process_group_released():
        first = runner("first")
        first._save_checkpoint(0)
        path = Path(first.output_dir) / "checkpoint_0.pth"
        second = runner("second", "run.batch_size_train=4", f"run.resume_ckpt_path={path}")
        with caplog.at_level(logging.WARNING):
            second._load_checkpoint(str(path))
    notes = [r.getMessage() for r in caplog.records if "differs from the checkpoint" in r.getMessage()]
    assert len(notes) == 1 and "run.batch_size_train: 8 -> 4" in notes[0], notes
    assert "resume_ckpt_path" not in notes[0]
