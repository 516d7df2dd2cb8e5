"""BLIP/ALBEF training steps on a batch whose captions all belong to one image.

LAVIS's ``BlipRetrieval.forward`` and ``AlbefRetrieval.forward`` draw each ITM hard negative with
``torch.multinomial`` over the batch's other images (``negative_all_rank``: the global batch's); when
the batch holds a single image every weight is masked to 0 and ``torch.multinomial`` raises
"invalid multinomial distribution" (UPSTREAMING 16). That batch happens at random with small
``run.batch_size_train``, always with a one-image dataset, and on a rank whose share of a tiny dataset
is one image. There is no negative to draw, so such a step trains ITM on its positive pairs only
(``loss_itm`` is their cross-entropy); ITC, the momentum update and the queues are exactly the stock
step's. Every other batch goes through the stock ``forward``, untouched (``weight: 0`` stays LAVIS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lavis.models.base_model import concat_all_gather
from torch import Tensor

from ..distributed import gather_no_grad

__all__ = ["OneImageBatchMixin"]


class OneImageBatchMixin:
    """Routes a training batch without any ITM negative to :meth:`forward_without_itm_negatives`.

    Placed before :class:`~lavis_listwise.models.ListwiseRetrievalMixin` in the bases of the BLIP and
    ALBEF listwise models; they provide :meth:`_itm_positive_output` and ``output_types``.
    """

    #: ``(Output, Similarity, IntermediateOutput)`` dataclasses of the architecture's stock forward.
    output_types: tuple = ()

    def batch_has_itm_negatives(self, samples: dict) -> bool:
        """Whether the images the stock ``forward`` draws ITM negatives from (this rank's batch, or the
        global batch with ``negative_all_rank``) are of at least two images. A collective when
        ``negative_all_rank`` is set (every rank calls it every step)."""
        ids = torch.as_tensor(samples["image_id"]).view(-1)
        if getattr(self, "negative_all_rank", False):
            ids = gather_no_grad(ids.to(self.device))
        return bool((ids != ids[0]).any())

    def forward(self, samples: dict):
        if self.batch_has_itm_negatives(samples):
            return super().forward(samples)  # the stock step (plus the listwise term)
        return self.add_listwise_term(self.forward_without_itm_negatives(samples), samples)

    def _itm_positive_output(self, text, text_embeds: Tensor, image_embeds: Tensor, image_atts: Tensor):
        """Hook: the stock forward's cross-encoder pass over the positive pairs."""
        raise NotImplementedError

    # Replaces BlipRetrieval.forward / AlbefRetrieval.forward for one-image batches only: their ITM
    # negative sampling cannot handle them (torch.multinomial over all-zero weights, UPSTREAMING 16).
    def forward_without_itm_negatives(self, samples: dict):
        """The stock step (ITC with momentum distillation and queues, same collectives in the same
        order) with ITM on the positive pairs only: the batch has no other image to draw from."""
        output_cls, similarity_cls, intermediate_cls = self.output_types
        image = samples["image"]
        caption = samples["text_input"]
        idx = samples["image_id"]
        use_distill = getattr(self, "use_distill", True)  # ALBEF's switch; BLIP always distils

        alpha = self.alpha * self._rampup_factor(
            epoch=samples["epoch"], iters=samples["iters"], num_iters_per_epoch=samples["num_iters_per_epoch"]
        )
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)

        image_embeds = self.visual_encoder.forward_features(image)
        image_atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long).to(image.device)
        image_feat = F.normalize(self.vision_proj(image_embeds[:, 0, :]), dim=-1)
        text = self.tokenizer(
            caption, padding="max_length", truncation=True, max_length=self.max_txt_len, return_tensors="pt"
        ).to(image.device)
        text_output = self.text_encoder.forward_text(text)
        text_embeds = text_output.last_hidden_state
        text_feat = F.normalize(self.text_proj(text_embeds[:, 0, :]), dim=-1)

        # Image-text contrastive, as the stock forward
        idx = idx.view(-1, 1)
        idx_all = torch.cat([idx.t(), self.idx_queue.clone().detach()], dim=1)
        pos_idx = torch.eq(idx, idx_all).float()
        sim_targets = pos_idx / pos_idx.sum(1, keepdim=True)
        sim_i2t_m = sim_t2i_m = None
        sim_i2t_targets = sim_t2i_targets = sim_targets
        with torch.no_grad():
            self._momentum_update()
            image_embeds_m = self.visual_encoder_m(image)
            image_feat_m = F.normalize(self.vision_proj_m(image_embeds_m[:, 0, :]), dim=-1)
            image_feat_m_all = torch.cat([image_feat_m.t(), self.image_queue.clone().detach()], dim=1)
            text_output_m = self.text_encoder_m.forward_text(text)
            text_embeds_m = text_output_m.last_hidden_state
            text_feat_m = F.normalize(self.text_proj_m(text_embeds_m[:, 0, :]), dim=-1)
            text_feat_m_all = torch.cat([text_feat_m.t(), self.text_queue.clone().detach()], dim=1)
            if use_distill:
                sim_i2t_m = image_feat_m @ text_feat_m_all / self.temp
                sim_t2i_m = text_feat_m @ image_feat_m_all / self.temp
                sim_i2t_targets = alpha * F.softmax(sim_i2t_m, dim=1) + (1 - alpha) * sim_targets
                sim_t2i_targets = alpha * F.softmax(sim_t2i_m, dim=1) + (1 - alpha) * sim_targets

        sim_i2t = image_feat @ text_feat_m_all / self.temp
        sim_t2i = text_feat @ image_feat_m_all / self.temp
        loss_i2t = -torch.sum(F.log_softmax(sim_i2t, dim=1) * sim_i2t_targets, dim=1).mean()
        loss_t2i = -torch.sum(F.log_softmax(sim_t2i, dim=1) * sim_t2i_targets, dim=1).mean()
        loss_itc = (loss_i2t + loss_t2i) / 2
        self._dequeue_and_enqueue(image_feat_m, text_feat_m, idx)

        # Image-text matching on the positive pairs: no other image to draw a negative from
        output_pos = self._itm_positive_output(text, text_embeds, image_embeds, image_atts)
        if hasattr(self, "negative_all_rank"):
            concat_all_gather(idx)  # BLIP's forward gathers the ids here on every rank: keep the collective
        bs = image.size(0)
        itm_logits = self.itm_head(output_pos.last_hidden_state[:, 0, :])
        itm_labels = torch.ones(bs, dtype=torch.long, device=image.device)
        loss_itm = F.cross_entropy(itm_logits, itm_labels)

        return output_cls(
            loss=loss_itc + loss_itm,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            sims=similarity_cls(
                sim_i2t=sim_i2t,
                sim_t2i=sim_t2i,
                sim_i2t_m=sim_i2t_m,
                sim_t2i_m=sim_t2i_m,
                sim_i2t_targets=sim_i2t_targets,
                sim_t2i_targets=sim_t2i_targets,
            ),
            intermediate_output=intermediate_cls(
                image_embeds=image_embeds,
                image_embeds_m=image_embeds_m,
                text_embeds=text_embeds,
                text_embeds_m=text_embeds_m,
                encoder_output=output_pos,
                itm_logits=itm_logits,
                itm_labels=itm_labels,
            ),
        )
