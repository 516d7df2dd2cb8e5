"""``blip2_retrieval_listwise``: LAVIS's BLIP-2 first-stage model (``Blip2Qformer``) fine-tuned for
image-text retrieval, plus the listwise term.

LAVIS 1.0.2 trains ``Blip2Qformer`` only with its stage-1 pre-training ``forward`` (ITC, ITM and the
image-grounded LM loss), whose ITC targets are batch positions: two captions of one image in a batch
are each other's negatives, and ITM may draw a caption of the same image as a "hard negative". The
BLIP-2 paper fine-tunes this model on COCO with the same three objectives (section 4.4). This arch:

* ITC over BLIP-2's similarity (the maximum over the query tokens), with *image-id-aware* targets
  as BLIP's retrieval ITC: every caption of the same image in the global batch (ids gathered across
  ranks) is a positive, each row's targets sum to 1; label smoothing 0.1 as in BLIP-2;
* ITM with hard negatives drawn from the ITC similarity that never pick a pair of the same image
  (masked as ``BlipRetrieval`` masks them);
* the LM loss as in BLIP-2 stage 1, switched by ``model.use_lm_loss`` (default true);
* ``model.listwise.weight *`` the listwise term in both directions over the same max-over-queries
  similarity (:class:`~lavis_listwise.models.ListwiseRetrievalMixin`, shared with BLIP, ALBEF, CLIP).

With one caption per image in the global batch and ``weight: 0`` the losses and gradients are
LAVIS's ``Blip2Qformer.forward``'s, bit for bit. Like it, ITC compares this rank's features with the
other ranks' features gathered *without* gradient. State dicts are key-compatible with LAVIS's
``blip2`` both ways. ``vit_model: custom``, ``qformer_config`` (a local BERT config) and
``tokenizer`` build it offline (the ``tiny`` type); retrieval evaluation is LAVIS's own
``Blip2Qformer.compute_sim_matrix`` (ITC top-``k_test``, then ITM re-ranking).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lavis.models.base_model import concat_all_gather
from lavis.models.blip2_models.blip2 import LayerNorm
from lavis.models.blip2_models.blip2_qformer import Blip2Qformer
from lavis.models.blip2_models.Qformer import BertConfig, BertLMHeadModel
from lavis.models.blip_models.blip_outputs import BlipIntermediateOutput, BlipOutput
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from listwise_ranking.errors import ConfigError

from ..config import ListwiseConfig
from ..distributed import gather_no_grad, gather_with_grad, rank_and_world
from ..evaluation import RerankView, ScoringOptions, compute_sim_matrix_qformer
from ..registration import register_once
from .checkpoints import load_configured_checkpoint, refuse_unread_checkpoints
from .encoders import build_vision_encoder
from .listwise_mixin import ListwiseRetrievalMixin, same_image_targets
from .tokenizer import build_bert_tokenizer

__all__ = [
    "BLIP2_ITC_LABEL_SMOOTHING",
    "Blip2RetrievalIntermediateOutput",
    "Blip2RetrievalListwise",
    "blip2_itc_targets",
    "qformer_bert_config",
]

#: ``Blip2Qformer.forward``'s ITC label smoothing.
BLIP2_ITC_LABEL_SMOOTHING = 0.1
#: ``model.vit_model`` values: LAVIS's two ViTs, or the plugin's small ViT (``vit_embed_dim`` ...).
BLIP2_VIT_MODELS = ("eva_clip_g", "clip_L", "custom")
#: ``model.qformer_config`` naming LAVIS's own Q-Former: bert-base-uncased's config and weights, downloaded.
LAVIS_QFORMER = "bert-base-uncased"


def qformer_bert_config(spec: Any) -> BertConfig:
    """The Q-Former's BERT config from ``model.qformer_config``, without the hub.

    Args:
        spec: a mapping of ``BertConfig`` fields over its defaults (which are bert-base-uncased's
            architecture: 12 layers of 768, vocabulary 30,522), or the path of a ``config.json``.

    Raises:
        ConfigError naming ``model.qformer_config`` for an unknown field or a missing file.
    """
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, Mapping):
        config = BertConfig()
        unknown = sorted(k for k in spec if not hasattr(config, k))
        if unknown:
            raise ConfigError(f"model.qformer_config: unknown BERT config key(s) {unknown}")
        for key, value in spec.items():
            setattr(config, key, value)
        return config
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.qformer_config: {spec!r} is neither {LAVIS_QFORMER!r} (LAVIS's download), a mapping of "
            "BERT config fields, nor a config.json file"
        )
    return BertConfig.from_dict(json.loads(path.read_text()))


def blip2_itc_targets(image_ids: Tensor, all_image_ids: Tensor, offset: int) -> Tensor:
    """ITC targets of this rank's ``B`` rows over the ``N`` columns of the global batch.

    Args:
        image_ids: ``[B]`` image ids of this rank's samples.
        all_image_ids: ``[N]`` image ids of the global batch (this rank's at ``offset``).
        offset: index of this rank's first sample in the global batch.

    Returns: ``[B]`` long column indices (``offset + arange(B)``, exactly ``Blip2Qformer.forward``'s
        targets) when every row has a single positive; otherwise ``[B, N]`` float targets, the
        same-image columns of each row sharing 1 (BLIP's retrieval ITC). ``F.cross_entropy`` takes
        either; one host sync decides which.
    """
    targets = same_image_targets(image_ids, all_image_ids)
    if bool((targets.amax(1) == 1).all()):  # a row with k positives has targets 1/k
        # Blip2Qformer.forward's own expression (same values as the positives' columns here)
        bs = image_ids.numel()
        return torch.linspace(offset, offset + bs - 1, bs, dtype=int).to(image_ids.device)
    return targets


@dataclass
class Blip2RetrievalIntermediateOutput(BlipIntermediateOutput):
    """LAVIS's ``BlipIntermediateOutput`` (``image_embeds``: the ViT tokens after ``ln_vision``
    ``[B, P, D]``; ``text_embeds``: the Q-Former text output ``[B, L, H]``; ``itm_logits`` ``[3B, 2]``,
    ``itm_labels`` ``[3B]``; fewer rows when a batch of one image has no negative to draw) plus what
    the listwise term and the tests read.

    Attributes:
        image_feats: ``[B, Q, E]`` normalised projected query outputs, with gradient.
        text_feat: ``[B, E]`` normalised projected [CLS] text output, with gradient.
        itm_negative_images: ``[B]`` global-batch index of the image drawn as each caption's negative
            (``-1``: the global batch holds no other image; likewise ``itm_negative_texts``).
        itm_negative_texts: ``[B]`` global-batch index of the caption drawn as each image's negative.
    """

    image_feats: Tensor | None = None
    text_feat: Tensor | None = None
    itm_negative_images: Tensor | None = None
    itm_negative_texts: Tensor | None = None


@register_once("model", "blip2_retrieval_listwise")
class Blip2RetrievalListwise(ListwiseRetrievalMixin, Blip2Qformer):
    """BLIP-2's Q-Former with ``loss = loss_itc + loss_itm [+ loss_lm] + weight * loss_listwise``.

    Model types: ``coco`` (LAVIS's ``blip2`` ``coco`` settings: EVA ViT-g at 364 px, fine-tuned ViT,
    LAVIS's pre-trained and COCO fine-tuned checkpoints) and ``tiny`` (a small ViT and a 2-layer
    Q-Former from scratch, offline). Retrieval evaluation: LAVIS's ``compute_sim_matrix``.
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "coco": "configs/models/blip2_retrieval_listwise_coco.yaml",
        "tiny": "configs/models/blip2_retrieval_listwise_tiny.yaml",
    }

    def __init__(
        self,
        vit_model: str = "eva_clip_g",
        img_size: int = 224,
        drop_path_rate: float = 0,
        use_grad_checkpoint: bool = False,
        vit_precision: str = "fp16",
        freeze_vit: bool = True,
        num_query_token: int = 32,
        cross_attention_freq: int = 2,
        embed_dim: int = 256,
        max_txt_len: int = 32,
        use_lm_loss: bool = True,
        vit_config: Mapping[str, Any] | None = None,
        qformer_config: Any = LAVIS_QFORMER,
        listwise: ListwiseConfig | None = None,
        tokenizer: str | None = None,
    ):
        """The first ten arguments as LAVIS's ``Blip2Qformer``; ``use_lm_loss`` adds the LM loss;
        ``vit_config`` (``vit_embed_dim``, ``vit_depth``, ``vit_num_heads``, ``vit_patch_size``) is the
        ``vit_model: custom`` ViT; ``qformer_config`` is ``"bert-base-uncased"`` (LAVIS: downloads its
        config and weights) or a local config (:func:`qformer_bert_config`, weights from scratch);
        ``listwise`` is ``model.listwise``, ``tokenizer`` ``model.tokenizer``. Without the LM loss the LM
        head's own parameters are frozen (same state dict)."""
        if vit_model not in BLIP2_VIT_MODELS:
            raise ConfigError(f"model.vit_model must be one of {list(BLIP2_VIT_MODELS)}, got {vit_model!r}")
        if vit_model == "custom" and vit_precision != "fp32":
            raise ConfigError(
                f"model.vit_model: custom needs model.vit_precision: fp32, got {vit_precision!r}"
            )
        # Read by the init_* hooks, which Blip2Qformer.__init__ calls before nn.Module attributes exist.
        object.__setattr__(self, "_vit_config", dict(vit_config or {}))
        object.__setattr__(self, "_vit_model_name", vit_model)
        object.__setattr__(self, "_qformer_source", qformer_config)
        super().__init__(
            vit_model=vit_model,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            use_grad_checkpoint=use_grad_checkpoint,
            vit_precision=vit_precision,
            freeze_vit=freeze_vit,
            num_query_token=num_query_token,
            cross_attention_freq=cross_attention_freq,
            embed_dim=embed_dim,
            max_txt_len=max_txt_len,
            listwise=listwise,
            tokenizer=tokenizer,
        )
        self.use_lm_loss = bool(use_lm_loss)
        if not self.use_lm_loss:
            # Nothing trains the LM head then, and DDP refuses parameters without gradient: freeze its
            # transform and bias (its decoder weight is the word embeddings', which ITC and ITM train).
            shared = {id(p) for p in self.Qformer.bert.parameters()}
            for param in self.Qformer.cls.parameters():
                if id(param) not in shared:
                    param.requires_grad_(False)

    # Replaces Blip2Qformer.from_config: custom ViT, local Q-Former config and tokenizer, listwise,
    # LM switch (UPSTREAMING 8).
    @classmethod
    def from_config(cls, cfg=None):
        """The model from a ``model`` config: LAVIS's ``blip2`` keys plus ``use_lm_loss``,
        ``qformer_config``, ``tokenizer``, ``listwise`` and, for ``vit_model: custom``, ``vit_embed_dim``,
        ``vit_depth``, ``vit_num_heads``, ``vit_patch_size``; then the configured checkpoint."""
        refuse_unread_checkpoints(cls, cfg)  # before building: a config mistake costs no model
        model = cls(
            vit_model=cfg.get("vit_model", "eva_clip_g"),
            img_size=cfg.get("image_size"),
            drop_path_rate=cfg.get("drop_path_rate", 0),
            use_grad_checkpoint=cfg.get("use_grad_checkpoint", False),
            vit_precision=cfg.get("vit_precision", "fp16"),
            freeze_vit=cfg.get("freeze_vit", True),
            num_query_token=cfg.get("num_query_token"),
            cross_attention_freq=cfg.get("cross_attention_freq", 2),
            embed_dim=cfg.get("embed_dim", 256),
            max_txt_len=cfg.get("max_txt_len", 32),
            use_lm_loss=cfg.get("use_lm_loss", True),
            vit_config=dict(
                vit_embed_dim=cfg.get("vit_embed_dim"),
                vit_depth=cfg.get("vit_depth"),
                vit_num_heads=cfg.get("vit_num_heads"),
                vit_patch_size=cfg.get("vit_patch_size"),
            ),
            qformer_config=cfg.get("qformer_config", LAVIS_QFORMER),
            listwise=ListwiseConfig.from_cfg(cfg.get("listwise")),
            tokenizer=cfg.get("tokenizer"),
        )
        load_configured_checkpoint(model, cfg)
        return model

    # Replaces Blip2Base.init_tokenizer: it downloads bert-base-uncased (UPSTREAMING 8).
    def init_tokenizer(self):
        """``model.tokenizer`` (default: the bundled bert-base-uncased vocabulary, offline) with
        BLIP-2's one extra token, ``[DEC]`` as ``bos_token`` (no ``[ENC]``, unlike BLIP)."""
        tokenizer = build_bert_tokenizer(self._tokenizer_source, blip_special_tokens=False)
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        return tokenizer

    def init_vision_encoder(self, model_name, img_size, drop_path_rate, use_grad_checkpoint, precision):
        """LAVIS's EVA ViT-g / CLIP ViT-L, or for ``custom`` LAVIS's ``VisionTransformerEncoder`` of
        ``vit_config``'s size; either with BLIP-2's fp16-safe ``ln_vision``. The ViT returns
        ``[B, 1 + P, D]`` tokens, as EVA's does."""
        if model_name != "custom":
            return super().init_vision_encoder(
                model_name, img_size, drop_path_rate, use_grad_checkpoint, precision
            )
        spec = {k: v for k, v in self._vit_config.items() if v is not None}
        encoder = build_vision_encoder(
            OmegaConf.create(
                dict(
                    spec,
                    vit_type="custom",
                    image_size=img_size,
                    vit_grad_ckpt=use_grad_checkpoint,
                    vit_drop_path_rate=drop_path_rate,
                )
            )
        )
        return encoder, LayerNorm(encoder.num_features)

    # Replaces Blip2Base.init_Qformer for a local config: it downloads bert-base-uncased (UPSTREAMING 8).
    def init_Qformer(self, num_query_token, vision_width, cross_attention_freq=2):
        """LAVIS's Q-Former (``qformer_config: bert-base-uncased``: hub config and weights), or the same
        construction from a local config with weights from scratch: cross-attention to the ViT's
        ``vision_width`` every ``cross_attention_freq`` layers, ``num_query_token`` query tokens."""
        if self._qformer_source in (None, LAVIS_QFORMER):
            return super().init_Qformer(num_query_token, vision_width, cross_attention_freq)
        encoder_config = qformer_bert_config(self._qformer_source)
        encoder_config.encoder_width = vision_width
        encoder_config.add_cross_attention = True
        encoder_config.cross_attention_freq = cross_attention_freq
        encoder_config.query_length = num_query_token
        qformer = BertLMHeadModel(encoder_config)
        query_tokens = nn.Parameter(torch.zeros(1, num_query_token, encoder_config.hidden_size))
        query_tokens.data.normal_(mean=0.0, std=encoder_config.initializer_range)
        return qformer, query_tokens

    def pretrained_may_lack(self) -> tuple[str, ...]:
        """LAVIS's BLIP-2 pre-training checkpoint has no ViT weights: EVA ViT-g / CLIP ViT-L load their
        own in ``init_vision_encoder``. A ``custom`` ViT has no other source."""
        return () if self._vit_model_name == "custom" else ("visual_encoder.",)

    def retrieval_scores(self, data_loader, views: list[RerankView], options: ScoringOptions):
        """LAVIS's ``Blip2Qformer.compute_sim_matrix`` arithmetic per view, from one feature pass
        (:func:`~lavis_listwise.evaluation.compute_sim_matrix_qformer`): its ITC is the maximum over
        query tokens and its ITM runs them through the Q-Former, which the fast path does not model."""
        return compute_sim_matrix_qformer(self, data_loader, options.k_test, views=views)

    def listwise_features(self, output: BlipOutput) -> tuple[Tensor, Tensor]:
        """This rank's ``([B, Q, E] query features, [B, E] text features)``, as ITC uses them."""
        inter = output.intermediate_output
        return inter.image_feats, inter.text_feat

    def listwise_similarity(self, image_all: Tensor, text_all: Tensor) -> Tensor:
        """``[N, N]`` BLIP-2 ITC similarity (before the temperature): for image ``a`` and caption
        ``b``, the largest cosine of ``b``'s text feature ``[N, E]`` with ``a``'s query features
        ``[N, Q, E]``, as ``Blip2Qformer.forward`` aggregates over query tokens."""
        return torch.einsum("aqe,be->abq", image_all, text_all).max(-1).values

    # Replaces Blip2Qformer.forward: batch-position ITC targets, same-image ITM negatives, the LM
    # switch and the listwise term (UPSTREAMING 13).
    def forward(self, samples: dict) -> BlipOutput:
        """Training step: ITC + ITM (+ LM) as ``Blip2Qformer.forward``, image-id aware, plus the
        listwise term.

        Args:
            samples: ``image`` ``[B, 3, H, W]``, ``text_input`` (``B`` captions), ``image_id`` ``[B]``
                (equal ids are positives; without it every sample is its own image, as in LAVIS), and
                for ``weight > 0`` the ``*_listwise`` builders' RSC keys.

        Returns: LAVIS's ``BlipOutput`` with ``loss``, ``loss_itc``, ``loss_itm``, ``loss_lm`` (absent
            with ``use_lm_loss: false``), ``loss_listwise`` and a :class:`Blip2RetrievalIntermediateOutput`.
        """
        image = samples["image"]
        text = samples["text_input"]
        rank, _ = rank_and_world()
        bs = image.size(0)

        image_embeds = self.ln_vision(self.visual_encoder(image))  # [B, P, D]
        image_atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long).to(image.device)
        query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_output = self.Qformer.bert(
            query_embeds=query_tokens,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            use_cache=True,
            return_dict=True,
        )
        image_feats = F.normalize(self.vision_proj(query_output.last_hidden_state), dim=-1)  # [B, Q, E]

        text_tokens = self.tokenizer(
            text, padding="max_length", truncation=True, max_length=self.max_txt_len, return_tensors="pt"
        ).to(image.device)
        text_output = self.Qformer.bert(
            text_tokens.input_ids, attention_mask=text_tokens.attention_mask, return_dict=True
        )
        text_feat = F.normalize(self.text_proj(text_output.last_hidden_state[:, 0, :]), dim=-1)  # [B, E]

        ###============== Image-text Contrastive ===================###
        # as Blip2Qformer: the other ranks' features without gradient (a detached copy on one rank too)
        image_feats_all = _gather_detached(image_feats)  # [N, Q, E]
        text_feat_all = _gather_detached(text_feat)  # [N, E]
        sim_q2t = torch.matmul(image_feats.unsqueeze(1), text_feat_all.unsqueeze(-1)).squeeze()  # [B, N, Q]
        sim_i2t, _ = sim_q2t.max(-1)
        sim_i2t = sim_i2t / self.temp  # [B, N]
        sim_t2q = torch.matmul(
            text_feat.unsqueeze(1).unsqueeze(1), image_feats_all.permute(0, 2, 1)
        ).squeeze()
        sim_t2i, _ = sim_t2q.max(-1)
        sim_t2i = sim_t2i / self.temp  # [B, N]

        image_id = samples.get("image_id")
        if image_id is None:  # every sample its own image: LAVIS's batch-position targets
            image_id = torch.arange(bs) + rank * bs
        image_id = torch.as_tensor(image_id, device=image.device).view(-1)
        all_image_ids = gather_no_grad(image_id)  # [N]
        targets = blip2_itc_targets(image_id, all_image_ids, rank * bs)
        loss_itc = (
            F.cross_entropy(sim_i2t, targets, label_smoothing=BLIP2_ITC_LABEL_SMOOTHING)
            + F.cross_entropy(sim_t2i, targets, label_smoothing=BLIP2_ITC_LABEL_SMOOTHING)
        ) / 2

        ###============== Image-text Matching ===================###
        text_input_ids_world = concat_all_gather(text_tokens.input_ids)
        text_attention_mask_world = concat_all_gather(text_tokens.attention_mask)
        image_embeds_world = gather_with_grad(image_embeds)  # LAVIS's all_gather_with_grad, or as is
        same_image = image_id.view(-1, 1) == all_image_ids.view(1, -1)  # [B, N]
        with torch.no_grad():
            # BlipRetrieval's mask: no pair of the same image is drawn as a negative (with distinct
            # ids: Blip2Qformer's fill_diagonal_ of this rank's block)
            weights_t2i = F.softmax(sim_t2i, dim=1) + 1e-4
            weights_t2i.masked_fill_(same_image, 0)
            weights_i2t = F.softmax(sim_i2t, dim=1) + 1e-4
            weights_i2t.masked_fill_(same_image, 0)

        # A caption whose global batch holds no other image has no negative to draw (torch.multinomial
        # over all-zero weights raises, UPSTREAMING 16): its row is left out; an image likewise.
        rows_t2i = [b for b, ok in enumerate((weights_t2i.sum(1) > 0).tolist()) if ok]
        rows_i2t = [b for b, ok in enumerate((weights_i2t.sum(1) > 0).tolist()) if ok]
        neg_images = [torch.multinomial(weights_t2i[b], 1).item() for b in rows_t2i]  # one per caption
        neg_texts = [torch.multinomial(weights_i2t[b], 1).item() for b in rows_i2t]  # one per image
        image_embeds_neg = _stack_rows(image_embeds_world, neg_images)
        text_ids_neg = _stack_rows(text_input_ids_world, neg_texts)
        text_atts_neg = _stack_rows(text_attention_mask_world, neg_texts)

        text_ids_all = torch.cat(
            [text_tokens.input_ids, _rows(text_tokens.input_ids, rows_t2i), text_ids_neg], dim=0
        )  # pos, pos, neg
        text_atts_all = torch.cat(
            [text_tokens.attention_mask, _rows(text_tokens.attention_mask, rows_t2i), text_atts_neg], dim=0
        )
        query_tokens_itm = self.query_tokens.expand(text_ids_all.shape[0], -1, -1)
        query_atts_itm = torch.ones(query_tokens_itm.size()[:-1], dtype=torch.long).to(image.device)
        attention_mask_all = torch.cat([query_atts_itm, text_atts_all], dim=1)
        image_embeds_all = torch.cat(
            [image_embeds, image_embeds_neg, _rows(image_embeds, rows_i2t)], dim=0
        )  # pos, neg, pos
        image_atts_all = torch.ones(image_embeds_all.size()[:-1], dtype=torch.long).to(image.device)
        output_itm = self.Qformer.bert(
            text_ids_all,
            query_embeds=query_tokens_itm,
            attention_mask=attention_mask_all,
            encoder_hidden_states=image_embeds_all,
            encoder_attention_mask=image_atts_all,
            return_dict=True,
        )
        vl_embeddings = output_itm.last_hidden_state[:, : query_tokens_itm.size(1), :]
        logits = self.itm_head(vl_embeddings).mean(dim=1)  # [3B, 2] (B + negatives)
        n_neg = len(rows_t2i) + len(rows_i2t)
        itm_labels = torch.cat(
            [torch.ones(bs, dtype=torch.long), torch.zeros(n_neg, dtype=torch.long)], dim=0
        ).to(image.device)
        loss_itm = F.cross_entropy(logits, itm_labels)

        ##================= Image Captioning ========================##
        loss = loss_itc + loss_itm
        loss_lm = lm_output = None
        if self.use_lm_loss:
            decoder_input_ids = text_tokens.input_ids.clone()
            decoder_input_ids[:, 0] = self.tokenizer.bos_token_id
            labels = decoder_input_ids.masked_fill(decoder_input_ids == self.tokenizer.pad_token_id, -100)
            query_atts = torch.ones(query_tokens.size()[:-1], dtype=torch.long).to(image.device)
            attention_mask = torch.cat([query_atts, text_tokens.attention_mask], dim=1)
            lm_output = self.Qformer(
                decoder_input_ids,
                attention_mask=attention_mask,
                past_key_values=query_output.past_key_values,
                return_dict=True,
                labels=labels,
            )
            loss_lm = lm_output.loss
            loss = loss + loss_lm

        device = image.device
        output = BlipOutput(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            loss_lm=loss_lm,
            intermediate_output=Blip2RetrievalIntermediateOutput(
                image_embeds=image_embeds,
                text_embeds=text_output.last_hidden_state,
                itm_logits=logits,
                itm_labels=itm_labels,
                decoder_output=lm_output,
                image_feats=image_feats,
                text_feat=text_feat,
                itm_negative_images=_scatter_rows(neg_images, rows_t2i, bs, device),
                itm_negative_texts=_scatter_rows(neg_texts, rows_i2t, bs, device),
            ),
        )
        return self.add_listwise_term(output, samples)


def _rows(tensor: Tensor, rows: list[int]) -> Tensor:
    """``tensor[rows]``; ``tensor`` itself when ``rows`` is every row (the ordinary batch: same graph)."""
    return tensor if len(rows) == len(tensor) else tensor[rows]


def _stack_rows(source: Tensor, picks: list[int]) -> Tensor:
    """``source``'s rows ``picks`` stacked as ``Blip2Qformer.forward`` stacks its negatives; empty when
    there are none."""
    return torch.stack([source[i] for i in picks], dim=0) if picks else source[:0]


def _scatter_rows(picks: list[int], rows: list[int], n: int, device) -> Tensor:
    """``[n]`` long: ``picks[k]`` at ``rows[k]``, ``-1`` in the rows that drew no negative."""
    out = torch.full((n,), -1, dtype=torch.long)
    out[rows] = torch.tensor(picks, dtype=torch.long)
    return out.to(device)


def _gather_detached(tensor: Tensor) -> Tensor:
    """``tensor`` of every rank along dim 0, without gradient: what LAVIS's ``concat_all_gather``
    returns under a process group (a fresh copy even for one rank), also without one."""
    return gather_no_grad(tensor.detach())
