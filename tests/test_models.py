"""The listwise models against LAVIS's own retrieval classes, on tiny offline configs (``weight: 0``
parity and state-dict compatibility, for every arch: test_arch_contracts.py)."""

import pytest
import torch
from lavis.common.registry import registry
from lavis.models.albef_models.albef_retrieval import AlbefRetrieval
from lavis.models.blip_models.blip_retrieval import BlipRetrieval
from omegaconf import OmegaConf
from retrieval_batch import retrieval_batch
from stock_twins import stock_twin

import lavis_listwise  # noqa: F401
from lavis_listwise.config import ListwiseConfig
from lavis_listwise.models.tokenizer import build_bert_tokenizer
from listwise_ranking.losses import bidirectional_smooth_ndcg_loss

ARCHS = {"blip_retrieval_listwise": BlipRetrieval, "albef_retrieval_listwise": AlbefRetrieval}


def tiny_cfg(arch, **listwise):
    cfg = OmegaConf.load(registry.get_model_class(arch).default_config_path("tiny")).model
    cfg.listwise.update(listwise)
    return cfg


def batch(n_images=4, per_image=2, seed=0):
    return retrieval_batch(n_images, per_image, seed)


def table(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 384, generator=g), dim=-1)


def _run(model, samples, seed=0):
    torch.manual_seed(seed)  # ITM negatives are sampled with torch.multinomial
    return model(samples)


@pytest.mark.parametrize("arch", ARCHS)
def test_listwise_term_adds_to_the_stock_losses(arch):
    torch.manual_seed(0)
    model = registry.get_model_class(arch).from_config(tiny_cfg(arch, weight=0.5)).train()
    stock = stock_twin(model).train()
    model.set_caption_embeddings(table())
    samples = batch()
    ours, theirs = _run(model, samples), _run(stock, samples)
    assert torch.equal(ours.loss_itc, theirs.loss_itc) and torch.equal(ours.loss_itm, theirs.loss_itm)
    # the term is bidirectional S-NDCG of the grad-carrying ITC features against the table's RSC
    inter = ours.intermediate_output
    image_feat = torch.nn.functional.normalize(model.vision_proj(inter.image_embeds[:, 0]), dim=-1)
    text_feat = torch.nn.functional.normalize(model.text_proj(inter.text_embeds[:, 0]), dim=-1)
    relevance = model.batch_relevance(
        samples["caption_index"], samples["image_caption_index"], samples["image_id"]
    )
    expected = bidirectional_smooth_ndcg_loss(image_feat @ text_feat.t(), relevance, model.listwise_loss.tau)
    torch.testing.assert_close(ours.loss_listwise, expected)
    torch.testing.assert_close(ours.loss, theirs.loss + 0.5 * ours.loss_listwise)
    ours.loss.backward()
    theirs.loss.backward()
    # the listwise term reaches the projection the stock loss also trains
    assert not torch.allclose(model.vision_proj.weight.grad, stock.vision_proj.weight.grad)


def test_convex_combination_and_reference_compat():
    arch = "blip_retrieval_listwise"
    torch.manual_seed(0)
    convex = registry.get_model_class(arch).from_config(tiny_cfg(arch, weight=0.25, combine="convex"))
    convex.set_caption_embeddings(table())
    out = _run(convex.train(), batch())
    torch.testing.assert_close(out.loss, 0.75 * (out.loss_itc + out.loss_itm) + 0.25 * out.loss_listwise)
    convex.listwise_cfg = ListwiseConfig.from_cfg(
        {"weight": 0.25, "combine": "convex", "reference_compat": True}
    )
    assert _run(convex, batch()).loss_listwise != out.loss_listwise


def test_missing_rsc_fields_and_table_are_clear_errors():
    arch = "blip_retrieval_listwise"
    model = registry.get_model_class(arch).from_config(tiny_cfg(arch, weight=1.0)).train()
    samples = batch()
    with pytest.raises(RuntimeError, match="caption embeddings are not set"):
        model(samples)
    model.set_caption_embeddings(table())
    del samples["caption_index"]
    with pytest.raises(KeyError, match="coco_retrieval_listwise"):
        model(samples)


