"""``blip2_retrieval_listwise`` against LAVIS's own ``Blip2Qformer``, on the tiny offline config:
construction, image-id-aware ITC, same-image-free ITM negatives, LAVIS checkpoints as
``model.pretrained``, evaluation through LAVIS's ``compute_sim_matrix`` and a YAML-only run
(``weight: 0`` bit-equality with LAVIS's forward and strict state-dict loads: test_arch_contracts.py)."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_run_yaml
from lavis.common.config import Config
from lavis.common.registry import registry
from lavis.models.blip2_models.blip2_qformer import Blip2Qformer
from omegaconf import OmegaConf
from retrieval_batch import caption_table as table
from retrieval_batch import retrieval_batch, tiny_model, tiny_model_cfg
from stock_twins import blip2_stock_twin
from torch.utils.data import DataLoader

import lavis_listwise  # noqa: F401
from lavis_listwise.config_check import model_keys
from lavis_listwise.evaluation import (
    RerankView,
    compute_sim_matrix_qformer,
    reranks_with_itm,
    scores_with_lavis_sim_matrix,
)
from lavis_listwise.models.blip2_retrieval_listwise import (
    BLIP2_ITC_LABEL_SMOOTHING,
    Blip2RetrievalListwise,
    blip2_itc_targets,
)
from listwise_ranking.errors import ConfigError
from listwise_ranking.losses import bidirectional_smooth_ndcg_loss

ARCH = "blip2_retrieval_listwise"


pytestmark = pytest.mark.usefixtures("one_process_group")  # conftest.py


def tiny_cfg(**listwise):
    return tiny_model_cfg(Blip2RetrievalListwise, **listwise)


def tiny(seed=0, **listwise):
    return tiny_model(Blip2RetrievalListwise, seed, **listwise)


def run(model, samples, seed=0):
    torch.manual_seed(seed)  # dropout and the ITM negatives (torch.multinomial) draw from it
    return model(samples)


def test_tiny_builds_offline_through_load_model(no_network):
    from lavis.models import load_model, model_zoo

    model = load_model(ARCH, "tiny", is_eval=True, device="cpu")
    assert type(model) is Blip2RetrievalListwise and registry.get_model_class(ARCH) is Blip2RetrievalListwise
    assert isinstance(model, Blip2Qformer) and dict(model_zoo)[ARCH] == ["coco", "tiny"]
    # BLIP-2's tokenizer: bert-base-uncased + [DEC] as bos (no [ENC]); the Q-Former sized to it
    assert len(model.tokenizer) == 30523 and model.tokenizer.bos_token == "[DEC]"
    assert not hasattr(model.tokenizer, "enc_token_id")
    assert model.Qformer.bert.embeddings.word_embeddings.weight.shape == (30523, 64)
    assert model.query_tokens.shape == (1, 4, 64) and model.visual_encoder.num_features == 64
    assert model.Qformer.config.encoder_width == 64 and model.use_lm_loss
    # the fast ITM re-ranking cannot serve the Q-Former: the task calls LAVIS's compute_sim_matrix
    assert reranks_with_itm(model) and scores_with_lavis_sim_matrix(model)
    keys = model_keys(ARCH)
    assert keys.unresolved == ()
    assert {
        "vit_model",
        "qformer_config",
        "use_lm_loss",
        "num_query_token",
        "freeze_vit",
        "listwise",
    } <= keys.keys
    with pytest.raises(ConfigError, match="model.vit_model must be one of"):
        Blip2RetrievalListwise.from_config(OmegaConf.merge(tiny_cfg(), {"vit_model": "vit_h"}))
    with pytest.raises(ConfigError, match="model.qformer_config: unknown BERT config key"):
        Blip2RetrievalListwise.from_config(OmegaConf.merge(tiny_cfg(), {"qformer_config": {"hiden_size": 8}}))


def test_listwise_term_is_s_ndcg_of_the_max_over_queries_similarity():
    model = tiny(weight=0.5).train()
    stock = blip2_stock_twin(model).train()
    model.set_caption_embeddings(table())
    samples = retrieval_batch(n_images=4, per_image=1)
    out, theirs = run(model, samples), run(stock, samples)
    for key in ("loss_itc", "loss_itm", "loss_lm"):  # the stock terms are untouched
        assert torch.equal(out[key], theirs[key]), key
    inter = out.intermediate_output
    assert inter.image_feats.shape == (4, 4, 32) and inter.text_feat.shape == (4, 32)
    # Blip2Qformer.forward's similarity (before the temperature): max over the 4 query tokens
    sim = torch.stack([(inter.image_feats[a] @ inter.text_feat.t()).max(0).values for a in range(4)])
    relevance = model.batch_relevance(
        samples["caption_index"], samples["image_caption_index"], samples["image_id"]
    )
    expected = bidirectional_smooth_ndcg_loss(sim, relevance, model.listwise_loss.tau)
    torch.testing.assert_close(out.loss_listwise, expected)
    torch.testing.assert_close(out.loss, theirs.loss + 0.5 * out.loss_listwise)
    model.zero_grad()
    out.loss_listwise.backward()
    assert model.query_tokens.grad.abs().sum() > 0 and model.text_proj.weight.grad.abs().sum() > 0


def test_image_id_aware_itc_targets_make_captions_of_one_image_positives():
    model = tiny(weight=0.0).train()
    stock = blip2_stock_twin(model).train()
    samples = dict(retrieval_batch(n_images=4, per_image=1), image_id=torch.tensor([0, 0, 1, 2]))
    out, theirs = run(model, samples), run(stock, samples)
    inter = out.intermediate_output
    sim = torch.einsum("aqe,be->abq", inter.image_feats, inter.text_feat).max(-1).values / model.temp
    positive = samples["image_id"].view(-1, 1) == samples["image_id"].view(1, -1)
    targets = positive.float() / positive.float().sum(1, keepdim=True)
    eps, n = BLIP2_ITC_LABEL_SMOOTHING, len(positive)
    smoothed = (1 - eps) * targets + eps / n
    rows = [-(smoothed * F.log_softmax(s, dim=1)).sum(1).mean() for s in (sim, sim.t())]
    torch.testing.assert_close(out.loss_itc, (rows[0] + rows[1]) / 2)
    assert not torch.allclose(out.loss_itc, theirs.loss_itc)  # LAVIS: caption 1 is image 0's negative
    # caption 1 is a positive of image 0: raising their score lowers the loss (batch positions: raises)
    ours_t = blip2_itc_targets(samples["image_id"], samples["image_id"], 0)
    assert ours_t.dtype == torch.float32 and torch.equal(ours_t.sum(1), torch.ones(4))
    lavis_t = blip2_itc_targets(torch.arange(4), torch.arange(4), 0)
    assert lavis_t.dtype == torch.long and torch.equal(lavis_t, torch.arange(4))
    for t, sign in ((ours_t, -1), (lavis_t, 1)):
        logits = torch.zeros(4, 4, requires_grad=True)
        F.cross_entropy(logits, t, label_smoothing=eps).backward()
        assert torch.sign(logits.grad[0, 1]) == sign


def test_itm_hard_negatives_never_pick_the_same_image():
    model = tiny(weight=0.0).train()
    samples = retrieval_batch(n_images=3, per_image=2)  # ids 0 0 1 1 2 2
    ids = samples["image_id"]
    same_image = ids.view(-1, 1) == ids.view(1, -1)
    with torch.no_grad():
        for seed in range(8):
            inter = run(model, samples, seed).intermediate_output
            for drawn in (inter.itm_negative_images, inter.itm_negative_texts):
                assert drawn.shape == (6,) and not (ids[drawn] == ids).any(), (seed, drawn)
        # LAVIS's Blip2Qformer masks only the sample itself; its weights would give the image's other
        # caption this share of every draw, so 96 draws with that mask would pick it many times
        sim = torch.einsum("aqe,be->abq", inter.image_feats, inter.text_feat).max(-1).values / model.temp
        weights = F.softmax(sim, dim=1) + 1e-4
        weights.fill_diagonal_(0)
        share = (weights * (same_image & ~torch.eye(6, dtype=torch.bool))).sum(1) / weights.sum(1)
    assert (share > 0.05).all(), share
    torch.testing.assert_close(inter.itm_labels, torch.tensor([1] * 6 + [0] * 12))


def test_use_lm_loss_false_drops_only_the_lm_term():
    cfg = tiny_cfg(weight=0.0)
    cfg.use_lm_loss = False
    torch.manual_seed(0)
    model = Blip2RetrievalListwise.from_config(cfg).train()
    with_lm = blip2_stock_twin(model).train()
    samples = retrieval_batch(n_images=4, per_image=1)
    out, theirs = run(model, samples), run(with_lm, samples)
    assert "loss_lm" not in out and not model.use_lm_loss
    assert torch.equal(out.loss_itc, theirs.loss_itc) and torch.equal(out.loss_itm, theirs.loss_itm)
    assert torch.equal(out.loss, out.loss_itc + out.loss_itm)
    out.loss.backward()
    # every trainable parameter gets a gradient (DDP requires it); only the LM head's own are frozen
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen and all(n.startswith("Qformer.cls.predictions.") for n in frozen), frozen
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.Qformer.bert.embeddings.word_embeddings.weight.requires_grad  # tied to the LM decoder


def test_a_lavis_blip2_checkpoint_loads_as_model_pretrained(tmp_path):
    stock = blip2_stock_twin(tiny(seed=1))
    # model.pretrained: a LAVIS BLIP-2 checkpoint ({"model": state dict}) loaded by LAVIS's loader
    torch.save({"model": stock.state_dict()}, tmp_path / "blip2.pth")
    cfg = tiny_cfg()
    cfg.pretrained = str(tmp_path / "blip2.pth")
    torch.testing.assert_close(Blip2RetrievalListwise.from_config(cfg).state_dict(), stock.state_dict())


def _task_loader_model(tiny_dataset, tmp_path):
    """The retrieval_listwise task, a loader over the tiny test split and a tiny BLIP-2 in eval mode."""
    cfg = Config(
        argparse.Namespace(
            cfg_path=str(
                write_run_yaml(tmp_path / "r.yaml", tiny_dataset, tmp_path / "o", tmp_path / "c", arch=ARCH)
            ),
            options=["run.k_test=4", "run.valid_splits=[]"],
        )
    )
    task = registry.get_task_class("retrieval_listwise").setup_task(cfg=cfg)
    loader = DataLoader(task.build_datasets(cfg)["retrieval_listwise_json"]["test"], batch_size=3)
    torch.manual_seed(3)
    return task, loader, task.build_model(cfg).eval()


def test_task_scores_are_lavis_blip2_compute_sim_matrix(tiny_dataset, tmp_path, lavis_output_dir):
    task, loader, model = _task_loader_model(tiny_dataset, tmp_path)
    assert type(model) is Blip2RetrievalListwise
    seen = []
    task.add_score_listener(lambda dataset, i2t, t2i: seen.append((i2t, t2i)))
    with torch.no_grad():
        result = task.evaluation(model, loader)
        lavis = (
            blip2_stock_twin(model)
            .eval()
            .compute_sim_matrix(loader, task_cfg=OmegaConf.create({"k_test": 4}))
        )
    (i2t, t2i), = seen  # fmt: skip
    n_img, n_txt = len(loader.dataset.image), len(loader.dataset.text)
    assert i2t.shape == (n_img, n_txt) and t2i.shape == (n_txt, n_img)
    np.testing.assert_array_equal(i2t, lavis[0])
    np.testing.assert_array_equal(t2i, lavis[1])
    assert ((i2t > -100).sum(1) == 4).all()  # ITM re-scored the top k_test = 4 of every row
    for key in ("txt_r1", "img_r10", "r_mean", "txt_ndcg5", "img_ndcg10"):
        assert key in result, key


class _ViewDataset(torch.utils.data.Dataset):
    """A split restricted to some images and their captions, as LAVIS's evaluation datasets look."""

    def __init__(self, dataset, images, texts):
        self.base, self.images = dataset, images
        self.image = [dataset.image[i] for i in images]
        self.text = [dataset.text[t] for t in texts]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.base[self.images[index]]


