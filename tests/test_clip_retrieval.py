"""``clip_retrieval_listwise`` against LAVIS's own CLIP, on the tiny offline config: construction,
the image-id-aware contrastive loss, LAVIS's initialisation and state dicts as ``model.pretrained``,
ITC-only evaluation and a YAML-only run (``weight: 0`` against LAVIS's CLIP forward and strict
state-dict loads: test_arch_contracts.py)."""

import json
import math
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_run_yaml
from lavis.common.registry import registry
from lavis.models.clip_models.loss import ClipLoss
from lavis.models.clip_models.model import CLIP, QuickGELU, add_model_config
from lavis.processors.blip_processors import BlipCaptionProcessor
from lavis.processors.clip_processors import ClipImageEvalProcessor
from omegaconf import OmegaConf
from retrieval_batch import caption_table as table
from retrieval_batch import retrieval_batch, tiny_model, tiny_model_cfg
from torch.utils.data import DataLoader

import lavis_listwise  # noqa: F401
from lavis_listwise.datasets.retrieval_listwise import ListwiseRetrievalEvalDataset
from lavis_listwise.demo.synthetic import relevance_file
from lavis_listwise.evaluation import RerankView, compute_sim_matrix_itc, reranks_with_itm
from lavis_listwise.models.clip_retrieval_listwise import (
    ClipRetrievalListwise,
    clip_architecture,
    clip_tokenize,
    image_id_contrastive_loss,
)
from listwise_ranking.errors import CheckpointError, ConfigError
from listwise_ranking.losses import bidirectional_smooth_ndcg_loss

ARCH = "clip_retrieval_listwise"


def tiny_cfg(**listwise):
    return tiny_model_cfg(ClipRetrievalListwise, **listwise)


def tiny(seed=0, **listwise):
    return tiny_model(ClipRetrievalListwise, seed, **listwise)


def features(model, samples, tokenizer=None):
    """The model's normalised image and caption features ``[B, E]``, through LAVIS's CLIP API
    (``tokenizer``: default the model's; LAVIS's own CLIP always pads to 77 tokens)."""
    text = (tokenizer or model.tokenizer)(samples["text_input"])
    return (
        F.normalize(model.encode_image(samples["image"]), dim=-1),
        F.normalize(model.encode_text(text), dim=-1),
    )


def test_tiny_builds_offline_through_load_model(no_network):
    from lavis.models import load_model, model_zoo

    model = load_model(ARCH, "tiny", is_eval=True, device="cpu")
    assert type(model) is ClipRetrievalListwise and registry.get_model_class(ARCH) is ClipRetrievalListwise
    assert isinstance(model, CLIP) and not reranks_with_itm(model)
    assert dict(model_zoo)[ARCH] == ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "RN50", "tiny"]
    assert model.context_length == 32 and model.visual.image_size == 32
    ids = model.tokenizer(["a red circle", "x " * 40])
    assert ids.shape == (2, 32) and ids[0, 0] == 49406 and ids[1, -1] == 49407  # start; end kept on cut
    torch.testing.assert_close(ids[0], clip_tokenize("a red circle", 32)[0])
    with torch.no_grad():
        image_feat, text_feat = features(model, retrieval_batch(2, 1))
    assert image_feat.shape == text_feat.shape == (2, 32)


def test_itc_is_the_hand_written_image_id_aware_cross_entropy():
    model = tiny(weight=0.0).train()
    samples = retrieval_batch(n_images=3, per_image=2)  # ids 0 0 1 1 2 2
    out = model(samples)
    assert set(out) >= {"loss", "loss_itc", "loss_listwise"} and "loss_itm" not in out
    assert torch.equal(out.loss, out.loss_itc)  # no ITM head: the ITC is the whole stock loss
    image_feat, text_feat = features(model, samples)
    logits = model.logit_scale.exp() * image_feat @ text_feat.t()
    ids = samples["image_id"].tolist()
    rows = []
    for lg in (logits, logits.t()):  # image -> captions, caption -> images
        for a in range(len(ids)):
            positives = [b for b in range(len(ids)) if ids[b] == ids[a]]
            rows.append(torch.logsumexp(lg[a], 0) - lg[a, positives].mean())
    expected = torch.stack(rows).mean()  # = (L_i2t + L_t2i) / 2, every row weighted alike
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)