@pytest.mark.parametrize(
    "listwise,match",
    [
        ({"loss": "nope"}, "model.listwise.loss: unknown loss 'nope'"),
        ({"loss": "triplet"}, "model.listwise.loss: 'triplet' is not a listwise loss"),
        ({"weight": -0.1}, "model.listwise.weight must be >= 0"),
        ({"weight": 2, "combine": "convex"}, "model.listwise.weight must be <= 1"),
        ({"tau": 0}, "model.listwise.tau must be > 0"),
        ({"tau": "abc"}, "model.listwise.tau must be a number"),
        ({"combine": "mul"}, "model.listwise.combine"),
        ({"kernel": "cuda"}, "model.listwise.kernel must be one of"),
        ({"relevance_topk": True}, "model.listwise.relevance_topk must be a positive integer"),
        ({"ideal_dcg": "best"}, "model.listwise.ideal_dcg must be one of"),
        ({"weigth": 1}, "model.listwise: unknown key"),
        ({"relevance": {"encoder": "/nonexistent/encoder"}}, "model.listwise.relevance.encoder"),
    ],
)
def test_bad_listwise_config_names_the_key(listwise, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        ListwiseConfig.from_cfg(listwise)


def test_bad_model_config_names_the_key(tmp_path):
    cfg = tiny_cfg("blip_retrieval_listwise")
    cfg.vit_type = "huge"
    with pytest.raises(ValueError, match="model.vit_type"):
        registry.get_model_class("blip_retrieval_listwise").from_config(cfg)
    cfg = tiny_cfg("blip_retrieval_listwise")
    cfg.tokenizer = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="model.tokenizer"):
        registry.get_model_class("blip_retrieval_listwise").from_config(cfg)


def test_bundled_tokenizer_matches_bert_base_uncased_vocabulary():
    tok = build_bert_tokenizer(None, blip_special_tokens=True)
    assert len(tok) == 30524 and tok.enc_token_id == 30523 and tok.bos_token_id == 30522
    assert tok("A Dog, running!").input_ids == [101, 1037, 3899, 1010, 2770, 999, 102]


@pytest.mark.parametrize("arch", ARCHS)
def test_yaml_listwise_settings_reach_the_models_loss(arch, tmp_path):
    """Every non-default ``model.listwise`` value of a run YAML, merged by LAVIS's own
    ``Config.build_model_config`` over the tiny model's defaults, reaches the loss the model trains with."""
    from lavis.common.config import Config

    from listwise_ranking.losses import SmoothNDCGLoss

    yaml = tmp_path / "run.yaml"
    yaml.write_text(
        f"model:\n  arch: {arch}\n  model_type: tiny\n  listwise:\n"
        "    tau: 0.05\n    kernel: torch\n    weight: 0.3\n    combine: convex\n"
        "    relevance_topk: 3\n    ideal_dcg: sorted\n"
    )
    model_cfg = Config.build_model_config(OmegaConf.load(yaml)).model
    torch.manual_seed(0)
    model = registry.get_model_class(model_cfg.arch).from_config(model_cfg).train()
    loss = model.listwise_loss
    assert type(loss) is SmoothNDCGLoss
    assert (loss.tau, loss.kernel, loss.relevance_topk, loss.ideal_dcg) == (0.05, "torch", 3, "sorted")
    assert (model.listwise_cfg.weight, model.listwise_cfg.combine) == (0.3, "convex")
    model.set_caption_embeddings(table())
    out = _run(model, batch())
    torch.testing.assert_close(out.loss, 0.7 * (out.loss_itc + out.loss_itm) + 0.3 * out.loss_listwise)
    # the term is S-NDCG with exactly these settings: a different tau gives a different value
    model.listwise_loss = SmoothNDCGLoss(tau=0.01, kernel="torch", relevance_topk=3, ideal_dcg="sorted")
    assert _run(model, batch()).loss_listwise != out.loss_listwise
