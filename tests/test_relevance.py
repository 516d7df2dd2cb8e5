import math

import pytest
import torch

from lavis_listwise.relevance import (
    CaptionEmbeddingCache,
    SentenceEncoder,
    caption_cache_key,
    default_encoder_path,
    rsc_relevance,
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
    import lavis_listwise.relevance.rsc as rsc

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
