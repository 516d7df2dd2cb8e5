"""``model.text_pooling``: ITC's text feature is the [CLS] output (BLIP's, default) or the caption's mean."""

from __future__ import annotations

import pytest
import torch
from lavis.common.registry import registry
from lavis.models.med import XBertEncoder
from omegaconf import OmegaConf
from retrieval_batch import retrieval_batch

import lavis_listwise  # noqa: F401
from lavis_listwise.models.encoders import MeanPooledTextEncoder
from listwise_ranking.errors import ConfigError

ARCHS = ["blip_retrieval_listwise", "albef_retrieval_listwise"]


def tiny(arch: str, pooling: str | None):
    cfg = OmegaConf.load(registry.get_model_class(arch).default_config_path("tiny")).model
    if pooling is not None:
        cfg.text_pooling = pooling
    cfg.listwise.weight = 0.0
    torch.manual_seed(0)
    return registry.get_model_class(arch).from_config(cfg)


@pytest.mark.parametrize("arch", ARCHS)
def test_mean_pooling_puts_the_masked_mean_at_position_zero(arch):
    model = tiny(arch, "mean").eval()
    assert type(model.text_encoder) is MeanPooledTextEncoder
    assert type(model.text_encoder_m) is MeanPooledTextEncoder  # LAVIS deep-copies the online encoder
    captions = ["a red circle", "a small blue square on the left and a green star"]
    tokens = model.tokenizer(captions, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        pooled = model.text_encoder.forward_text(tokens).last_hidden_state
        plain = XBertEncoder.forward_text(model.text_encoder, tokens).last_hidden_state
    for row, n in enumerate(tokens.attention_mask.sum(1).tolist()):
        torch.testing.assert_close(pooled[row, 0], plain[row, :n].mean(0))  # padding is not averaged
    torch.testing.assert_close(pooled[:, 1:], plain[:, 1:])
    assert not torch.allclose(pooled[:, 0], plain[:, 0])


@pytest.mark.parametrize("arch", ARCHS)
def test_pooling_changes_only_itc_and_keeps_the_state_dict(arch):
    cls_model, mean_model = tiny(arch, None), tiny(arch, "mean")
    assert type(cls_model.text_encoder) is XBertEncoder
    ours, theirs = cls_model.state_dict(), mean_model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    samples = retrieval_batch()
    torch.manual_seed(0)
    out_cls = cls_model.train()(samples)
    torch.manual_seed(0)
    out_mean = mean_model.train()(samples)
    assert out_cls.loss_itc != out_mean.loss_itc
    if arch == "blip_retrieval_listwise":
        # BLIP's ITM re-encodes the caption with [ENC] through forward(): the same hard negatives are
        # drawn only if ITC's similarities agree, so compare ITM on the positive pairs alone
        pos_cls = out_cls.intermediate_output.itm_logits[: len(samples["image_id"])]
        pos_mean = out_mean.intermediate_output.itm_logits[: len(samples["image_id"])]
        torch.testing.assert_close(pos_cls, pos_mean)


def test_bad_pooling_names_the_key():
    with pytest.raises(ConfigError, match=r"model\.text_pooling must be one of \['cls', 'mean'\], got 'max'"):
        tiny("blip_retrieval_listwise", "max")


def test_the_strict_config_check_knows_the_key():
    from lavis_listwise.config_check import check_config
    from lavis_listwise.resources import config_path

    demo = OmegaConf.load(config_path("projects/demo/demo.yaml"))
    check_config(demo, ["model.text_pooling=cls"])
    with pytest.raises(ConfigError, match=r"model\.text_poolng.*text_pooling"):
        check_config(demo, ["model.text_poolng=mean"])
