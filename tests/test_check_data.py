"""Data errors: bad annotation files and images are named by file and entry when the datasets are
built, and ``lavis-listwise check-data`` decodes every image and reports every problem. Real files."""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_run_yaml
from lavis.common.config import Config
from lavis.common.registry import registry
from PIL import Image, ImageFile

import lavis_listwise  # noqa: F401
from lavis_listwise.commands.check_data import check_data
from listwise_ranking.errors import DataError

STORAGE_KEY = "datasets.retrieval_listwise_json.build_info.images.storage"


@pytest.fixture
def data(tmp_path, tiny_dataset) -> Path:
    """A private copy of the tiny dataset (16 train images x 5 captions, 8 val, 8 test) to damage."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


def _load(data: Path, split: str) -> list:
    return json.loads((data / "annotations" / f"{split}.json").read_text())


def _save(data: Path, split: str, entries: list) -> None:
    (data / "annotations" / f"{split}.json").write_text(json.dumps(entries, indent=1))


def _build(tmp_path: Path, data: Path):
    cfg_path = write_run_yaml(tmp_path / "r.yaml", data, tmp_path / "o", tmp_path / "c")
    cfg = Config(argparse.Namespace(cfg_path=str(cfg_path), options=[]))
    return registry.get_task_class("retrieval_listwise").setup_task(cfg=cfg).build_datasets(cfg)


def _truncated_jpeg(path: Path) -> None:
    """Re-encode the fixture's image at 256 px (as large as a real photo's header share) and keep 40%."""
    with Image.open(path) as image:
        big = image.convert("RGB").resize((256, 256), Image.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: int(0.4 * len(buffer.getvalue()))])


def _missing_caption(data):
    train = _load(data, "train")
    del train[3]["caption"]
    _save(data, "train", train)


def _empty_caption(data):
    train = _load(data, "train")
    train[7]["caption"] = "   "
    _save(data, "train", train)


def _caption_only_punctuation(data):
    train = _load(data, "train")
    train[9]["caption"] = "!!!"  # BLIP's caption processor strips it to ""
    _save(data, "train", train)


def _shared_image_id(data):
    train = _load(data, "train")
    train[12]["image_id"] = train[0]["image_id"]  # entry 12 is image 2's caption
    _save(data, "train", train)


def _non_utf8(data):
    path = data / "annotations" / "train.json"
    path.write_bytes(path.read_bytes().replace(b"There", b"Th\xe9re", 1))


def _bad_json(data):
    path = data / "annotations" / "val.json"
    path.write_text(path.read_text().rstrip().rstrip("]"))


def _eval_image_twice(data):
    val = _load(data, "val")
    _save(data, "val", val + [dict(val[1])])


def _eval_caption_string(data):
    test = _load(data, "test")
    test[4]["caption"] = "a single caption instead of a list"
    _save(data, "test", test)


def _missing_image(data):
    (data / "images" / "train" / "train_000005.jpg").unlink()


@pytest.mark.parametrize(
    "damage, needles",
    [
        (_missing_caption, ["train.json: entry 3: has no 'caption'"]),
        (_empty_caption, ["train.json: entry 7: 'caption' is empty"]),
        (_caption_only_punctuation, ["train.json: entry 9: the caption is empty after the text processor"]),
        (_shared_image_id, ["train.json: entry 12: image_id 'train_000000'", "two images cannot share"]),
        (_non_utf8, ["train.json: not UTF-8 text: byte 0xe9 at offset", "(line "]),
        (_bad_json, ["val.json: not valid JSON", "at line"]),
        (_eval_image_twice, ["val.json: entry 8: image 'images/val/val_000001.jpg' is listed twice"]),
        (_eval_caption_string, ["test.json: entry 4: 'caption' must be a list"]),
        (_missing_image, [f"{STORAGE_KEY}: 1 of the 16 images of the train", "train_000005.jpg"]),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_bad_annotations_and_missing_images_fail_when_the_datasets_are_built(tmp_path, data, damage, needles):
    damage(data)
    with pytest.raises(DataError) as err:
        _build(tmp_path, data)
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    assert str(data) in str(err.value)  # the file (or image root) by its full path


def test_truncated_jpeg_loads_silently_under_lavis_but_not_in_check_data(tmp_path, data):
    cut = data / "images" / "train" / "train_000002.jpg"
    _truncated_jpeg(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # what `import lavis` sets
    with Image.open(cut) as image:
        image.convert("RGB")  # no error: training would use a half-grey image
    cfg_path = write_run_yaml(tmp_path / "r.yaml", data, tmp_path / "o", tmp_path / "c")
    report = check_data(str(cfg_path), workers=1, progress=False)  # the in-process path
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    assert report.n_images == 32
    (problem,) = report.problems
    assert problem.startswith(f"{cut}: cannot be decoded (OSError: image file is truncated")
    assert problem.endswith(f"(first listed in {data / 'annotations' / 'train.json'} entry 10)")


def _check_data_cli(cfg_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lavis_listwise", "check-data", "--cfg-path", str(cfg_path), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_check_data_reports_every_problem_of_every_split(tmp_path, data):
    for damage in (
        _missing_caption,
        _shared_image_id,
        _eval_image_twice,
        _eval_caption_string,
        _missing_image,
    ):
        damage(data)
    _truncated_jpeg(data / "images" / "val" / "val_000003.jpg")
    (data / "images" / "test" / "test_000006.jpg").write_bytes(b"<html>not an image</html>")
    cfg_path = write_run_yaml(tmp_path / "r.yaml", data, tmp_path / "o", tmp_path / "c")
    out = _check_data_cli(cfg_path, "--workers", "2")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "opening images" in out.stderr  # the progress bar
    ann = data / "annotations"
    expected = [
        f"{ann / 'train.json'}: entry 3: has no 'caption'",
        f"{ann / 'train.json'}: entry 12: image_id 'train_000000' names image",
        f"{ann / 'val.json'}: entry 8: image 'images/val/val_000001.jpg' is listed twice",
        f"{ann / 'test.json'}: entry 4: 'caption' must be a list",
        f"{data / 'images' / 'train' / 'train_000005.jpg'}: does not exist",
        f"{data / 'images' / 'val' / 'val_000003.jpg'}: cannot be decoded (OSError: image file is truncated",
        f"{data / 'images' / 'test' / 'test_000006.jpg'}: cannot be decoded (UnidentifiedImageError",
    ]
    lines = out.stdout.splitlines()
    assert f"{len(expected)} problem(s):" in lines, out.stdout
    for needle in expected:
        assert any(line.strip().startswith(needle) for line in lines), (needle, out.stdout)
    assert "images: 32 distinct files opened fully" in out.stdout and "(2 workers), 3 unusable" in out.stdout
    assert not (tmp_path / "o").exists()  # nothing written


def test_check_data_passes_a_clean_dataset(tmp_path, tiny_dataset):
    cfg_path = write_run_yaml(tmp_path / "r.yaml", tiny_dataset, tmp_path / "o", tmp_path / "c")
    out = _check_data_cli(cfg_path)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "no problems found" in out.stdout
    assert "retrieval_listwise_json train: 80 entries" in out.stdout
    assert "images: 32 distinct files opened fully" in out.stdout


def test_check_data_refuses_a_misspelled_key_first(tmp_path, tiny_dataset):
    cfg_path = write_run_yaml(tmp_path / "r.yaml", tiny_dataset, tmp_path / "o", tmp_path / "c")
    out = _check_data_cli(cfg_path, "--options", "run.max_epochs=2")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "lavis-listwise: error: run.max_epochs (given in --options): unknown key" in out.stderr
