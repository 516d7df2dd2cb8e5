"""``albef_retrieval_listwise``: LAVIS's ALBEF retrieval model plus the listwise term."""

from __future__ import annotations

from lavis.models.albef_models.albef_outputs import AlbefIntermediateOutput, AlbefOutput, AlbefSimilarity
from lavis.models.albef_models.albef_retrieval import AlbefRetrieval

from ..registration import register_once
from .itm_fallback import OneImageBatchMixin
from .listwise_mixin import ListwiseRetrievalMixin


@register_once("model", "albef_retrieval_listwise")
class AlbefRetrievalListwise(OneImageBatchMixin, ListwiseRetrievalMixin, AlbefRetrieval):
    """ALBEF retrieval with ``loss = loss_itc + loss_itm + weight * loss_listwise`` (``model.listwise``).

    State dicts are key-compatible with ``albef_retrieval`` in both directions. A batch of one image
    trains ITM on its positives only (:mod:`~lavis_listwise.models.itm_fallback`).
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "coco": "configs/models/albef_retrieval_listwise_coco.yaml",
        "flickr": "configs/models/albef_retrieval_listwise_flickr.yaml",
        "tiny": "configs/models/albef_retrieval_listwise_tiny.yaml",
        "small": "configs/models/albef_retrieval_listwise_small.yaml",
    }
    blip_special_tokens = False
    output_types = (AlbefOutput, AlbefSimilarity, AlbefIntermediateOutput)

    def _itm_positive_output(self, text, text_embeds, image_embeds, image_atts):
        """``AlbefRetrieval.forward``'s positive-pair pass: the fusion layers over the text outputs."""
        return self.text_encoder(
            encoder_embeds=text_embeds,
            attention_mask=text.attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            return_dict=True,
            mode="fusion",
        )

    # Replaces AlbefRetrieval.from_config: custom encoders, model.listwise, local tokenizer (UPSTREAMING 8).
    @classmethod
    def from_config(cls, cfg=None):
        return cls.build_from_config(
            cfg,
            queue_size=cfg.get("queue_size", 0),
            embed_dim=cfg.get("embed_dim", 256),
            temp=cfg.get("temp", 0.07),
            use_distill=cfg.get("use_distill", True),
            momentum=cfg.get("momentum", 0.995),
            alpha=cfg.get("alpha", 0.4),
            max_txt_len=cfg.get("max_txt_len", 30),
        )
