"""Self-distilled relevance (``model.listwise.relevance.momentum``): the formula, the config checks, and
the BLIP / ALBEF training step that uses it."""

import math

import pytest
import torch
import torch.nn.functional as F
from lavis.common.registry import registry
from retrieval_batch import retrieval_batch, tiny_model_cfg

import lavis_listwise  # noqa: F401
from lavis_listwise.config import ListwiseConfig
from lavis_listwise.errors import ConfigError
from lavis_listwise.losses import bidirectional_smooth_ndcg_loss
from lavis_listwise.models import ClipRetrievalListwise
from lavis_listwise.relevance import momentum_rampup, momentum_relevance


def test_momentum_relevance_is_the_pairs_softmax_relative_to_the_true_pairs():
    # two images, three captions: caption 0 and 1 belong to image 0, caption 2 to image 1
    cos = torch.tensor([[0.8, 0.6, 0.5], [0.1, 0.3, 0.9]])
    positive = torch.tensor([[True, True, False], [False, False, True]])
    out = momentum_relevance(cos, positive, 0.1)
    # p_image = (0.7, 0.9); p_caption = (0.8, 0.6, 0.9)
    assert out[0, 2].item() == pytest.approx(math.exp((0.5 - (0.7 + 0.9) / 2) / 0.1), rel=1e-5)
    assert out[1, 0].item() == pytest.approx(math.exp((0.1 - (0.9 + 0.8) / 2) / 0.1), rel=1e-5)
    assert out[1, 1].item() == pytest.approx(math.exp((0.3 - (0.9 + 0.6) / 2) / 0.1), rel=1e-5)
    assert torch.equal(out[positive], torch.ones(3))
    # a negative rated above its true pairs is capped at a positive's relevance
    above = momentum_relevance(torch.tensor([[0.2, 0.9], [0.9, 0.2]]), torch.eye(2, dtype=torch.bool), 0.1)
    assert torch.equal(above, torch.ones(2, 2))


def test_momentum_rampup_follows_blips_momentum_distillation():
    n = 10
    ramp = [
        momentum_rampup({"epoch": e, "iters": i, "num_iters_per_epoch": n})
        for e, i in ((0, 0), (0, 5), (1, 0), (2, 0), (3, 9))
    ]
    assert ramp == [0.0, 0.25, 0.5, 1.0, 1.0]


def test_momentum_relevance_refuses_a_list_without_a_positive():
    with pytest.raises(ValueError, match="positive pair"):
        momentum_relevance(torch.zeros(2, 2), torch.tensor([[True, False], [True, False]]), 0.1)
    with pytest.raises(ValueError, match="same"):
        momentum_relevance(torch.zeros(2, 3), torch.eye(2, dtype=torch.bool), 0.1)


@pytest.mark.parametrize(
    "relevance, match",
    [
        ({"momentum": "both"}, r"model\.listwise\.relevance\.momentum must be one of"),
        ({"momentum": "alone", "relevance_file": "{file}"}, "momentum or relevance_file"),
    ],
)
def test_bad_momentum_settings_name_the_key(relevance, match, tmp_path):
    file = tmp_path / "r.npy"
    file.write_bytes(b"")
    relevance = {k: str(v).format(file=file) for k, v in relevance.items()}
    with pytest.raises(ConfigError, match=match):
        ListwiseConfig.from_cfg({"relevance": relevance})


def test_momentum_needs_momentum_encoders():
    with pytest.raises(ConfigError, match=r"relevance\.momentum needs momentum encoders"):
        ClipRetrievalListwise.from_config(
            tiny_model_cfg(ClipRetrievalListwise, relevance={"momentum": "alone"})
        )


@pytest.mark.parametrize("arch", ["blip_retrieval_listwise", "albef_retrieval_listwise"])
@pytest.mark.parametrize("mode", ["alone", "fused"])
def test_training_step_ranks_by_the_momentum_relevance(arch, mode):
    cls = registry.get_model_class(arch)
    torch.manual_seed(0)
    model = cls.from_config(tiny_model_cfg(cls, weight=1.0, relevance={"momentum": mode}))
    g = torch.Generator().manual_seed(1)
    model.set_caption_embeddings(F.normalize(torch.randn(20, 384, generator=g), dim=-1))
    samples = retrieval_batch(4, 2, 0)
    torch.manual_seed(0)
    out = model.train()(samples)
    inter = out.intermediate_output
    image_feat = F.normalize(model.vision_proj(inter.image_embeds[:, 0]), dim=-1)
    text_feat = F.normalize(model.text_proj(inter.text_embeds[:, 0]), dim=-1)
    image_m = F.normalize(model.vision_proj_m(inter.image_embeds_m[:, 0]), dim=-1)
    text_m = F.normalize(model.text_proj_m(inter.text_embeds_m[:, 0]), dim=-1)
    ids = samples["image_id"]
    positive = ids.view(-1, 1) == ids.view(1, -1)
    momentum = momentum_relevance(image_m @ text_m.t(), positive, model.temp.detach())
    rsc = model.batch_relevance(samples["caption_index"], samples["image_caption_index"], ids)
    ramp = (0 * 10 + 1) / (2 * 10)  # epoch 0, step 1 of 10: the momentum relevance is ramped in
    if mode == "fused":
        relevance = rsc * (1 - ramp + ramp * momentum)
    else:
        relevance = torch.where(positive, 1.0, ramp * momentum)
    assert not torch.equal(relevance, rsc)
    expected = bidirectional_smooth_ndcg_loss(image_feat @ text_feat.t(), relevance, model.listwise_loss.tau)
    torch.testing.assert_close(out.loss_listwise, expected)
    out.loss.backward()
    assert torch.isfinite(model.vision_proj.weight.grad).all()
    assert model.vision_proj_m.weight.grad is None  # the relevance carries no gradient
