"""ECCV Caption / CxC metrics: COCO id recovery from real files, and metrics on the package's own GT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lavis_listwise.evaluation import ECCV_CAPTION_METRIC_KEYS, coco_ids_from_annotation, eccv_caption_metrics

# --------------------------------------------------------------------------------------------------------
# coco_ids_from_annotation
# --------------------------------------------------------------------------------------------------------

COCO_CAPTIONS = {
    391895: [
        (100, "A man with a red helmet on a small moped on a dirt road. "),
        (101, "Man riding a motor bike on a dirt road on the countryside."),
        (102, "A man riding on the back of a motorcycle."),
        (103, "A man rides a motorcycle."),
        (104, "a man rides a motorcycle"),  # same normalised text as 103
        (105, "A man in a red shirt."),
    ],
    522418: [
        (200, "A dog."),
        (201, "a dog"),  # same normalised text as 200
        (202, "A woman wearing a net on her head cutting a cake."),
        (203, "A woman cutting a large white sheet cake.\n"),
        (204, "A  woman marking a cake with the back of a chef's knife."),
        (205, "A woman wearing a hair net cutting a large sheet cake."),
        (206, "there is a woman that is cutting a white cake"),
    ],
    184613: [
        (300, "A child holding a flowered umbrella and petting a yak."),
        (301, "A young man holding an umbrella next to a herd of cattle."),
        (302, "a young boy barefoot holding an umbrella touching the horn of a cow"),
        (303, "A young boy with an umbrella who is touching the horn of a cow."),
        (304, "A boy holding an umbrella while standing next to livestock."),
    ],
    999: [(400, "An image that is not in the annotation.")],
}

ANNOTATION = [
    {
        # LAVIS numbers images by position; a running "image_id" must not override the file name.
        "image": "val2014/COCO_val2014_000000522418.jpg",
        "image_id": 0,
        "caption": [
            "A DOG",
            "A Dog",  # both only match normalised: 200 then 201, no reuse
            "a woman cutting a large white sheet cake",
            "A woman marking a cake with the back of a chef's knife.",
            "there is a woman that is cutting a white cake.",
        ],
    },
    {
        "image": "val2014/COCO_val2014_000000391895.jpg",
        "caption": [
            "a man rides a motorcycle",  # exact text of 104, though 103 normalises the same and comes first
            "A   man with a red helmet on a small moped on a dirt road",
            "Man riding a motor bike on a dirt road on the countryside.",
            "A man rides a motorcycle.",
            "a man riding on the back of a motorcycle",
        ],
    },
    {
        "image": "val2014/COCO_val2014_000000184613.jpg",
        "image_id": "184613",
        "caption": [
            "A child holding a flowered umbrella and petting a yak.",
            "A young man holding an umbrella next to a herd of cattle.",
            "a young boy barefoot holding an umbrella touching the horn of a cow",
            "A young boy with an umbrella who is touching the horn of a cow.",
            "A boy holding an umbrella while standing next to livestock.",
        ],
    },
]


@pytest.fixture()
def captions_json(tmp_path: Path) -> Path:
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in COCO_CAPTIONS]
    per_image = [
        [{"image_id": i, "id": cid, "caption": text} for cid, text in caps]
        for i, caps in COCO_CAPTIONS.items()
    ]
    # Round-robin over images: images interleave in the file (as in COCO), each image's captions stay in
    # order (which decides how identical texts are assigned).
    anns = [a for k in range(7) for caps in per_image for a in caps[k : k + 1]]
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": anns}))
    return path


def test_coco_ids_from_annotation(captions_json):
    image_ids, caption_ids = coco_ids_from_annotation(ANNOTATION, captions_json)
    assert image_ids == [522418, 391895, 184613]
    assert caption_ids == [200, 201, 203, 204, 206, 104, 100, 101, 103, 102, 300, 301, 302, 303, 304]
    assert all(type(i) is int for i in image_ids + caption_ids)
    # str path works too, and an empty annotation maps to nothing
    assert coco_ids_from_annotation(ANNOTATION[:1], str(captions_json))[0] == [522418]
    assert coco_ids_from_annotation([], captions_json) == ([], [])


def test_missing_or_wrong_captions_file(tmp_path, captions_json):
    missing = tmp_path / "nope" / "captions_val2014.json"
    with pytest.raises(FileNotFoundError, match="run.coco_captions_json") as e:
        coco_ids_from_annotation(ANNOTATION, missing)
    assert str(missing) in str(e.value)

    karpathy = tmp_path / "coco_karpathy_test.json"
    karpathy.write_text(json.dumps(ANNOTATION))  # a LAVIS annotation is not a COCO captions file
    with pytest.raises(ValueError, match="run.coco_captions_json") as e:
        coco_ids_from_annotation(ANNOTATION, karpathy)
    assert str(karpathy) in str(e.value) and "not a COCO captions file" in str(e.value)

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="run.coco_captions_json"):
        coco_ids_from_annotation(ANNOTATION, broken)


def test_unknown_image(captions_json):
    ann = ANNOTATION + [{"image": "val2014/COCO_val2014_000000123456.jpg", "caption": ["x"] * 5}]
    with pytest.raises(ValueError, match="run.coco_captions_json") as e:
        coco_ids_from_annotation(ann, captions_json)
    msg = str(e.value)
    assert "123456" in msg and "COCO_val2014_000000123456.jpg" in msg and str(captions_json) in msg


def test_unmatched_caption(captions_json):
    ann = [dict(ANNOTATION[2], caption=ANNOTATION[2]["caption"][:4] + ["A cow eating an umbrella."])]
    with pytest.raises(ValueError, match="run.coco_captions_json") as e:
        coco_ids_from_annotation(ann, captions_json)
    msg = str(e.value)
    assert "COCO_val2014_000000184613.jpg" in msg and "A cow eating an umbrella." in msg

    # A third "a dog" finds both COCO "a dog" captions already used.
    ann = [dict(ANNOTATION[0], caption=["a dog", "a dog", "a dog"])]
    with pytest.raises(ValueError, match="run.coco_captions_json") as e:
        coco_ids_from_annotation(ann, captions_json)
    assert "caption 2 " in str(e.value) and "COCO_val2014_000000522418.jpg" in str(e.value)


# --------------------------------------------------------------------------------------------------------
# eccv_caption_metrics on the package's bundled ground truth
# --------------------------------------------------------------------------------------------------------


def _load_gt(data: Path, name: str) -> dict[str, dict[int, list[int]]]:
    out = {}
    for key, file in (("i2t", "image_to_caption"), ("t2i", "caption_to_image")):
        with open(data / f"{name}_{file}.json") as f:
            out[key] = {int(k): [int(x) for x in v] for k, v in json.load(f).items()}
    return out


@pytest.fixture(scope="module")
def split():
    """The 5,000 Karpathy test images / 25,000 captions and the ECCV + CxC GT, read from the package data."""
    import eccv_caption

    data = Path(eccv_caption.__file__).parent / "data"
    caption_ids = np.load(data / "coco_test_ids.npy").astype(np.int64)
    original = _load_gt(data, "original")
    image_ids = np.array(sorted(original["i2t"]), dtype=np.int64)
    # A fixed shuffle so that ids are not in any order the code could rely on.
    rng = np.random.default_rng(0)
    image_ids, caption_ids = rng.permutation(image_ids), rng.permutation(caption_ids)
    assert image_ids.shape == (5000,) and caption_ids.shape == (25000,)
    assert set(caption_ids.tolist()) == set(original["t2i"])
    return {
        "image_ids": image_ids,
        "caption_ids": caption_ids,
        "image_pos": {int(i): k for k, i in enumerate(image_ids)},
        "caption_pos": {int(c): k for k, c in enumerate(caption_ids)},
        "eccv": _load_gt(data, "eccv"),
        "cxc": _load_gt(data, "cxc"),
    }


def _positive_scores(split, gts, weight: dict[str, float], base: list[np.ndarray] | None = None):
    """``[5000, 25000]`` and ``[25000, 5000]`` float32 scores with ``weight[direction]`` added to each GT
    positive (to ``base`` in place if given, else to zeros)."""
    n_i, n_t = len(split["image_ids"]), len(split["caption_ids"])
    s_i2t = np.zeros((n_i, n_t), np.float32) if base is None else base[0]
    s_t2i = np.zeros((n_t, n_i), np.float32) if base is None else base[1]
    for direction, s, q_pos, c_pos in (
        ("i2t", s_i2t, split["image_pos"], split["caption_pos"]),
        ("t2i", s_t2i, split["caption_pos"], split["image_pos"]),
    ):
        rows, cols = [], []
        for gt in gts:
            for q, positives in gt[direction].items():
                for p in positives:
                    if p in c_pos:  # two ECCV i2t positives are not among the 25,000 test captions
                        rows.append(q_pos[q])
                        cols.append(c_pos[p])
        rows, cols = np.array(rows), np.array(cols)
        keep = np.unique(rows * s.shape[1] + cols)  # a positive of both GTs is boosted once
        s[keep // s.shape[1], keep % s.shape[1]] += weight[direction]
    return s_i2t, s_t2i


def test_perfect_ranking(split):
    s_i2t, s_t2i = _positive_scores(split, [split["eccv"]], {"i2t": 1.0, "t2i": 1.0})
    out = eccv_caption_metrics(s_i2t, s_t2i, split["image_ids"], split["caption_ids"], top_n=5)
    assert list(out) == list(ECCV_CAPTION_METRIC_KEYS)
    assert all(type(v) is float for v in out.values())
    for key in ("txt_eccv_r1", "img_eccv_r1", "img_eccv_map_at_r", "img_eccv_rprecision"):
        assert out[key] == pytest.approx(100.0), key
    # Image->text cannot reach 100: the package's ECCV GT lists two captions outside the Karpathy test
    # split (one each for two images), so those images top out at (R-1)/R for both mAP@R and R-Precision.
    eccv_i2t, test_captions = split["eccv"]["i2t"], set(split["caption_pos"])
    bound = [1.0 - sum(p not in test_captions for p in v) / len(v) for v in eccv_i2t.values()]
    assert sum(b < 1 for b in bound) == 2
    for key in ("txt_eccv_map_at_r", "txt_eccv_rprecision"):
        assert out[key] == pytest.approx(100.0 * np.mean(bound)), key
        assert out[key] < 100.0
    # top_n=5 was raised to the largest ECCV positive count (48 for image->text); otherwise mAP@R of the
    # image with 48 positives would have read past the retrieved list.
    assert max(len(v) for v in eccv_i2t.values()) == 48


def _reference_retrieved(scores: np.ndarray, queries: np.ndarray, candidates: np.ndarray, top: int = 100):
    """Independent ranking: full numpy argsort of every row (in row blocks to bound memory)."""
    out = {}
    for start in range(0, scores.shape[0], 1000):
        order = np.argsort(-scores[start : start + 1000], axis=1, kind="stable")[:, :top]
        for q, row in zip(queries[start : start + 1000].tolist(), candidates[order].tolist()):
            out[q] = row
    return out


def test_noisy_ranking_matches_package(split):
    from eccv_caption import Metrics

    rng = np.random.default_rng(1)
    n_i, n_t = len(split["image_ids"]), len(split["caption_ids"])
    # Noise with all scores of a row distinct: row r scores candidate c as ((a_r * c + b_r) mod p) / p for a
    # prime p above the candidate count, a permutation of a grid. The ECCV and CxC positives get a boost of
    # (m + 0.5) / p, half a grid step off the grid, so a boosted score never equals a noise score: positives
    # rank high but not always first, and there are no ties for torch.topk and numpy argsort to break
    # differently.
    noise, boost = [], {}
    for direction, n_rows, n_cols, prime, m in (
        ("i2t", n_i, n_t, 25013, 2500),
        ("t2i", n_t, n_i, 5003, 1500),
    ):
        boost[direction] = (m + 0.5) / prime
        a = rng.integers(1, prime, size=(n_rows, 1), dtype=np.int32)
        b = rng.integers(0, prime, size=(n_rows, 1), dtype=np.int32)
        k = a * np.arange(n_cols, dtype=np.int32)  # < 2**31: no overflow
        k += b
        np.remainder(k, prime, out=k)
        x = k.astype(np.float32)
        del k  # in place from here on: two float32 matrices are ~1 GB already
        x /= np.float32(prime)
        noise.append(x)
    s_i2t, s_t2i = _positive_scores(split, [split["eccv"], split["cxc"]], boost, base=noise)
    for s in (s_i2t, s_t2i):  # spot-check: no ties within a row
        assert all(np.unique(row).size == row.size for row in s[:20])

    # torch input (shares memory with the numpy arrays)
    out = eccv_caption_metrics(
        torch.from_numpy(s_i2t), torch.from_numpy(s_t2i), split["image_ids"].tolist(), split["caption_ids"]
    )
    for key, value in out.items():
        assert 0.0 < value < 100.0, (key, value)

    i2t = _reference_retrieved(s_i2t, split["image_ids"], split["caption_ids"])
    t2i = _reference_retrieved(s_t2i, split["caption_ids"], split["image_ids"])
    ref = Metrics().compute_all_metrics(
        i2t,
        t2i,
        target_metrics=("cxc_recalls", "eccv_r1", "eccv_map_at_r", "eccv_rprecision"),
        Ks=(1, 5, 10),
    )
    for direction, prefix in (("i2t", "txt"), ("t2i", "img")):
        for name in ("eccv_map_at_r", "eccv_rprecision", "eccv_r1", "cxc_r1", "cxc_r5", "cxc_r10"):
            assert out[f"{prefix}_{name}"] == pytest.approx(100.0 * ref[name][direction], abs=1e-9), name


def test_missing_ids_raise(split):
    # A 10-image subset of the test split (say, a debug run) is refused with counts.
    image_ids = split["image_ids"][:10]
    caption_ids = split["caption_ids"][:50]
    with pytest.raises(ValueError, match="5,000-image COCO Karpathy test split") as e:
        eccv_caption_metrics(np.zeros((10, 50)), np.zeros((50, 10)), image_ids, caption_ids)
    assert "4990 of its 5000 images" in str(e.value) and "24950 of its 25000 captions" in str(e.value)

    # One caption short: expanded zero tensors have full shapes but no memory; the check runs before
    # any ranking.
    image_ids, caption_ids = split["image_ids"], split["caption_ids"]
    queried = split["cxc"]["t2i"].keys() | split["eccv"]["t2i"].keys()
    drop = next(k for k, c in enumerate(caption_ids.tolist()) if c in queried)
    kept = np.delete(caption_ids, drop)
    zeros = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="ECCV Caption / CxC") as e:
        eccv_caption_metrics(zeros.expand(5000, 24999), zeros.expand(24999, 5000), image_ids, kept)
    assert "0 of its 5000 images" in str(e.value) and "1 of its 25000 captions" in str(e.value)


def test_bad_inputs_raise(split):
    z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="score_t2i"):
        eccv_caption_metrics(z, z, [1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="caption_ids has 3 ids"):
        eccv_caption_metrics(z, z.T, [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="duplicate"):
        eccv_caption_metrics(z, z.T, [1, 1, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="top_n"):
        eccv_caption_metrics(z, z.T, [1, 2, 3], [1, 2, 3, 4], top_n=0)


def test_nan_scores_raise(split):
    s_i2t = np.zeros((5000, 25000), np.float32)
    s_i2t[7, 3] = np.nan  # would silently rank first under topk
    with pytest.raises(ValueError, match="NaN"):
        eccv_caption_metrics(s_i2t, s_i2t.T, split["image_ids"], split["caption_ids"])


def test_karpathy_test_split_is_recognised_by_its_image_ids():
    from lavis_listwise.evaluation import coco_image_ids, coco_karpathy_test_image_ids
    from lavis_listwise.evaluation import is_coco_karpathy_test as _is_coco_karpathy_test

    test_ids = sorted(coco_karpathy_test_image_ids())
    assert len(test_ids) == 5000

    class Split:
        annotation = [{"image": f"val2014/COCO_val2014_{i:012d}.jpg", "caption": []} for i in test_ids]
        image = [a["image"] for a in annotation]

    assert coco_image_ids(Split.annotation) == test_ids and _is_coco_karpathy_test(Split)
    Split.annotation = Split.annotation[:-1] + [{"image": "val2014/COCO_val2014_000000000001.jpg"}]
    assert not _is_coco_karpathy_test(Split)  # e.g. the Karpathy val split: same size, other images