def test_a_view_is_scored_as_lavis_compute_sim_matrix_on_its_images_and_captions(
    tiny_dataset, tmp_path, lavis_output_dir
):
    """COCO 1K folds: each view re-ranked within itself, as LAVIS's compute_sim_matrix on that subset."""
    _, loader, model = _task_loader_model(tiny_dataset, tmp_path)
    dataset = loader.dataset
    images = list(range(0, len(dataset.image), 2))  # every other image, with all its captions
    texts = [t for t in range(len(dataset.text)) if dataset.txt2img[t] in set(images)]
    whole = RerankView(torch.arange(len(dataset.image)), torch.arange(len(dataset.text)))
    view = RerankView(torch.tensor(images), torch.tensor(texts))
    with torch.no_grad():
        scores = compute_sim_matrix_qformer(model, loader, 3, [whole, view])
        subset = DataLoader(_ViewDataset(dataset, images, texts), batch_size=3)
        k3 = OmegaConf.create({"k_test": 3})
        lavis = blip2_stock_twin(model).eval().compute_sim_matrix(subset, task_cfg=k3)
    assert scores[0][0].shape == (len(dataset.image), len(dataset.text))
    for ours, stock in zip(scores[1], lavis):
        assert ours.shape == stock.shape and ((ours > -100) == (stock > -100)).all()  # the same top-3
        np.testing.assert_allclose(ours, stock, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="run.k_test = 99 is larger than the candidates"):
        compute_sim_matrix_qformer(model, loader, 99, [view])


