"""LAVIS's own retrieval models with a listwise model's weights, built offline: the reference for the
``weight: 0`` parity and state-dict contracts (``tests/test_arch_contracts.py``), the evaluation tests
and ``benchmarks/bench_train_step.py``."""

from __future__ import annotations

import copy
import functools
import logging

import torch
from lavis.models.blip2_models.blip2 import LayerNorm
from lavis.models.blip2_models.blip2_qformer import Blip2Qformer
from lavis.models.blip2_models.Qformer import BertLMHeadModel
from torch import nn

from lavis_listwise.models.tokenizer import build_bert_tokenizer

__all__ = ["blip2_stock_twin", "clip_stock_twin", "stock_twin"]


def stock_twin(model):
    """LAVIS's stock retrieval model (``BlipRetrieval`` or ``AlbefRetrieval``) with ``model``'s weights.

    Only the tokenizer differs from a plain LAVIS construction: it comes from the same offline
    vocabulary as ``model``'s, so the twin builds without network. Used to check ``weight: 0``
    parity and to time the listwise term against the stock step.
    """
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


def blip2_stock_twin(model):
    """LAVIS's own ``Blip2Qformer`` with ``model``'s architecture and weights (loaded strictly).

    Only its three constructors are replaced (tokenizer, ViT and Q-Former config come from ``model``,
    so the twin builds offline); ``forward``, ``compute_itm``, ``compute_sim_matrix`` and every other
    method are LAVIS's. Used to check ``weight: 0`` parity and the evaluation scores.
    """
    source = model._tokenizer_source
    vision_encoder = copy.deepcopy(model.visual_encoder)
    qformer_config = copy.deepcopy(model.Qformer.config)

    class OfflineBlip2Qformer(Blip2Qformer):
        @classmethod
        def init_tokenizer(cls):
            tokenizer = build_bert_tokenizer(source, blip_special_tokens=False)
            tokenizer.add_special_tokens({"bos_token": "[DEC]"})
            return tokenizer

        @classmethod
        def init_vision_encoder(cls, model_name, img_size, drop_path_rate, use_grad_checkpoint, precision):
            return vision_encoder, LayerNorm(vision_encoder.num_features)

        @classmethod
        def init_Qformer(cls, num_query_token, vision_width, cross_attention_freq=2):
            config = copy.deepcopy(qformer_config)  # already sized to the tokenizer: resizing is a no-op
            qformer = BertLMHeadModel(config)
            return qformer, nn.Parameter(torch.zeros(1, num_query_token, config.hidden_size))

    freeze_vit = not any(p.requires_grad for p in model.visual_encoder.parameters())
    stock = OfflineBlip2Qformer(
        vit_model="custom",
        freeze_vit=freeze_vit,
        num_query_token=model.query_tokens.shape[1],
        cross_attention_freq=model.Qformer.config.cross_attention_freq,
        embed_dim=model.vision_proj.out_features,
        max_txt_len=model.max_txt_len,
    )
    stock.load_state_dict(model.state_dict())  # strict: the listwise model adds no keys
    logging.debug("blip2_stock_twin: LAVIS Blip2Qformer with the listwise model's weights")
    return stock.to(model.device)


def clip_stock_twin(model, model_config):
    """LAVIS's own ``CLIP`` with ``model``'s architecture and weights (loaded strictly).

    ``model_config`` is the architecture ``model`` was built from (its ``model.model_config``, or
    ``model_type`` when that is empty: CLIP keeps no copy of it); the activation follows ``model``'s.
    One attribute differs from a plain ``CLIP(**arch)``: the tokenizer, still LAVIS's ``tokenize``,
    pads to the model's context length, where LAVIS's ``forward`` pads to 77, which a model with fewer
    positional embeddings (the tiny one has 32) cannot take. ``forward`` and its loss (open_clip's
    ``ClipLoss``, batch-position labels) are LAVIS's.
    """
    from lavis.models.clip_models.model import CLIP, QuickGELU
    from lavis.models.clip_models.tokenizer import tokenize

    from lavis_listwise.models.clip_retrieval_listwise import clip_architecture

    arch = clip_architecture(model_config)
    arch["quick_gelu"] = isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    stock = CLIP(**arch)
    stock.load_state_dict(model.state_dict())  # strict: the listwise model adds no keys
    stock.tokenizer = functools.partial(tokenize, context_length=model.context_length)
    return stock.to(model.device)