def test_image_id_aware_targets_make_captions_of_one_image_positives():
    model = tiny(weight=0.0).train()
    distinct = retrieval_batch(n_images=4, per_image=1)
    shared = dict(distinct, image_id=torch.tensor([0, 0, 1, 2]))  # samples 0 and 1: one image, two captions
    with torch.no_grad():
        image_feat, text_feat = features(model, distinct)
        lavis = ClipLoss(rank=0, world_size=1)(image_feat, text_feat, model.logit_scale.exp())
        ours_shared = model(shared).loss_itc
    # distinct ids give LAVIS's ClipLoss (arange labels): test_arch_contracts.py, against LAVIS's forward
    assert not torch.allclose(ours_shared, lavis)
    # the shared image's two captions both count as its positives: raising the score of caption 1
    # for image 0 lowers the loss (with batch-position labels it would raise it)
    logits = torch.zeros(4, 4, requires_grad=True)
    image_id_contrastive_loss(logits, shared["image_id"]).backward()
    assert logits.grad[0, 1] < 0 and logits.grad[1, 0] < 0 and logits.grad[0, 2] > 0
    position = torch.zeros(4, 4, requires_grad=True)
    image_id_contrastive_loss(position, torch.arange(4)).backward()
    assert position.grad[0, 1] > 0


def test_logit_scale_is_kept_at_most_max_logit_scale_and_still_learns():
    model = tiny(weight=0.0).train()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(200.0))
    out = model(retrieval_batch(2, 2))
    torch.testing.assert_close(out.logit_scale_exp, torch.tensor(100.0))  # clamped before use
    out.loss.backward()
    assert model.logit_scale.grad != 0  # not a clamp of the loss's input: the gradient flows


def test_listwise_term_is_s_ndcg_of_the_same_cosine_similarity():
    model = tiny(weight=0.5).train()
    model.set_caption_embeddings(table())
    samples = retrieval_batch(n_images=4, per_image=2)
    out = model(samples)
    image_feat, text_feat = features(model, samples)
    relevance = model.batch_relevance(
        samples["caption_index"], samples["image_caption_index"], samples["image_id"]
    )
    expected = bidirectional_smooth_ndcg_loss(image_feat @ text_feat.t(), relevance, model.listwise_loss.tau)
    torch.testing.assert_close(out.loss_listwise, expected)
    torch.testing.assert_close(out.loss, out.loss_itc + 0.5 * out.loss_listwise)
    stock_itc = tiny(weight=0.0).train()(samples).loss_itc  # same seed, same weights
    torch.testing.assert_close(out.loss_itc, stock_itc)
    out.loss.backward()
    assert model.logit_scale.grad is not None and model.visual.proj.grad.abs().sum() > 0


def test_lavis_clip_initialisation_and_state_dict_as_model_pretrained(tmp_path):
    arch = clip_architecture(tiny_cfg().model_config)
    torch.manual_seed(0)
    stock = CLIP(**arch)  # LAVIS's own class
    torch.testing.assert_close(tiny(seed=0).state_dict(), stock.state_dict())  # same initialisation
    for p in stock.parameters():
        p.data.add_(1.0)
    # model.pretrained: a LAVIS CLIP state dict on disk, with an inline architecture
    path = tmp_path / "stock.pt"
    torch.save(stock.state_dict(), path)
    cfg = tiny_cfg()
    cfg.pretrained = str(path)
    torch.testing.assert_close(ClipRetrievalListwise.from_config(cfg).state_dict(), stock.state_dict())


