"""The BLIP / ALBEF vision and text encoders from ``model.*`` keys, offline.

LAVIS builds its ViT only as ``base`` or ``large``; ``vit_type: custom`` adds a ViT of any size, and
``text_config`` overrides the text tower's BERT config, so tests and the demo build tiny models.
``text_pooling: mean`` gives ITC the mean of the caption's token outputs instead of its [CLS] output;
``text_init`` (:mod:`.text_init`) starts the text tower from a local BERT-compatible checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from lavis.common.utils import get_abs_path
from lavis.models.med import XBertEncoder
from lavis.models.vit import VisionTransformerEncoder
from transformers import BertConfig

from listwise_ranking.errors import ConfigError

from ..config import MissingPathError
from .text_init import _adopt_checkpoint_config, _check_vocabulary, load_bert_weights, resolve_text_init

__all__ = [
    "MeanPooledTextEncoder",
    "TEXT_POOLINGS",
    "build_text_encoder",
    "build_vision_encoder",
    "check_text_tower",
]


def build_vision_encoder(cfg) -> VisionTransformerEncoder:
    """LAVIS's ViT for ``vit_type: base|large``; ``custom`` takes ``vit_embed_dim``, ``vit_depth``,
    ``vit_num_heads`` and ``vit_patch_size``."""
    vit_type = cfg.get("vit_type", "base")
    if vit_type in ("base", "large"):
        return VisionTransformerEncoder.from_config(cfg, from_pretrained=False)
    if vit_type != "custom":
        raise ValueError(f"model.vit_type must be 'base', 'large' or 'custom', got {vit_type!r}")
    missing = [
        k for k in ("vit_embed_dim", "vit_depth", "vit_num_heads", "vit_patch_size") if cfg.get(k) is None
    ]
    if missing:
        raise ValueError(f"model.vit_type: custom needs model.{', model.'.join(missing)}")
    eps = cfg.get("vit_layer_norm_epsilon", -1)
    norm_layer = None
    if eps != -1:
        from functools import partial

        from torch import nn

        norm_layer = partial(nn.LayerNorm, eps=eps)
    width = int(cfg.vit_embed_dim)
    encoder = VisionTransformerEncoder(
        img_size=int(cfg.get("image_size", 384)),
        patch_size=int(cfg.vit_patch_size),
        embed_dim=width,
        depth=int(cfg.vit_depth),
        num_heads=int(cfg.vit_num_heads),
        use_grad_checkpointing=bool(cfg.get("vit_grad_ckpt", False)),
        ckpt_layer=int(cfg.get("vit_ckpt_layer", 0)),
        drop_path_rate=float(cfg.get("vit_drop_path_rate", 0)),
        norm_layer=norm_layer,
    )
    encoder.vision_width = width
    return encoder


#: ``model.text_pooling`` values: the text feature ITC (and so the listwise term) reads at position 0.
TEXT_POOLINGS = ("cls", "mean")


class MeanPooledTextEncoder(XBertEncoder):
    """LAVIS's ``XBertEncoder`` whose unimodal pass (``forward_text``, what ITC, the momentum encoder
    and retrieval evaluation call) puts the attention-mask-weighted mean of the caption's token outputs
    at position 0, where BLIP and ALBEF read their ITC feature; the other positions are unchanged.

    Why: a [CLS] output trained from scratch barely depends on the caption at initialisation
    (attention is near uniform and the [CLS] embedding is the same for every caption), and
    contrastive training then collapses both towers to input-independent features for hundreds of
    steps (``benchmarks/tower_probe.py``); BLIP avoids this by starting from BERT-base, whose [CLS] is
    trained. ITM (``forward`` with ``mode="multimodal"``) is untouched. Same parameters as
    ``XBertEncoder``: state dicts are interchangeable.

    ``last_hidden_state``: ``[B, L, H]``, position 0 = mean over the ``attention_mask`` tokens.
    """

    def forward_text(self, tokenized_text, **kwargs):
        output = super().forward_text(tokenized_text, **kwargs)
        hidden = output.last_hidden_state
        mask = tokenized_text.attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
        output.last_hidden_state = torch.cat([pooled, hidden[:, 1:]], dim=1)
        return output


def build_text_encoder(cfg, vision_width: int) -> XBertEncoder:
    """LAVIS's ``XBertEncoder`` from ``med_config_path`` with optional ``text_config`` overrides.

    With ``text_init`` (a local BERT-compatible checkpoint directory, or ``bundled-minilm``) the
    architecture comes from the checkpoint's ``config.json`` (``text_config`` may repeat it, not
    contradict it) and the checkpoint's embedding, self-attention and feed-forward weights are loaded
    (:func:`load_bert_weights`): into encoder layer ``i`` the checkpoint's layer ``text_init_layers[i]``
    (default: its first ``text_config.num_hidden_layers`` layers, all of them when unset). The encoder
    is returned loaded, before the BLIP/ALBEF constructor deep-copies it into ``text_encoder_m`` and
    runs ``copy_params``, so the momentum encoder starts from the same weights.
    ``text_pooling`` (``cls``, default, as BLIP; or ``mean``) picks :class:`MeanPooledTextEncoder`.
    """
    pooling = cfg.get("text_pooling", "cls")
    if pooling not in TEXT_POOLINGS:
        raise ConfigError(f"model.text_pooling must be one of {list(TEXT_POOLINGS)}, got {pooling!r}")
    path = get_abs_path(cfg.get("med_config_path"))
    if not Path(path).is_file():
        raise MissingPathError(f"model.med_config_path: {path!r} does not exist")
    med_config = BertConfig.from_json_file(path)
    overrides = dict(cfg.get("text_config") or {})
    unknown = sorted(k for k in overrides if not hasattr(med_config, k))
    if unknown:
        raise ConfigError(f"model.text_config: unknown BERT config key(s) {unknown} (not in {path})")
    init_dir = resolve_text_init(cfg.get("text_init"))
    init_layers = cfg.get("text_init_layers")
    if init_dir is None and init_layers is not None:
        raise ConfigError("model.text_init_layers is set but model.text_init is not")
    if init_dir is not None:
        init_layers = _adopt_checkpoint_config(med_config, init_dir, overrides, init_layers)
        _check_vocabulary(init_dir, cfg.get("tokenizer"))
    for key, value in overrides.items():
        setattr(med_config, key, value)
    fusion_layer = getattr(med_config, "fusion_layer", None)
    if fusion_layer is not None and not 0 <= fusion_layer < med_config.num_hidden_layers:
        # ALBEF: layers >= fusion_layer carry cross-attention; none at all would break its ITM head
        raise ConfigError(
            f"model.text_config.fusion_layer must be in [0, {med_config.num_hidden_layers}) "
            f"(num_hidden_layers), got {fusion_layer}"
        )
    if cfg.get("vit_type", "base") == "custom":
        med_config.encoder_width = vision_width  # cross-attention reads the custom ViT's width
    encoder_cls = MeanPooledTextEncoder if pooling == "mean" else XBertEncoder
    encoder = encoder_cls(config=med_config, add_pooling_layer=False)
    if init_dir is not None:
        report = load_bert_weights(encoder, init_dir, init_layers)
        logging.info("model.text_init: %s", report.summary())
    return encoder


def check_text_tower(model_cfg: Mapping) -> None:
    """``model.med_config_path``, ``model.text_config`` keys and ``model.text_init`` of BLIP/ALBEF."""
    overrides = model_cfg.get("text_config")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"model.text_config must be a mapping of BERT config keys, got {overrides!r}")
    med = model_cfg.get("med_config_path")
    if overrides and med:
        path = get_abs_path(str(med))
        if not Path(path).is_file():
            raise ConfigError(f"model.med_config_path: {path!r} does not exist")
        known = BertConfig.from_json_file(path)
        unknown = sorted(k for k in overrides if not hasattr(known, k))
        if unknown:
            raise ConfigError(f"model.text_config: unknown BERT config key(s) {unknown} (not in {path})")
    resolve_text_init(model_cfg.get("text_init"))
