"""``clip_retrieval_listwise``: LAVIS's CLIP fine-tuned for image-text retrieval, plus the listwise term.

LAVIS 1.0.2 ships CLIP (``lavis/models/clip_models/model.py``, after open_clip) for zero-shot
evaluation only: its ``forward`` is open_clip's ``ClipLoss`` with batch-position targets and
features gathered without gradient. This arch trains it for retrieval:

* the symmetric contrastive loss over the global batch with LAVIS's learnable logit scale, with
  *image-id-aware* targets as BLIP's retrieval ITC (every caption of the same image in the global
  batch is a positive; each row's targets sum to 1);
* the features gathered across ranks *with* gradient (open_clip's ``gather_with_grad=True``,
  ``local_loss=False``), so N processes holding B samples each train exactly like one holding N*B;
* ``model.listwise.weight *`` the listwise term over the same cosine similarity
  (:class:`~lavis_listwise.models.ListwiseRetrievalMixin`, shared with BLIP and ALBEF).

State dicts are key-compatible with LAVIS's ``clip`` in both directions.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lavis.models.clip_models.clip_outputs import ClipOutput, ClipOutputFeatures
from lavis.models.clip_models.model import (
    _MODEL_CONFIGS,
    CLIP,
    QuickGELU,
    convert_weights_to_fp16,
    create_model,
    load_state_dict,
)
from lavis.models.clip_models.pretrained import download_pretrained, get_pretrained_url
from lavis.models.clip_models.tokenizer import _tokenizer, tokenize
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from listwise_ranking.errors import CheckpointError, ConfigError

from ..config import ListwiseConfig, difflib_hint
from ..distributed import gather_no_grad, gather_with_grad
from ..evaluation import RerankView, ScoringOptions, compute_sim_matrix_itc
from ..registration import register_once
from .checkpoints import (
    connection_problem,
    load_configured_checkpoint,
    refuse_unread_checkpoints,
    require_fit,
)
from .listwise_mixin import ListwiseRetrievalMixin, same_image_targets

__all__ = [
    "CLIP_PRECISIONS",
    "clip_weights_cache",
    "ClipRetrievalListwise",
    "ClipRetrievalOutput",
    "clip_architecture",
    "clip_tokenize",
    "image_id_contrastive_loss",
]

#: ``model.precision`` values, as LAVIS's ``CLIP.from_config`` reads them: ``fp16`` converts the
#: weights (GPU only), ``amp`` and ``fp32`` keep fp32 weights.
CLIP_PRECISIONS = ("fp32", "amp", "fp16")
_EOT = _tokenizer.encoder["<end_of_text>"]


def clip_tokenize(texts: str | list[str], context_length: int = 77) -> Tensor:
    """LAVIS's CLIP tokenizer (its bundled BPE vocabulary, offline), ``[n, context_length]`` long ids.

    One change, open_clip's later fix: a caption longer than ``context_length`` keeps its
    end-of-text token in the last position. LAVIS's ``tokenize`` cuts it off, and CLIP reads the text
    feature at the highest token id, which is then an arbitrary word.
    """
    ids = tokenize(texts, context_length=context_length)
    cut = ~(ids == _EOT).any(dim=1)
    ids[cut, -1] = _EOT
    return ids


def image_id_contrastive_loss(logits: Tensor, image_ids: Tensor) -> Tensor:
    """Symmetric contrastive loss whose positives are all pairs sharing an image.

    BLIP's retrieval ITC targets without its queue and distillation: ``pos[a, b] = (id_a == id_b)``,
    each row normalised to sum to 1, cross-entropy of the row softmax in both directions, averaged.
    With distinct ids it equals open_clip's / LAVIS's ``ClipLoss`` (``arange`` labels).

    Args:
        logits: ``[N, N]`` ``logit_scale * image_feat @ text_feat.T`` of the (global) batch; row
            ``a`` is sample ``a``'s image, column ``b`` sample ``b``'s caption.
        image_ids: ``[N]`` image id of each sample.

    Returns: the scalar loss ``(L_i2t + L_t2i) / 2``.
    """
    targets = same_image_targets(image_ids, image_ids)  # symmetric mask: the same for both directions
    logits = logits.float()
    loss_i2t = -(F.log_softmax(logits, dim=1) * targets).sum(1).mean()
    loss_t2i = -(F.log_softmax(logits.t(), dim=1) * targets).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


def clip_architecture(spec: Any) -> dict:
    """A CLIP architecture as ``CLIP(**arch)`` takes it: ``embed_dim``, ``vision_cfg``, ``text_cfg``
    (and optionally ``quick_gelu``).

    Args:
        spec: ``model.model_config``: a mapping with those keys (inline YAML); the name of one of
            LAVIS's CLIP model configs (``lavis/configs/models/clip/<name>.json``, e.g. ``ViT-B-32``);
            or the path of such a JSON file.

    Raises:
        ConfigError naming ``model.model_config`` and the available names.
    """
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, Mapping):
        arch = copy.deepcopy(dict(spec))
        source = "model.model_config"
    elif isinstance(spec, str) and spec.replace("/", "-") in _MODEL_CONFIGS:
        arch = copy.deepcopy(_MODEL_CONFIGS[spec.replace("/", "-")])
        source = f"LAVIS's CLIP config {spec!r}"
    elif isinstance(spec, str) and Path(spec).expanduser().is_file():
        arch = json.loads(Path(spec).expanduser().read_text())
        source = spec
    else:
        raise ConfigError(
            f"model.model_config: {spec!r} is neither a mapping, nor one of LAVIS's CLIP model configs "
            f"{list(_MODEL_CONFIGS)}, nor a JSON file"
        )
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in arch]
    unknown = sorted(set(arch) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"})
    if missing or unknown:
        raise ConfigError(
            f"model.model_config ({source}): needs embed_dim, vision_cfg and text_cfg"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown key(s) {unknown}" if unknown else "")
        )
    return arch


def clip_weights_cache() -> Path:
    """Where LAVIS's ``download_pretrained`` keeps CLIP weights (``~/.cache/clip``, fixed when LAVIS is
    imported) and looks for them before downloading."""
    return Path(inspect.signature(download_pretrained).parameters["root"].default)


def _refuse_unreachable_download(name: str, tag: str) -> None:
    """A :class:`CheckpointError` now, naming what to do offline, when LAVIS would have to download
    ``tag``'s weights for ``name`` and cannot reach the host (LAVIS's own attempt ends in a raw
    ``URLError``, after the resolver's timeouts)."""
    url = get_pretrained_url(name, tag)
    if not url or (clip_weights_cache() / os.path.basename(url)).is_file():
        return
    problem = connection_problem(url, timeout=10.0)
    if problem:
        cached = clip_weights_cache() / os.path.basename(url)
        raise CheckpointError(
            f"model.pretrained: cannot download the {tag!r} weights of {name} from {url} ({problem}). "
            f"Without network, fetch the file elsewhere and put it at {cached}, where LAVIS looks "
            "before downloading"
        )


