"""What the listwise BLIP, BLIP-2, ALBEF and CLIP retrieval models share: the listwise term on top of
their loss."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from listwise_ranking.errors import CheckpointError
from listwise_ranking.losses import bidirectional_listwise_loss
from listwise_ranking.relevance import (
    RelevanceMatrix,
    read_caption_embeddings,
    read_relevance_file,
    rsc_relevance_from_table,
)

from ..config import ListwiseConfig
from ..distributed import gather_no_grad, gather_with_grad
from ..evaluation import RerankView, ScoringOptions, itm_reranked_scores
from ..resources import config_path
from .checkpoints import (
    describe_keys,
    frozen_keys_left_out,
    frozen_parameter_names,
    load_configured_checkpoint,
    read_state_dict,
    refuse_unread_checkpoints,
    require_fit,
    resync_momentum_encoders,
)
from .encoders import build_text_encoder, build_vision_encoder, check_text_tower
from .tokenizer import build_bert_tokenizer

__all__ = ["ListwiseRetrievalMixin", "RSC_SAMPLE_KEYS", "same_image_targets"]

#: Keys the ``*_listwise`` dataset builders add to each training sample.
RSC_SAMPLE_KEYS = ("caption_index", "image_caption_index")


def same_image_targets(row_image_ids: Tensor, column_image_ids: Tensor) -> Tensor:
    """Contrastive targets that know image ids, as BLIP's retrieval ITC: ``[R, C]`` float, the columns
    of the same image as the row sharing 1 (``pos[a, b] = (id_a == id_b)``, each row normalised).

    Args:
        row_image_ids: ``[R]`` image id of each row's sample.
        column_image_ids: ``[C]`` image id of each column's sample (the global batch).
    """
    targets = (row_image_ids.view(-1, 1) == column_image_ids.view(1, -1)).to(torch.float32)
    return targets / targets.sum(1, keepdim=True)


class ListwiseRetrievalMixin:
    """Adds ``weight * L_list`` to a LAVIS retrieval model's ``forward``.

    ``L_list`` is the listwise loss (S-NDCG) in both directions over the cosine similarity of the
    grad-carrying ITC features of the global batch (gathered across ranks with gradient), against
    RSC relevance looked up in the caption-embedding table. The stock ``forward`` runs exactly once.
    The table is a plain attribute, never part of the state dict, so checkpoints stay
    key-compatible with LAVIS's.
    """

    #: BLIP adds [DEC]/[ENC] tokens to its tokenizer, ALBEF does not.
    blip_special_tokens = True

    def __init__(self, *args, listwise: ListwiseConfig | None = None, tokenizer: str | None = None, **kwargs):
        """``args``/``kwargs`` go to the LAVIS model; ``listwise`` is ``model.listwise``, ``tokenizer``
        is ``model.tokenizer``."""
        # Set before nn.Module.__init__ runs: the LAVIS __init__ calls self.init_tokenizer().
        object.__setattr__(self, "_tokenizer_source", tokenizer)
        super().__init__(*args, **kwargs)
        self.listwise_cfg = listwise or ListwiseConfig()
        self.listwise_loss = self.listwise_cfg.build_loss()  # from the loss registry
        self._caption_embeddings: Tensor | None = None
        self._train_relevance: RelevanceMatrix | None = None  # model.listwise.relevance.relevance_file

    @classmethod
    def build_from_config(cls, cfg, **model_kwargs):
        """What the LAVIS ``from_config`` methods do, plus ``model.listwise`` / ``model.tokenizer``: the
        encoders from ``cfg`` (``vit_type: custom``, ``text_config``), the model with the
        architecture's own ``model_kwargs``, then the configured checkpoint."""
        refuse_unread_checkpoints(cls, cfg)  # before building: a config mistake costs no model
        image_encoder = build_vision_encoder(cfg)
        model = cls(
            image_encoder=image_encoder,
            text_encoder=build_text_encoder(cfg, image_encoder.vision_width),
            listwise=ListwiseConfig.from_cfg(cfg.get("listwise")),
            tokenizer=cfg.get("tokenizer"),
            **model_kwargs,
        )
        load_configured_checkpoint(model, cfg)
        return model

    @classmethod
    def default_config_path(cls, model_type: str) -> str:
        """The plugin's model YAMLs live under ``configs/``, not inside LAVIS."""
        return config_path(cls.PRETRAINED_MODEL_CONFIG_DICT[model_type])

    # Replaces BaseModel.load_checkpoint (model.finetuned): LAVIS loads with strict=False and only logs
    # the missing keys, so another architecture's checkpoint loaded nothing, silently (UPSTREAMING 14).
    def load_checkpoint(self, url_or_filename: str):
        """Load ``model.finetuned`` (``{"model": state dict}`` or a bare state dict), which must hold
        exactly this model's keys, with two named exceptions: the frozen parameters, when the checkpoint
        holds none of them (LAVIS's runner drops them: BLIP/ALBEF's momentum encoders, which are then
        copied from the loaded encoders; BLIP-2's frozen ViT), and BERT's ``position_ids`` buffers.

        Raises:
            CheckpointError naming ``model.finetuned``, the file and the first missing, unexpected or
            differently shaped keys; or the file's problem when it is not a torch checkpoint.
        """
        state_dict = read_state_dict(url_or_filename, "model.finetuned")
        left_out = frozen_keys_left_out(self, state_dict)
        require_fit(
            self, state_dict, "model.finetuned", str(url_or_filename), may_lack=left_out,
            hint=" (model.arch / model.model_type)",
        )  # fmt: skip
        loaded = self.load_state_dict(state_dict, strict=False)
        resync_momentum_encoders(self, left_out)
        logging.info("load checkpoint from %s", url_or_filename)
        return loaded

    def pretrained_may_lack(self) -> tuple[str, ...]:
        """Hook: prefixes of trainable parameters a ``model.pretrained`` checkpoint may lack because they
        come from elsewhere (BLIP-2 with LAVIS's ViT: its weights are the ViT's own download)."""
        return ()

    # Wraps BlipBase/AlbefBase/Blip2Base.load_from_pretrained (model.pretrained): they load with
    # strict=False and drop tensors of another shape silently (UPSTREAMING 14).
    def load_from_pretrained(self, url_or_filename: str, **kwargs):
        """LAVIS's ``load_from_pretrained`` (position-embedding interpolation, ALBEF's key renaming),
        then a check that it loaded every trainable parameter. A pre-training checkpoint may hold other
        heads (BLIP's text decoder: extra keys are fine) and lack the retrieval model's buffers (queues,
        their pointers), its frozen parameters, and :meth:`pretrained_may_lack`.

        Raises:
            CheckpointError naming ``model.pretrained`` and the file.
        """
        from urllib.error import URLError

        try:
            loaded = super().load_from_pretrained(url_or_filename, **kwargs)
        except (URLError, CheckpointError):
            raise
        except Exception as err:  # torch.load on a bad file, a state dict without 'model', size mismatch
            text = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CheckpointError(
                f"model.pretrained: {str(url_or_filename)!r} cannot be loaded into this model "
                f"({type(err).__name__}: {text})"
            ) from None
        params = {name for name, _ in self.named_parameters()} - frozen_parameter_names(self)
        skip = self.pretrained_may_lack()
        missing = [k for k in loaded.missing_keys if k in params and not (skip and k.startswith(skip))]
        if missing:
            raise CheckpointError(
                f"model.pretrained: {url_or_filename} does not fit this model (model.arch / "
                "model.model_type): it lacks (or has in another shape) trainable parameters: "
                f"{describe_keys(missing)}"
            )
        return loaded

    # Replaces BlipBase/AlbefBase.init_tokenizer: it downloads bert-base-uncased (UPSTREAMING 8).
    @classmethod
    def check_model_config(cls, model_cfg) -> None:
        """This arch's own ``model.*`` values, checked when the config is read, before anything is built
        (:func:`~lavis_listwise.config.check_settings`): the BERT text tower's keys and ``text_init``."""
        check_text_tower(model_cfg)

    def init_tokenizer(self):
        """Offline tokenizer from ``model.tokenizer`` (LAVIS's is a classmethod that downloads)."""
        return build_bert_tokenizer(self._tokenizer_source, self.blip_special_tokens)

    def set_caption_embeddings(self, table: Tensor) -> None:
        """Caption-embedding table ``[T, D]`` indexed by the samples' ``caption_index``; kept on CPU."""
        if table.dim() != 2:
            raise ValueError(f"caption embeddings must be [T, D], got {tuple(table.shape)}")
        self._caption_embeddings = table.detach().to("cpu", torch.float16)

    @property
    def caption_embeddings(self) -> Tensor | None:
        return self._caption_embeddings

    def load_precomputed_relevance(self, n_captions: int, n_images: int) -> bool:
        """Load ``model.listwise.relevance.embeddings`` or ``relevance_file`` for a training split of
        ``n_captions`` captions and ``n_images`` images; ``False`` if neither is set (RSC from the
        encoder is then needed).

        Raises:
            DataError naming the key and the file when it does not fit the training split.
        """
        relevance = self.listwise_cfg.relevance
        key = "model.listwise.relevance"
        if relevance.embeddings is not None:
            self.set_caption_embeddings(
                read_caption_embeddings(relevance.embeddings, n_captions, f"{key}.embeddings")
            )
            return True
        if relevance.relevance_file is not None:
            self._train_relevance = read_relevance_file(
                relevance.relevance_file, n_images, n_captions, f"{key}.relevance_file", dense=False
            )
            return True
        return False

    def batch_relevance(self, caption_index: Tensor, image_caption_index: Tensor, image_id: Tensor) -> Tensor:
        """Relevance ``[B, B]`` of sample ``b``'s caption to sample ``a``'s image: RSC shaped by
        ``model.listwise.relevance`` (``floor`` / ``sharpen``), or looked up in its ``relevance_file``;
        same-image pairs are 1 either way.

        Args:
            caption_index: ``[B]`` row of each sample's caption in the table.
            image_caption_index: ``[B, K]`` rows of each sample's image's captions, ``-1`` padded.
            image_id: ``[B]`` image ids; equal ids are positives.
        """
        positive = image_id.view(-1, 1) == image_id.view(1, -1)
        if self._train_relevance is not None:
            looked_up = self._train_relevance.lookup(image_id, caption_index).to(image_id.device)
            return looked_up.masked_fill_(positive, 1.0)
        table = self._caption_embeddings
        if table is None:
            raise RuntimeError(
                "caption embeddings are not set: train through runner_listwise, or call "
                "model.set_caption_embeddings(table) first"
            )
        shaping = self.listwise_cfg.relevance.shaping
        return rsc_relevance_from_table(table, image_caption_index, caption_index, positive, **shaping)

    def listwise_term(self, image_feat: Tensor, text_feat: Tensor, samples: dict) -> Tensor:
        """Bidirectional listwise loss of the global batch.

        Args:
            image_feat: ``[B, E]`` normalised ITC image features of this rank (with gradient); any
                ``[B, ...]`` shape that :meth:`listwise_similarity` takes (BLIP-2: ``[B, Q, E]``).
            text_feat: ``[B, E]`` normalised ITC text features of this rank (with gradient).
            samples: the batch; needs ``image_id`` and :data:`RSC_SAMPLE_KEYS`.
        """
        missing = [k for k in RSC_SAMPLE_KEYS if k not in samples]
        if missing:
            raise KeyError(
                f"training samples lack {missing}: the listwise loss needs the *_listwise dataset "
                "builders (coco_retrieval_listwise, flickr30k_listwise, retrieval_listwise_json)"
            )
        image_all = gather_with_grad(image_feat)
        text_all = gather_with_grad(text_feat)
        relevance = self.batch_relevance(
            gather_no_grad(samples["caption_index"].to(image_feat.device)),
            gather_no_grad(samples["image_caption_index"].to(image_feat.device)),
            gather_no_grad(samples["image_id"].to(image_feat.device)),
        ).to(image_all.device)
        sim = self.listwise_similarity(image_all, text_all)
        # the loss's arguments were checked when it was built; per step, the task checks only that
        # the final loss is finite (one host sync for all logged terms)
        loss_fn = getattr(self.listwise_loss, "unchecked", self.listwise_loss)
        return bidirectional_listwise_loss(loss_fn, sim, relevance, self.listwise_cfg.reference_compat)

    def retrieval_scores(self, data_loader, views: list[RerankView], options: ScoringOptions):
        """Hook: the evaluation's scores, ``[(score_i2t [I_v, T_v], score_t2i [T_v, I_v])]`` float32
        numpy arrays, one pair per view (the whole split, COCO 1K folds), called by the task.

        BLIP/ALBEF: ITC top-``k_test`` re-ranked by ITM, LAVIS's ``compute_sim_matrix`` with far less
        ITM work (:func:`~lavis_listwise.evaluation.itm_reranked_scores`). An arch scored otherwise
        (CLIP: ITC alone; BLIP-2: its Q-Former) overrides this.
        """
        return itm_reranked_scores(self, data_loader, views, options)

    def listwise_similarity(self, image_all: Tensor, text_all: Tensor) -> Tensor:
        """Hook: the ``[N, N]`` similarity the listwise term ranks by, of image ``a`` and caption ``b``
        of the global batch, from the gathered :meth:`listwise_features` (with gradient).

        BLIP/ALBEF/CLIP: the cosine similarity of ``[N, E]`` image and ``[N, E]`` text features. A
        model whose ITC similarity is not one dot product (BLIP-2: the maximum over its query tokens)
        overrides this.
        """
        return image_all @ text_all.t()

    def listwise_features(self, output) -> tuple[Tensor, Tensor]:
        """Hook: the grad-carrying normalised ITC features ``([B, E] image, [B, E] text)`` of this rank,
        from the model's ``forward`` output.

        BLIP/ALBEF: the same expressions as their stock ``forward``'s ITC features, which it does not
        return. A model whose output carries them (CLIP) overrides this.
        """
        inter = output.intermediate_output
        image_feat = F.normalize(self.vision_proj(inter.image_embeds[:, 0, :]), dim=-1)
        text_feat = F.normalize(self.text_proj(inter.text_embeds[:, 0, :]), dim=-1)
        return image_feat, text_feat

    def add_listwise_term(self, output, samples: dict):
        """``output`` (the model's pairwise losses) with ``loss_listwise`` added and ``loss`` combined
        as ``model.listwise`` says; ``weight: 0`` leaves ``loss`` untouched."""
        cfg = self.listwise_cfg
        if cfg.weight == 0:
            # The stock model, untouched: same losses bit for bit.
            output["loss_listwise"] = torch.zeros((), device=output.loss.device)
            return output
        image_feat, text_feat = self.listwise_features(output)
        loss_listwise = self.listwise_term(image_feat, text_feat, samples)
        output["loss"] = cfg.combined_loss(output.loss, loss_listwise)
        output["loss_listwise"] = loss_listwise
        return output

    def forward(self, samples: dict):
        return self.add_listwise_term(super().forward(samples), samples)