def test_named_architecture_loads_through_lavis_create_model(tmp_path):
    """A name in LAVIS's CLIP config registry goes through LAVIS's ``create_model``; the loaded model's
    activation (QuickGELU here, as OpenAI's weights) is kept."""
    arch = dict(clip_architecture(tiny_cfg().model_config), quick_gelu=True)
    (tmp_path / "lavis-listwise-test-tiny.json").write_text(json.dumps(arch))
    add_model_config(tmp_path / "lavis-listwise-test-tiny.json")
    torch.manual_seed(0)
    stock = CLIP(**arch)
    torch.save({"state_dict": stock.state_dict()}, tmp_path / "w.pt")
    cfg = tiny_cfg()
    cfg.model_config, cfg.pretrained = "lavis-listwise-test-tiny", str(tmp_path / "w.pt")
    model = ClipRetrievalListwise.from_config(cfg).eval()
    assert isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    samples = retrieval_batch(2, 1)
    with torch.no_grad():
        for a, b in zip(features(model, samples), features(stock.eval(), samples, model.tokenizer)):
            torch.testing.assert_close(a, b)
    cfg.pretrained, cfg.model_config = "openai", {"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}
    with pytest.raises(ConfigError, match="model.pretrained: 'openai' is not a file"):
        ClipRetrievalListwise.from_config(cfg)
    cfg.model_config = "ViT-Z-99"
    with pytest.raises(ConfigError, match="model.model_config: 'ViT-Z-99' is neither"):
        ClipRetrievalListwise.from_config(cfg)


def test_openai_weights_offline_are_one_clear_error(monkeypatch):
    from lavis_listwise.models.clip_retrieval_listwise import clip_weights_cache
    from listwise_ranking.errors import CheckpointError

    if (clip_weights_cache() / "ViT-B-32.pt").is_file():
        pytest.skip("OpenAI's ViT-B-32 weights are in the cache: nothing would be downloaded")

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    cfg = OmegaConf.load(ClipRetrievalListwise.default_config_path("ViT-B-32")).model
    with pytest.raises(CheckpointError, match="model.pretrained: cannot download the 'openai'") as err:
        ClipRetrievalListwise.from_config(cfg)
    assert str(clip_weights_cache() / "ViT-B-32.pt") in str(err.value)


def test_itc_only_scores_equal_lavis_clip_compute_sim_matrix(tiny_dataset):
    model = tiny(seed=2).eval()
    dataset = ListwiseRetrievalEvalDataset(
        ClipImageEvalProcessor(image_size=32),
        BlipCaptionProcessor(),
        str(tiny_dataset),
        [str(tiny_dataset / "annotations" / "test.json")],
    )
    loader = DataLoader(dataset, batch_size=3)
    with torch.no_grad():
        theirs = model.compute_sim_matrix(loader)  # LAVIS's CLIP.compute_sim_matrix
    fold = RerankView(torch.tensor([1, 3]), torch.tensor([0, 4, 9]))
    (i2t, t2i), (fold_i2t, _) = compute_sim_matrix_itc(model, loader, views=[RerankView(
        torch.arange(len(dataset.image)), torch.arange(len(dataset.text))), fold])  # fmt: skip
    for ours, lavis in ((i2t, theirs[0]), (t2i, theirs[1])):
        assert ours.dtype == np.float32 and ours.shape == lavis.shape
        np.testing.assert_allclose(ours, lavis, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fold_i2t, i2t[[1, 3]][:, [0, 4, 9]])  # a view is a slice: no re-ranking


def test_a_finetuned_checkpoint_must_fit_the_model_exactly(tmp_path):
    trained = tiny(seed=1)
    state = trained.state_dict()
    torch.save({"model": state}, tmp_path / "full.pth")
    cfg = tiny_cfg()
    cfg.load_finetuned, cfg.finetuned = True, str(tmp_path / "full.pth")
    torch.testing.assert_close(ClipRetrievalListwise.from_config(cfg).state_dict(), state)
    # LAVIS's load_checkpoint would load these with strict=False and log the missing keys only
    partial = {k: v for k, v in state.items() if not k.startswith("visual.")}
    torch.save({"model": partial}, tmp_path / "partial.pth")
    cfg.finetuned = str(tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"model\.finetuned: .*partial\.pth.*missing keys: visual\."):
        ClipRetrievalListwise.from_config(cfg)
    torch.save({"model": {**state, "text_head.weight": torch.zeros(1)}}, tmp_path / "extra.pth")
    cfg.finetuned = str(tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: none; unexpected keys: text_head\.weight"):
        ClipRetrievalListwise.from_config(cfg)


def test_train_validate_test_from_yaml(tmp_path, tiny_dataset):
    cfg = write_run_yaml(tmp_path / "run.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache", arch=ARCH)
    gt = [f"run.gt_relevance.{s}={relevance_file(tiny_dataset, s)}" for s in ("val", "test")]
    cmd = [sys.executable, "-m", "lavis_listwise", "train", "--cfg-path", str(cfg), "--job-id", "job"]
    out = subprocess.run([*cmd, "--options", *gt], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    run_dir = tmp_path / "out" / "job"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = next(row for row in lines if row["split"] == "train")
    assert {"loss", "loss_itc", "loss_listwise"} <= set(train) and "loss_itm" not in train
    assert float(train["loss_listwise"]) > 0
    assert float(train["loss"]) == pytest.approx(
        float(train["loss_itc"]) + float(train["loss_listwise"]), abs=2e-3
    )
    test = next(row for row in lines if row["split"] == "test")
    for key in ("txt_r1", "img_r10", "r_mean", "txt_ndcg5", "img_ndcg20", "gt_txt_ndcg10", "gt_img_ndcg5"):
        assert key in test, key
    assert test["agg_metrics"] == test["r_mean"]
    checkpoint = torch.load(run_dir / "checkpoint_latest.pth", weights_only=False)
    ClipRetrievalListwise.from_config(tiny_cfg()).load_state_dict(checkpoint["model"])  # strict
    assert json.loads((run_dir / "test_results.json").read_text())["test"]["r_mean"] == test["r_mean"]
