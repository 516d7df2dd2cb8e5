"""``model.text_init``: the text tower starts from a local BERT checkpoint (the bundled all-MiniLM-L6-v2),
as BLIP's starts from BERT-base: embeddings, self-attention and feed-forward loaded, cross-attention new."""

import logging
import shutil

import pytest
import torch
from lavis.common.registry import registry
from lavis.models import load_model
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import BertModel

import lavis_listwise  # noqa: F401
from lavis_listwise.models.encoders import build_text_encoder
from lavis_listwise.models.text_init import load_bert_weights, resolve_text_init
from listwise_ranking.errors import ConfigError
from listwise_ranking.relevance.encoder import default_encoder_path

MINILM_VOCAB = 30522


@pytest.fixture(scope="module")
def minilm_state():
    return load_file(str(default_encoder_path() / "model.safetensors"))


@pytest.fixture(scope="module")
def blip_small():
    """``load_model`` as a LAVIS user calls it: the registry, the default YAML, no network."""
    return load_model("blip_retrieval_listwise", "small", is_eval=True, device="cpu")


def checkpoint_layers(cfg) -> list[int]:
    """The MiniLM layer loaded into each encoder layer: ``text_init_layers``, else the first ones."""
    layers = cfg.get("text_init_layers")
    return list(layers) if layers is not None else list(range(cfg.text_config.num_hidden_layers))


def small_cfg(arch="blip_retrieval_listwise", **text_config):
    cfg = OmegaConf.load(registry.get_model_class(arch).default_config_path("small")).model
    for key, value in text_config.items():
        OmegaConf.update(cfg, f"text_config.{key}", value, force_add=True)
    return cfg


def test_loaded_tensors_equal_minilm(blip_small, minilm_state):
    encoder = blip_small.text_encoder
    emb = encoder.embeddings
    assert torch.equal(
        emb.word_embeddings.weight[:MINILM_VOCAB], minilm_state["embeddings.word_embeddings.weight"]
    )
    assert torch.equal(emb.LayerNorm.weight, minilm_state["embeddings.LayerNorm.weight"])
    # LAVIS's text encoder has no token-type embeddings: BERT's type-0 row is folded into the positions
    folded = (
        minilm_state["embeddings.position_embeddings.weight"]
        + minilm_state["embeddings.token_type_embeddings.weight"][0]
    )
    assert torch.equal(emb.position_embeddings.weight, folded)
    last = encoder.config.num_hidden_layers - 1
    layer = encoder.encoder.layer[last]
    prefix = f"encoder.layer.{checkpoint_layers(small_cfg())[last]}."
    assert torch.equal(
        layer.attention.self.query.weight, minilm_state[prefix + "attention.self.query.weight"]
    )
    assert torch.equal(
        layer.attention.output.dense.bias, minilm_state[prefix + "attention.output.dense.bias"]
    )
    assert torch.equal(layer.intermediate.dense.weight, minilm_state[prefix + "intermediate.dense.weight"])
    assert torch.equal(layer.output.LayerNorm.weight, minilm_state[prefix + "output.LayerNorm.weight"])


def test_text_mode_computes_what_minilm_computes(blip_small):
    """Unimodal text features (ITC's text side) equal MiniLM's hidden states after the same layers."""
    encoder = blip_small.text_encoder
    minilm = BertModel.from_pretrained(str(default_encoder_path()), add_pooling_layer=False).eval()
    text = blip_small.tokenizer(
        ["a small red circle in the top left corner", "two blue squares"],
        padding="longest",
        return_tensors="pt",
    )
    mask = minilm.get_extended_attention_mask(text.attention_mask, text.input_ids.shape)
    with torch.no_grad():
        ours = encoder.forward_text(text).last_hidden_state
        theirs = minilm.embeddings(input_ids=text.input_ids)  # token type 0, as BERT's default
        for i in checkpoint_layers(small_cfg()):
            theirs = minilm.encoder.layer[i](theirs, attention_mask=mask)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_cross_attention_and_blip_tokens_are_new(blip_small, minilm_state):
    encoder = blip_small.text_encoder
    cross = {n: p for n, p in encoder.named_parameters() if ".crossattention." in n}
    assert len(cross) == 10 * encoder.config.num_hidden_layers  # BLIP: every layer cross-attends
    for name, param in cross.items():
        # not the same layer's self-attention counterpart (trained: no constant biases or norms)
        assert not torch.equal(param, minilm_state[name.replace(".crossattention.", ".attention.")]), name
        if param.dim() == 2:  # random matrices: equal to no checkpoint tensor at all
            for key, value in minilm_state.items():
                assert not (value.shape == param.shape and torch.equal(value, param)), (name, key)
    # BLIP's [DEC] and [ENC] rows are past MiniLM's vocabulary and keep their initialisation
    extra = encoder.embeddings.word_embeddings.weight[MINILM_VOCAB:]
    assert extra.shape[0] == len(blip_small.tokenizer) - MINILM_VOCAB == 2
    assert not (extra[:, None, :] == minilm_state["embeddings.word_embeddings.weight"][None]).all(-1).any()


