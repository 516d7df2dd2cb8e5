import math

import numpy as np
import pytest
import torch

from listwise_ranking.relevance import (
    CaptionEmbeddingCache,
    SentenceEncoder,
    caption_cache_key,
    default_encoder_path,
    rsc_relevance,
    shape_cosines,
)


def test_rsc_hand_computed():
    # 2 images x 2 captions in 2-D; candidates are unit vectors at known angles
    img = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [-1.0, 0.0]]])
    cand = torch.tensor([[1.0, 0.0], [math.cos(math.pi / 3), math.sin(math.pi / 3)], [0.0, -2.0]])
    positive = torch.tensor([[True, False, False], [False, False, False]])
    rel = rsc_relevance(img, cand, positive)
    expected = torch.tensor(
        [
            [1.0, (1 + math.cos(math.pi / 6)) / 2, (1 + 0.0) / 2],
            [(1 - 1.0) / 2, (1 - 0.5) / 2, (1 + 0.0) / 2],
        ]
    )
    torch.testing.assert_close(rel, expected)


def test_rsc_padded_captions_never_win_and_empty_image_errors():
    img = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    cand = torch.tensor([[0.0, 1.0]])
    positive = torch.zeros(1, 1, dtype=torch.bool)
    assert rsc_relevance(img, cand, positive).item() == pytest.approx(1.0)
    masked = rsc_relevance(img, cand, positive, caption_mask=torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no ground-truth caption"):
        rsc_relevance(img, cand, positive, caption_mask=torch.tensor([[False, False]]))
    with pytest.raises(ValueError, match="positive_mask"):
        rsc_relevance(img, cand, torch.zeros(2, 1, dtype=torch.bool))


def test_rsc_chunking_matches_dense(monkeypatch):
    import listwise_ranking.relevance.rsc as rsc

    torch.manual_seed(0)
    img, cand = torch.randn(9, 5, 16), torch.randn(40, 16)
    positive = torch.rand(9, 40) > 0.8
    mask = torch.rand(9, 5) > 0.3
    mask[:, 0] = True
    dense = rsc_relevance(img, cand, positive, mask)
    monkeypatch.setattr(rsc, "_CHUNK_ELEMENTS", 100)  # forces one image per chunk
    torch.testing.assert_close(rsc_relevance(img, cand, positive, mask), dense)
    cos = torch.nn.functional.cosine_similarity(img[:, :, None], cand[None, None], dim=-1)
    expected = (1 + cos.masked_fill(~mask[:, :, None], -2).amax(dim=1)) / 2
    expected[positive] = 1
    torch.testing.assert_close(dense, expected)


def test_minilm_encoder_is_offline_and_sensible(minilm):
    assert minilm.model_dir == default_encoder_path().resolve()
    assert minilm.max_length == 256
    emb = minilm.encode(
        ["a dog runs on the grass", "a puppy running across a lawn", "a red bus"], progress=False
    )
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    sim = emb @ emb.t()
    assert sim[0, 1] > sim[0, 2] + 0.3
    # order of inputs does not change any embedding (batches are length-sorted internally)
    again = minilm.encode(["a red bus", "a dog runs on the grass"], progress=False)
    torch.testing.assert_close(again, emb[[2, 0]], atol=1e-5, rtol=0)


def test_missing_encoder_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="listwise.relevance.encoder"):
        SentenceEncoder(tmp_path / "nowhere")


