import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavis_listwise.demo.synthetic import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPE_WORDS,
    SIZE_WORDS,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    relevance_file,
)

SMALL = dict(n_train=4, n_val=3, n_test=2, image_size=32, seed=3)


def _load(root: Path, split: str) -> list:
    return json.loads((root / "annotations" / f"{split}.json").read_text())


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_same_seed_same_bytes_and_pixels_other_seed_differs(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", **SMALL)
    b = generate_synthetic_dataset(tmp_path / "b", **SMALL)
    c = generate_synthetic_dataset(tmp_path / "c", **{**SMALL, "seed": 4})
    for name in ("annotations/train.json", "annotations/val.json", "annotations/test.json", "scenes.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    images = sorted(p.relative_to(a) for p in a.glob("images/*/*.jpg"))
    assert len(images) == 9
    for rel in images:
        np.testing.assert_array_equal(_pixels(a / rel), _pixels(b / rel))
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert any(not np.array_equal(_pixels(a / rel), _pixels(c / rel)) for rel in images)


@pytest.mark.parametrize("image_size", [32, 64, 384])
def test_layout_matches_lavis_coco_retrieval(tmp_path, image_size):
    root = generate_synthetic_dataset(tmp_path / "ds", n_train=3, n_val=2, n_test=2, image_size=image_size)
    assert root.is_absolute()
    train = _load(root, "train")
    assert len(train) == 15
    assert all(set(e) == {"image", "caption", "image_id"} for e in train)
    assert all(isinstance(e["caption"], str) and isinstance(e["image_id"], str) for e in train)
    by_image: dict[str, set] = {}
    for e in train:
        by_image.setdefault(e["image_id"], set()).add(e["image"])
    assert len(by_image) == 3 and all(len(v) == 1 for v in by_image.values())
    for image_id in by_image:
        assert len({e["caption"] for e in train if e["image_id"] == image_id}) == 5
    referenced = [e["image"] for e in train]
    for split in ("val", "test"):
        entries = _load(root, split)
        assert len(entries) == 2
        assert all(set(e) == {"image", "caption"} and len(set(e["caption"])) == 5 for e in entries)
        referenced += [e["image"] for e in entries]
    for rel in referenced:
        assert not Path(rel).is_absolute() and rel.startswith("images/")
        with Image.open(root / rel) as im:
            assert im.format == "JPEG" and im.size == (image_size, image_size)
    scenes = json.loads((root / "scenes.json").read_text())
    assert [s["image"] for s in scenes["val"]] == [e["image"] for e in _load(root, "val")]
    marker = json.loads((root / "COMPLETE.json").read_text())
    assert marker["params"]["image_size"] == image_size and "generator_version" in marker["params"]
    # images, 3 annotation files, scenes.json, 3 relevance files
    assert marker["file_count"] == len(marker["files"]) == 7 + 4 + 3
    assert sorted(marker["files"]) == sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "COMPLETE.json"
    )


def _words(text: str, phrases) -> set:
    return {p for p in phrases if re.search(rf"\b{re.escape(p)}\b", text)}


def test_captions_and_pixels_agree_with_scene(tmp_path):
    root = generate_synthetic_dataset(tmp_path / "ds", n_train=1, n_val=1, n_test=40, image_size=64, seed=1)
    scenes = json.loads((root / "scenes.json").read_text())["test"]
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    for scene, entry in zip(scenes, _load(root, "test")):
        objects = scene["objects"]
        colours, shapes = {o["colour"] for o in objects}, {o["shape"] for o in objects}
        other_shape_words = {w for s, ws in SHAPE_WORDS.items() if s not in shapes for w in ws}
        for caption in entry["caption"]:
            text = caption.lower()
            assert _words(text, COLOURS) <= colours, caption
            assert _words(text, BACKGROUNDS) <= {scene["background"]["colour"]}, caption
            assert not _words(text, other_shape_words), caption
            if all(o["size"] == "small" for o in objects):
                assert not _words(text, {"large", "big"}), caption
            if all(o["size"] == "large" for o in objects):
                assert not _words(text, {"small", "little", "tiny"}), caption
            assert not _words(text, {"two", "three"} - {{2: "two", 3: "three"}.get(len(objects))}), caption
        # the stored statements are what the caption says, and they hold in the scene
        for caption, stated in zip(entry["caption"], scene["captions"]):
            text = caption.lower()
            assert stated["caption"] == caption
            for mention in stated["objects"]:
                assert mention["colour"] in text and any(w in text for w in SHAPE_WORDS[mention["shape"]])
                if "size" in mention:
                    assert _words(text, SIZE_WORDS[mention["size"]]), caption
                if "position" in mention:
                    assert any(p in text for p in POSITIONS[mention["position"]][1]), caption
                assert any(all(o[k] == v for k, v in mention.items()) for o in objects), caption
            said_colours = _words(text, COLOURS)
            assert said_colours == {m["colour"] for m in stated["objects"]}, caption
            if stated["background"] is None:
                assert not _words(text, BACKGROUNDS), caption
            else:
                assert stated["background"]["colour"] in text
                assert all(scene["background"][k] == v for k, v in stated["background"].items())
            if stated["count"] is not None:
                assert stated["count"] == len(objects)
                assert _words(text, {"one", "two", "three"}) == {
                    {1: "one", 2: "two", 3: "three"}[len(objects)]
                }
        image = _pixels(root / scene["image"]).astype(np.float32)
        for o in objects:  # the centre of every shape is filled with (roughly) its named colour
            centre = image[int(o["y"] * 64), int(o["x"] * 64)]
            assert list(COLOURS)[np.linalg.norm(palette - centre, axis=1).argmin()] == o["colour"]


@pytest.mark.parametrize(
    "bad, name",
    [
        ({"n_train": 0}, "n_train"),
        ({"n_val": -1}, "n_val"),
        ({"n_test": 1.5}, "n_test"),
        ({"image_size": 15}, "image_size"),
        ({"seed": "0"}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, bad, name):
    for fn in (generate_synthetic_dataset, ensure_synthetic_dataset):
        with pytest.raises(ValueError, match=name):
            fn(tmp_path / "ds", **{**SMALL, **bad})
    assert not (tmp_path / "ds").exists()


def test_loads_through_lavis_coco_retrieval_builder(tmp_path):
    import lavis.datasets.builders  # noqa: F401  (registers the builders)
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    root = generate_synthetic_dataset(tmp_path / "ds", n_train=3, n_val=2, n_test=2, image_size=32)
    paths = {split: str(root / "annotations" / f"{split}.json") for split in ("train", "val", "test")}
    ann = {split: {"url": path, "storage": path} for split, path in paths.items()}  # url == storage: no copy
    cfg = OmegaConf.create(
        {
            "data_type": "images",
            "build_info": {"annotations": ann, "images": {"storage": str(root)}},
            "vis_processor": {
                "train": {"name": "blip_image_train", "image_size": 32},
                "eval": {"name": "blip_image_eval", "image_size": 32},
            },
            "text_processor": {"train": {"name": "blip_caption"}, "eval": {"name": "blip_caption"}},
        }
    )
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    datasets = registry.get_builder_class("coco_retrieval")(cfg).build_datasets()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before  # nothing copied

    train = datasets["train"]
    assert len(train) == 15
    sample = train[7]
    assert isinstance(sample["image"], torch.Tensor) and sample["image"].shape == (3, 32, 32)
    assert isinstance(sample["text_input"], str) and sample["text_input"]
    assert isinstance(sample["image_id"], int) and sample["image_id"] == 1
    assert train.collater([train[0], train[5]])["image"].shape == (2, 3, 32, 32)

    for split in ("val", "test"):
        ev = datasets[split]
        assert len(ev) == 2 and len(ev.text) == 10 and len(ev.txt2img) == 10
        assert ev.img2txt == {0: [0, 1, 2, 3, 4], 1: [5, 6, 7, 8, 9]}
        assert ev[1]["image"].shape == (3, 32, 32) and ev[1]["index"] == 1


def test_ensure_reuses_repairs_and_replaces_atomically(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lavis_listwise.demo.synthetic")
    root = tmp_path / "ds"
    assert ensure_synthetic_dataset(root, **SMALL) == root.resolve()
    reference = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    stamps = {p: p.stat().st_mtime_ns for p in reference}
    assert _leftovers(tmp_path) == []

    caplog.clear()
    ensure_synthetic_dataset(root, **SMALL)
    assert {p: p.stat().st_mtime_ns for p in reference} == stamps
    assert "Reusing" in caplog.text

    image = root / "images/train/train_000002.jpg"
    for damage in (lambda: image.unlink(), lambda: image.write_bytes(b""), lambda: image.write_bytes(b"x")):
        damage()
        caplog.clear()
        ensure_synthetic_dataset(root, **SMALL)
        assert "Generating" in caplog.text and "train_000002.jpg" in caplog.text
        assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == reference
        assert _leftovers(tmp_path) == []

    (root / "COMPLETE.json").unlink()  # without its marker a dataset is never trusted
    ensure_synthetic_dataset(root, **SMALL)
    assert (root / "COMPLETE.json").is_file()

    ensure_synthetic_dataset(root, **{**SMALL, "n_val": 5})
    assert len(_load(root, "val")) == 5
    assert json.loads((root / "COMPLETE.json").read_text())["params"]["n_val"] == 5
    assert _leftovers(tmp_path) == []

    (root / "notes.txt").write_text("mine")
    (root / "COMPLETE.json").unlink()
    with pytest.raises(FileExistsError, match="notes.txt"):
        ensure_synthetic_dataset(root, **SMALL)
    assert (root / "notes.txt").read_text() == "mine" and _leftovers(tmp_path) == []
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(root, **SMALL)


def _attributes(scene: dict) -> set:
    objects = scene["objects"]
    return {(k, o[k]) for o in objects for k in ("colour", "shape", "size", "position")} | {
        ("background", scene["background"]["colour"])
    }


def _ranks(values) -> np.ndarray:
    """Ranks with ties averaged, for a Spearman correlation."""
    values = np.asarray(values, dtype=np.float64)
    ranks = values.argsort().argsort().astype(np.float64)
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    return ranks


def test_relevance_is_graded_by_shared_attributes(tmp_path, minilm):
    root = generate_synthetic_dataset(tmp_path / "ds", n_train=1, n_val=1, n_test=60, image_size=16, seed=0)
    scenes = json.loads((root / "scenes.json").read_text())["test"]
    captions = [e["caption"] for e in _load(root, "test")]
    attrs = [_attributes(s) for s in scenes]
    triples = []  # (anchor, most similar other image, an image sharing nothing with the anchor)
    for a in range(len(scenes)):
        others = [b for b in range(len(scenes)) if b != a]
        unrelated = [b for b in others if not attrs[a] & attrs[b]]
        if unrelated:
            close = max(others, key=lambda b: len(attrs[a] & attrs[b]))
            triples.append((a, close, unrelated[0]))
        if len(triples) == 4:
            break
    assert len(triples) == 4
    used = sorted({i for t in triples for i in t})
    emb = minilm.encode([c for i in used for c in captions[i]], progress=False).view(len(used), 5, -1)
    emb = dict(zip(used, emb))

    def similarity(i: int, j: int) -> float:
        return (emb[i] @ emb[j].T).mean().item()

    close_sim = [similarity(a, b) for a, b, _ in triples]
    far_sim = [similarity(a, c) for a, _, c in triples]
    assert np.mean(close_sim) > np.mean(far_sim) + 0.05, (close_sim, far_sim)

    # graded, not just binary: over all pairs, more shared attributes -> closer captions (Spearman)
    pairs = [(i, j) for k, i in enumerate(used) for j in used[k + 1 :]]
    shared = [len(attrs[i] & attrs[j]) for i, j in pairs]
    rho = np.corrcoef(_ranks(shared), _ranks([similarity(i, j) for i, j in pairs]))[0, 1]
    assert rho > 0.4, rho


def test_captions_and_images_are_those_of_version_1(tmp_path):
    """Version 2 only adds statements and relevance files: the annotation files are byte for byte the
    ones version 1 wrote for these parameters (sha256 recorded from version 1)."""
    import hashlib

    root = generate_synthetic_dataset(tmp_path / "ds", **SMALL)
    digest = hashlib.sha256(
        b"".join((root / "annotations" / f"{s}.json").read_bytes() for s in ("train", "val", "test"))
    )
    assert digest.hexdigest() == "aff48056343bc2264641fb2f07a4c372e23ca2d37bbc31f49f2bf2fcb6ba7f69"


def test_relevance_files_hold_the_ground_truth_in_lavis_order(tmp_path):
    from lavis_listwise.demo.synthetic import caption_relevance

    root = generate_synthetic_dataset(tmp_path / "ds", **SMALL)
    scenes = json.loads((root / "scenes.json").read_text())
    for split, n in (("train", 4), ("val", 3), ("test", 2)):
        matrix = np.load(relevance_file(root, split))
        assert matrix.shape == (n, 5 * n) and matrix.dtype == np.float32
        statements = [c for scene in scenes[split] for c in scene["captions"]]
        if split == "train":  # columns are the annotation entries, in order
            assert [c["caption"] for c in statements] == [e["caption"] for e in _load(root, split)]
        else:  # columns are each image's caption list in turn (LAVIS's dataset.text order)
            assert [c["caption"] for c in statements] == [c for e in _load(root, split) for c in e["caption"]]
        expected = [[caption_relevance(sc, st) for st in statements] for sc in scenes[split]]
        np.testing.assert_allclose(matrix, expected, atol=1e-6, rtol=0)
        for i in range(n):
            assert (matrix[i, 5 * i : 5 * i + 5] == 1.0).all()
    with pytest.raises(ValueError, match="split must be one of"):
        relevance_file(root, "dev")