def test_momentum_encoder_starts_from_the_loaded_weights(blip_small):
    pairs = list(
        zip(blip_small.text_encoder.named_parameters(), blip_small.text_encoder_m.named_parameters())
    )
    assert pairs
    for (name, param), (name_m, param_m) in pairs:
        assert name == name_m and torch.equal(param, param_m), name
        assert not param_m.requires_grad


def test_albef_small_loads_self_attention_in_every_layer(minilm_state):
    model = load_model("albef_retrieval_listwise", "small", is_eval=True, device="cpu")
    encoder = model.text_encoder
    fusion = encoder.config.fusion_layer
    assert 0 < fusion < encoder.config.num_hidden_layers
    sources = checkpoint_layers(small_cfg("albef_retrieval_listwise"))
    for i, layer in enumerate(encoder.encoder.layer):
        assert hasattr(layer, "crossattention") == (i >= fusion), i
        key = f"encoder.layer.{sources[i]}.attention.self.key.weight"
        assert torch.equal(layer.attention.self.key.weight, minilm_state[key]), i
    for (name, param), (_, param_m) in zip(
        encoder.named_parameters(), model.text_encoder_m.named_parameters()
    ):
        assert torch.equal(param, param_m), name


def test_load_reports_what_is_new(caplog):
    with caplog.at_level(logging.INFO):
        encoder = build_text_encoder(small_cfg(), vision_width=128)
    message = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model.text_init:"))
    assert "cross-attention of layers" in message and "[30522, 30523]" in message
    report = load_bert_weights(encoder, resolve_text_init("bundled-minilm"), checkpoint_layers(small_cfg()))
    assert report.new_vocab_rows == range(MINILM_VOCAB, MINILM_VOCAB + 2)
    assert all(".crossattention." in name for name in report.new)
    assert "pooler.dense.weight" in report.unused and report.folded_token_type


def test_conflicting_text_config_is_refused_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"model\.text_config\.hidden_size=64 conflicts with model\.text_init"
    ):
        build_text_encoder(small_cfg(hidden_size=64), vision_width=128)
    with pytest.raises(ConfigError, match=r"model\.text_config\.num_hidden_layers=7 conflicts"):
        build_text_encoder(small_cfg(num_hidden_layers=7), vision_width=128)
    with pytest.raises(ConfigError, match=r"model\.text_config\.vocab_size=1000"):
        build_text_encoder(small_cfg(vocab_size=1000), vision_width=128)


def test_chosen_checkpoint_layers_are_loaded_in_order(minilm_state):
    cfg = small_cfg()
    cfg.text_init_layers = [5, 0]
    cfg.text_config = None
    encoder = build_text_encoder(cfg, vision_width=128)
    assert encoder.config.num_hidden_layers == 2
    for i, source in enumerate((5, 0)):
        weight = encoder.encoder.layer[i].intermediate.dense.weight
        assert torch.equal(weight, minilm_state[f"encoder.layer.{source}.intermediate.dense.weight"]), i
    report = load_bert_weights(encoder, resolve_text_init("bundled-minilm"), [5, 0])
    assert report.layers == [5, 0] and "encoder.layer.3.output.dense.weight" in report.unused


def test_bad_text_init_layers_are_refused_naming_the_key():
    cfg = small_cfg()
    cfg.text_init_layers = [0, 6]
    with pytest.raises(ConfigError, match=r"model\.text_init_layers must list checkpoint layers in \[0, 6\)"):
        build_text_encoder(cfg, vision_width=128)
    cfg.text_init_layers = [0, 5]
    cfg.text_config = {"num_hidden_layers": 3}
    with pytest.raises(ConfigError, match=r"num_hidden_layers=3 conflicts with model\.text_init_layers"):
        build_text_encoder(cfg, vision_width=128)
    cfg.text_init = None
    with pytest.raises(ConfigError, match=r"model\.text_init_layers is set but model\.text_init is not"):
        build_text_encoder(cfg, vision_width=128)


def test_missing_directory_is_refused_naming_the_key(tmp_path):
    cfg = small_cfg()
    cfg.text_init = str(tmp_path / "no-such-bert")
    with pytest.raises(FileNotFoundError, match=r"model\.text_init: .*no-such-bert"):
        build_text_encoder(cfg, vision_width=128)
    (tmp_path / "config-only").mkdir()
    shutil.copy(default_encoder_path() / "config.json", tmp_path / "config-only")
    cfg.text_init = str(tmp_path / "config-only")
    with pytest.raises(FileNotFoundError, match=r"model\.text_init: .*model\.safetensors"):
        build_text_encoder(cfg, vision_width=128)


def test_other_vocabulary_than_the_tokenizer_is_refused(tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bert / name).symlink_to(default_encoder_path() / name)
    words = (default_encoder_path() / "vocab.txt").read_text().splitlines()
    (bert / "vocab.txt").write_text("\n".join([words[0], "[unused-x]", *words[2:]]) + "\n")
    cfg = small_cfg()
    cfg.text_init = str(bert)
    with pytest.raises(ConfigError, match=r"model\.text_init: .*differs from model\.tokenizer"):
        build_text_encoder(cfg, vision_width=128)


def test_albef_fusion_layer_past_the_last_layer_is_refused():
    with pytest.raises(ConfigError, match=r"model\.text_config\.fusion_layer must be in \[0, 2\)"):
        build_text_encoder(small_cfg("albef_retrieval_listwise", fusion_layer=6), vision_width=128)