def test_cache_hit_miss_and_corruption(tmp_path, minilm, caplog):
    captions = ["a cat on a mat", "two dogs play", "a bowl of fruit"]
    cache = CaptionEmbeddingCache(tmp_path, minilm)
    first = cache.get(captions, progress=False)
    path = cache.path_for(captions)
    assert path.is_file() and first.shape == (3, 384)
    torch.testing.assert_close(first, minilm.encode(captions, progress=False), atol=1e-3, rtol=0)

    # hit: identical values without encoding again
    mtime = path.stat().st_mtime_ns
    torch.testing.assert_close(cache.get(captions), first, atol=0, rtol=0)
    assert path.stat().st_mtime_ns == mtime

    # miss: a changed caption list gets its own key and file
    changed = captions[:2] + ["a bowl of apples"]
    assert caption_cache_key(minilm.identity, changed) != caption_cache_key(minilm.identity, captions)
    assert cache.path_for(changed) != path
    assert not torch.allclose(cache.get(changed, progress=False)[2], first[2])

    # truncated and corrupted files are reported and rebuilt
    data = path.read_bytes()
    for broken in (data[: len(data) - 7], data[:-10] + b"x" * 10, b"garbage"):
        path.write_bytes(broken)
        with caplog.at_level("WARNING"):
            rebuilt = cache.get(captions, progress=False)
        assert "rebuilding" in caplog.text
        caplog.clear()
        torch.testing.assert_close(rebuilt, first, atol=0, rtol=0)
        assert path.read_bytes() == data

    # a file for other captions sitting at this key's path is never reused
    path.write_bytes(cache.path_for(changed).read_bytes())
    with caplog.at_level("WARNING"):
        torch.testing.assert_close(cache.get(captions, progress=False), first, atol=0, rtol=0)
    assert "stored key differs" in caplog.text

    with pytest.raises(ValueError, match="empty"):
        cache.get([])


# ----------------------------------------------------------------------------- shaping
def _unit(angles_deg):
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles_deg])


def test_shaping_floor_and_sharpen_hand_computed():
    img = _unit([0.0]).view(1, 1, 2)
    cand = _unit([0.0, 60.0, 90.0, 180.0])  # cos 1, 0.5, 0, -1
    positive = torch.tensor([[False, False, False, True]])  # a positive stays 1 whatever its cosine
    cos = torch.tensor([1.0, 0.5, 0.0, -1.0])
    paper = rsc_relevance(img, cand, positive)
    torch.testing.assert_close(paper[0, :3], (1 + cos[:3]) / 2)
    assert paper[0, 3] == 1.0
    floored = rsc_relevance(img, cand, positive, floor=0.2)
    torch.testing.assert_close(floored[0], torch.tensor([1.0, 0.3 / 0.8, 0.0, 1.0]))
    sharp = rsc_relevance(img, cand, positive, sharpen=3.0)
    torch.testing.assert_close(sharp[0, :3], ((1 + cos[:3]) / 2) ** 3)
    both = rsc_relevance(img, cand, positive, floor=0.2, sharpen=2.0)
    torch.testing.assert_close(both[0], torch.tensor([1.0, (0.3 / 0.8) ** 2, 0.0, 1.0]))
    # floor -1 is the paper's mapping; the defaults are the paper's bit for bit
    torch.testing.assert_close(rsc_relevance(img, cand, positive, floor=-1.0), paper, rtol=0, atol=1e-7)
    torch.testing.assert_close(shape_cosines(cos.clone()), (1 + cos) / 2, rtol=0, atol=0)
    for bad in ({"floor": 1.0}, {"floor": -1.5}, {"sharpen": 0.0}, {"sharpen": float("inf")}):
        with pytest.raises(ValueError, match="floor|sharpen"):
            rsc_relevance(img, cand, positive, **bad)


def test_relevance_config_shaping_keys(tmp_path):
    RelevanceConfig = pytest.importorskip("lavis_listwise.config", reason="the LAVIS plugin").RelevanceConfig

    default = RelevanceConfig.from_cfg({})
    assert default.shaping == {"floor": None, "sharpen": 1.0} and default.describe() == "RSC (1 + cos) / 2"
    shaped = RelevanceConfig.from_cfg({"floor": 0.4, "sharpen": 2})
    assert shaped.shaping == {"floor": 0.4, "sharpen": 2.0}
    assert shaped.describe() == "RSC floor 0.4, sharpen 2"
    emb = tmp_path / "emb.npy"
    np.save(emb, np.zeros((3, 4), dtype=np.float32))
    rel = tmp_path / "rel.npz"
    np.savez(rel, image=np.array([0]), caption=np.array([0]), relevance=np.array([1.0]))
    assert RelevanceConfig.from_cfg({"embeddings": str(emb)}).embeddings == emb.resolve()
    assert (
        RelevanceConfig.from_cfg({"relevance_file": str(rel)}).describe() == f"relevance file {rel.resolve()}"
    )
    key = "model.listwise.relevance"
    for cfg, match in (
        ({"floor": 1.0}, rf"{key}.floor must be a cosine in \[-1, 1\)"),
        ({"floor": "low"}, rf"{key}.floor must be a cosine in \[-1, 1\), auto or null, got 'low'"),
        ({"sharpen": -1}, rf"{key}.sharpen must be > 0"),
        ({"embeddings": str(tmp_path / "none.npy")}, rf"{key}.embeddings: file .* does not exist"),
        ({"embeddings": str(rel)}, rf"{key}.embeddings: .* must be a .npy file"),
        (
            {"relevance_file": str(emb.with_suffix(".txt"))},
            rf"{key}.relevance_file: .* must be a .npy or .npz",
        ),
        ({"embeddings": str(emb), "relevance_file": str(rel)}, "embeddings or relevance_file, not both"),
        ({"relevance_file": str(rel), "floor": 0.5}, "do not apply to relevance_file"),
        ({"flor": 0.5}, rf"{key}: unknown key\(s\) \['flor'\]"),
    ):
        with pytest.raises(ValueError, match=match):
            RelevanceConfig.from_cfg(cfg)