def test_train_validate_test_from_yaml(tmp_path, tiny_dataset):
    cfg = write_run_yaml(tmp_path / "run.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache", arch=ARCH)
    cmd = [sys.executable, "-m", "lavis_listwise", "train", "--cfg-path", str(cfg), "--job-id", "job"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    run_dir = tmp_path / "out" / "job"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = next(row for row in lines if row["split"] == "train")
    assert {"loss", "loss_itc", "loss_itm", "loss_lm", "loss_listwise"} <= set(train)
    assert float(train["loss_listwise"]) > 0
    terms = sum(float(train[k]) for k in ("loss_itc", "loss_itm", "loss_lm", "loss_listwise"))
    assert float(train["loss"]) == pytest.approx(terms, abs=5e-3)
    assert any(row["split"] == "val" for row in lines)
    test = next(row for row in lines if row["split"] == "test")
    for key in ("txt_r1", "img_r10", "r_mean", "txt_ndcg5", "img_ndcg20"):
        assert key in test, key
    assert test["agg_metrics"] == test["r_mean"]
    checkpoint = torch.load(run_dir / "checkpoint_latest.pth", weights_only=False)
    Blip2RetrievalListwise.from_config(tiny_cfg()).load_state_dict(checkpoint["model"])  # strict
    assert json.loads((run_dir / "test_results.json").read_text())["test"]["r_mean"] == test["r_mean"]