def _uses_quick_gelu(model: CLIP) -> bool:
    """Whether a built CLIP's text transformer uses QuickGELU (OpenAI's weights were trained with it)."""
    return isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)


@dataclass
class ClipRetrievalOutput(ClipOutput):
    """LAVIS's ``ClipOutput`` plus the loss terms the ``retrieval_listwise`` task logs.

    Attributes:
        loss: scalar training loss, ``loss_itc`` combined with ``loss_listwise`` (``model.listwise``).
        loss_itc: scalar image-id-aware symmetric contrastive loss of the global batch.
        loss_listwise: scalar listwise term (0 for ``weight: 0``).
        logit_scale_exp: scalar, the logit scale the contrastive logits were scaled by.
        intermediate_output: this rank's ``image_embeds`` / ``text_embeds`` ``[B, E]`` and their
            L2-normalised ``*_proj`` ``[B, E]``, with gradient.
    """

    loss_itc: Tensor | None = None
    loss_listwise: Tensor | None = None


@register_once("model", "clip_retrieval_listwise")
class ClipRetrievalListwise(ListwiseRetrievalMixin, CLIP):
    """LAVIS's CLIP with ``loss = loss_itc + weight * loss_listwise`` for retrieval fine-tuning.

    Model types mirror LAVIS's ``clip`` (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, ``ViT-L-14-336``,
    ``RN50``: OpenAI's weights, downloaded by LAVIS) plus ``tiny`` (a small ViT and text transformer
    from scratch, offline). Retrieval evaluation is ITC only: there is no ITM head to re-rank with.
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "ViT-B-32": "configs/models/clip_retrieval_listwise_vit_b32.yaml",
        "ViT-B-16": "configs/models/clip_retrieval_listwise_vit_b16.yaml",
        "ViT-L-14": "configs/models/clip_retrieval_listwise_vit_l14.yaml",
        "ViT-L-14-336": "configs/models/clip_retrieval_listwise_vit_l14_336.yaml",
        "RN50": "configs/models/clip_retrieval_listwise_rn50.yaml",
        "tiny": "configs/models/clip_retrieval_listwise_tiny.yaml",
    }
    #: ``model.pretrained`` gives the weights under ``model.finetuned`` too (see ``from_config``).
    pretrained_always_read = True

    def __init__(
        self,
        embed_dim: int,
        vision_cfg,
        text_cfg,
        quick_gelu: bool = False,
        max_logit_scale: float | None = 100.0,
        listwise: ListwiseConfig | None = None,
    ):
        """``embed_dim`` / ``vision_cfg`` / ``text_cfg`` / ``quick_gelu`` as LAVIS's ``CLIP``;
        ``max_logit_scale`` caps ``logit_scale.exp()`` (:meth:`logit_scale_exp`; ``None``: no cap);
        ``listwise`` is ``model.listwise``."""
        super().__init__(embed_dim, vision_cfg, text_cfg, quick_gelu, listwise=listwise)
        if max_logit_scale is not None and not float(max_logit_scale) > 0:
            raise ConfigError(f"model.max_logit_scale must be > 0 or null, got {max_logit_scale!r}")
        self.max_logit_scale = None if max_logit_scale is None else float(max_logit_scale)
        # LAVIS's tokenize pads to 77 whatever the model's context length: use the model's
        self.tokenizer = functools.partial(clip_tokenize, context_length=self.context_length)

    # Replaces CLIP.from_config: LAVIS's create_model builds CLIP, not this class (UPSTREAMING 12).
    @classmethod
    def check_model_config(cls, model_cfg) -> None:
        """CLIP's ``model.model_config``: the keys LAVIS's ``CLIPVisionCfg`` / ``CLIPTextCfg`` take."""
        check_clip_architecture(model_cfg)

    @classmethod
    def from_config(cls, cfg=None):
        """The model from ``model.model_config`` (default: ``model_type``, one of LAVIS's CLIP
        architectures), with ``model.pretrained`` weights as LAVIS's ``CLIP.from_config`` loads them
        (``openai``, another open_clip tag, or a local state-dict file; null/empty: from scratch), then,
        with ``model.load_finetuned: True`` (default False), the checkpoint ``model.finetuned`` (a
        file or URL, e.g. a ``checkpoint_best.pth`` of a fine-tuning run) loaded over them as the
        other archs load it. ``model.pretrained`` still decides the activation: OpenAI's weights use
        QuickGELU, so keep ``pretrained: openai`` for a model fine-tuned from them."""
        precision = cfg.get("precision", "fp32")
        if precision not in CLIP_PRECISIONS:
            raise ConfigError(f"model.precision must be one of {list(CLIP_PRECISIONS)}, got {precision!r}")
        spec = cfg.get("model_config") or cfg.get("model_type")
        kwargs = dict(
            max_logit_scale=cfg.get("max_logit_scale", 100.0),
            listwise=ListwiseConfig.from_cfg(cfg.get("listwise")),
        )
        refuse_unread_checkpoints(cls, cfg)
        model = cls.build_pretrained(spec, cfg.get("pretrained"), **kwargs)
        if cfg.get("load_finetuned", False):
            # a fine-tuned checkpoint ({"model": state dict}, as runner_listwise and LAVIS's runner write)
            # on top of the architecture model.pretrained gave, as LAVIS's load_checkpoint_from_config
            load_configured_checkpoint(model, cfg)
        if precision == "fp16":
            convert_weights_to_fp16(model)
        return model

    @classmethod
    def build_pretrained(cls, spec: Any, pretrained: str | None, **kwargs) -> ClipRetrievalListwise:
        """This class for the architecture ``spec`` (:func:`clip_architecture`) with ``pretrained``
        weights; ``kwargs`` go to the constructor.

        With one of LAVIS's architecture names, LAVIS's own ``create_model(name, pretrained)`` loads
        the weights (OpenAI's JIT archives, open_clip's tags, a local file), and they are copied
        strictly into this class, whose activation follows the loaded model's (QuickGELU for OpenAI's).
        With an inline or JSON architecture, ``pretrained`` must be a local state-dict file.

        Raises:
            CheckpointError: the weights are not in :func:`clip_weights_cache` and their host cannot
                be reached; ConfigError: a bad ``model_config`` or ``pretrained``.
        """
        arch = clip_architecture(spec)
        if not pretrained:
            return cls(**arch, **kwargs)
        name = spec.replace("/", "-") if isinstance(spec, str) else None
        if name in _MODEL_CONFIGS:
            _refuse_unreachable_download(name, str(pretrained))
            stock = create_model(model_name=name, pretrained=str(pretrained), precision="fp32")
            arch["quick_gelu"] = _uses_quick_gelu(stock)
            model = cls(**arch, **kwargs)
            model.load_state_dict(stock.state_dict())  # strict: same architecture, same keys
            return model
        if not os.path.isfile(os.path.expanduser(str(pretrained))):
            raise ConfigError(
                f"model.pretrained: {pretrained!r} is not a file; open_clip tags such as 'openai' need "
                f"model.model_config to name one of LAVIS's CLIP architectures {list(_MODEL_CONFIGS)}"
            )
        model = cls(**arch, **kwargs)
        try:  # LAVIS's reader: a 'state_dict' entry, DataParallel's 'module.' prefixes
            state_dict = load_state_dict(os.path.expanduser(str(pretrained)))
            tensors = isinstance(state_dict, Mapping) and all(torch.is_tensor(v) for v in state_dict.values())
            if not tensors:
                raise TypeError("no state dict (a mapping of names to tensors) in it")
        except Exception as err:  # a truncated file, a pickle of something else, ...
            text = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CheckpointError(
                f"model.pretrained: {str(pretrained)!r} is not a loadable CLIP state dict "
                f"({type(err).__name__}: {text})"
            ) from None
        require_fit(model, state_dict, "model.pretrained", str(pretrained), hint=" (model.model_config)")
        model.load_state_dict(state_dict)
        return model

    def logit_scale_exp(self) -> Tensor:
        """Scalar ``logit_scale.exp()``, with the parameter first clamped in place to
        ``ln(max_logit_scale)``.

        OpenAI CLIP and open_clip's training loop clamp the parameter to ``ln(100)`` after every
        optimizer step; clamping it before each forward is the same for every step (the gradient is
        the unclamped one, so the scale can still go down). A clamp of the exp in the loss would not
        be: above the cap its gradient is 0 and the scale would stay there for good (OpenAI's weights
        start there: ``ln(100)`` rounded to fp16 is just above it).
        """
        if self.max_logit_scale is not None:
            with torch.no_grad():
                self.logit_scale.clamp_(max=math.log(self.max_logit_scale))
        return self.logit_scale.exp()

    def retrieval_scores(self, data_loader, views: list[RerankView], options: ScoringOptions):
        """A dual encoder has no ITM head: its ITC similarity is the score, nothing is re-ranked
        (:func:`~lavis_listwise.evaluation.compute_sim_matrix_itc`); one pair per view."""
        return compute_sim_matrix_itc(self, data_loader, views=views, amp=options.amp)

    def listwise_features(self, output: ClipRetrievalOutput) -> tuple[Tensor, Tensor]:
        """This rank's normalised features ``([B, E], [B, E])``, as the contrastive loss uses them."""
        inter = output.intermediate_output
        return inter.image_embeds_proj, inter.text_embeds_proj

    # Replaces CLIP.forward: batch-position targets, features gathered without gradient (UPSTREAMING 12).
    def forward(self, samples: dict) -> ClipRetrievalOutput:
        """Training step: image-id-aware contrastive loss of the global batch, plus the listwise term.

        Args:
            samples: ``image`` ``[B, 3, H, W]``, ``text_input`` (``B`` captions), ``image_id`` ``[B]``
                (equal ids are positives; without it every sample is its own image, as in LAVIS's
                ``ClipLoss``), and for ``weight > 0`` the ``*_listwise`` builders' RSC keys.
        """
        image = samples["image"]
        text = self.tokenizer(samples["text_input"]).to(image.device)
        image_embeds = self.encode_image(image)
        text_embeds = self.encode_text(text)
        image_feat = F.normalize(image_embeds, dim=-1)
        text_feat = F.normalize(text_embeds, dim=-1)
        image_all = gather_with_grad(image_feat)  # [N, E], N = B x processes
        text_all = gather_with_grad(text_feat)
        if samples.get("image_id") is not None:
            image_ids = gather_no_grad(torch.as_tensor(samples["image_id"], device=image.device))
        else:
            image_ids = torch.arange(len(image_all), device=image.device)
        scale = self.logit_scale_exp()
        loss_itc = image_id_contrastive_loss(scale * image_all @ text_all.t(), image_ids)
        output = ClipRetrievalOutput(
            intermediate_output=ClipOutputFeatures(
                image_embeds=image_embeds,
                image_embeds_proj=image_feat,
                text_embeds=text_embeds,
                text_embeds_proj=text_feat,
            ),
            logit_scale_exp=scale.detach(),
            loss=loss_itc,
            loss_itc=loss_itc,
        )
        return self.add_listwise_term(output, samples)


def check_clip_architecture(model_cfg: Mapping) -> None:
    """CLIP's ``model.model_config``: the keys LAVIS's ``CLIPVisionCfg`` / ``CLIPTextCfg`` take."""
    import dataclasses

    from lavis.models.clip_models.model import CLIPTextCfg, CLIPVisionCfg

    arch = clip_architecture(model_cfg.get("model_config") or model_cfg.get("model_type"))
    for part, klass in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        given = arch[part]
        where = f"model.model_config.{part}"
        if not isinstance(given, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {given!r}")
        fields = dataclasses.fields(klass)
        names = {f.name for f in fields}
        unknown = sorted(set(given) - names)
        if unknown:
            hints = [difflib_hint(k, names) for k in unknown]
            raise ConfigError(
                f"{where}: unknown key(s) {unknown}{''.join(hints)}; LAVIS's {klass.__name__} takes "
                f"{sorted(names)}"
            )
        required = [
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if k not in given]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {missing} ({klass.__name__} has no default for them)")