def test_precomputed_embeddings_and_relevance_file_feed_the_model(tmp_path):
    """``relevance.embeddings`` replaces the encoded table; ``relevance.relevance_file`` replaces RSC
    (dense or sparse), same-image pairs staying 1; a file that does not fit the training split is an
    error naming the key."""
    pytest.importorskip("lavis_listwise", reason="the LAVIS plugin")
    from lavis.common.registry import registry
    from test_models import batch, tiny_cfg

    from lavis_listwise.config import ListwiseConfig
    from listwise_ranking.errors import DataError
    from listwise_ranking.relevance import rsc_relevance_from_table

    arch = "blip_retrieval_listwise"
    model = registry.get_model_class(arch).from_config(tiny_cfg(arch, weight=1.0)).train()
    samples = batch()  # 4 images, 2 captions each, caption rows of a 20-caption table
    ids, caps, image_caps = samples["image_id"], samples["caption_index"], samples["image_caption_index"]
    assert model.load_precomputed_relevance(20, 4) is False  # nothing precomputed: RSC from the encoder

    g = torch.Generator().manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=-1)
    np.save(tmp_path / "emb.npy", table.numpy())
    model.listwise_cfg = ListwiseConfig.from_cfg(
        {"weight": 1.0, "relevance": {"embeddings": str(tmp_path / "emb.npy"), "floor": 0.1}}
    )
    with pytest.raises(
        DataError, match=r"model.listwise.relevance.embeddings: .* has 20 rows, but the training"
    ):
        model.load_precomputed_relevance(21, 4)
    assert model.load_precomputed_relevance(20, 4) is True
    positive = ids[:, None] == ids[None, :]
    expected = rsc_relevance_from_table(
        table.half().float(), image_caps, caps, positive, floor=0.1
    )  # the model keeps its table in fp16
    torch.testing.assert_close(model.batch_relevance(caps, image_caps, ids), expected)

    relevance = torch.rand(4, 20, generator=g)
    np.save(tmp_path / "rel.npy", relevance.numpy())
    image, caption = np.nonzero(relevance.numpy() > 0.5)
    np.savez(tmp_path / "rel.npz", image=image, caption=caption, relevance=relevance.numpy()[image, caption])
    for name, lookup in (("rel.npy", relevance), ("rel.npz", relevance * (relevance > 0.5))):
        model.listwise_cfg = ListwiseConfig.from_cfg(
            {"weight": 1.0, "relevance": {"relevance_file": str(tmp_path / name)}}
        )
        with pytest.raises(DataError, match=r"model.listwise.relevance.relevance_file: .*"):
            model.load_precomputed_relevance(20, 3)  # dense: the shape; sparse: image indices out of range
        assert model.load_precomputed_relevance(20, 4) is True
        got = model.batch_relevance(caps, image_caps, ids)
        torch.testing.assert_close(got, lookup[ids][:, caps].masked_fill(positive, 1.0))
        out = model(samples)  # the listwise term trains on it
        assert torch.isfinite(out.loss_listwise) and out.loss_listwise > 0
