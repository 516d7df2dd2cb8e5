"""``blip_retrieval_listwise``: LAVIS's BLIP retrieval model plus the listwise term."""

from __future__ import annotations

from lavis.models.blip_models.blip_outputs import BlipIntermediateOutput, BlipOutput, BlipSimilarity
from lavis.models.blip_models.blip_retrieval import BlipRetrieval

from ..registration import register_once
from .itm_fallback import OneImageBatchMixin
from .listwise_mixin import ListwiseRetrievalMixin


@register_once("model", "blip_retrieval_listwise")
class BlipRetrievalListwise(OneImageBatchMixin, ListwiseRetrievalMixin, BlipRetrieval):
    """BLIP retrieval with ``loss = loss_itc + loss_itm + weight * loss_listwise`` (``model.listwise``).

    State dicts are key-compatible with ``blip_retrieval`` in both directions. A batch of one image
    trains ITM on its positives only (:mod:`~lavis_listwise.models.itm_fallback`).
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "coco": "configs/models/blip_retrieval_listwise_coco.yaml",
        "flickr": "configs/models/blip_retrieval_listwise_flickr.yaml",
        "tiny": "configs/models/blip_retrieval_listwise_tiny.yaml",
        "small": "configs/models/blip_retrieval_listwise_small.yaml",
    }
    blip_special_tokens = True
    output_types = (BlipOutput, BlipSimilarity, BlipIntermediateOutput)

    def _itm_positive_output(self, text, text_embeds, image_embeds, image_atts):
        """``BlipRetrieval.forward``'s positive-pair pass: the caption ids with ``[ENC]`` first."""
        encoder_input_ids = text.input_ids.clone()
        encoder_input_ids[:, 0] = self.tokenizer.enc_token_id
        return self.text_encoder(
            encoder_input_ids,
            attention_mask=text.attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            return_dict=True,
        )

    # Replaces BlipRetrieval.from_config: custom encoders, model.listwise, local tokenizer (UPSTREAMING 8).
    @classmethod
    def from_config(cls, cfg=None):
        model = cls.build_from_config(
            cfg,
            queue_size=cfg.get("queue_size", 0),
            alpha=cfg.get("alpha", 0.4),
            embed_dim=cfg.get("embed_dim", 256),
            momentum=cfg.get("momentum", 0.995),
            negative_all_rank=cfg.get("negative_all_rank", False),
            max_txt_len=cfg.get("max_txt_len", 35),
        )
        model.reset_queue_ptr()
        return model
