"""Image and text features of an evaluation split for the fast ITM re-ranking (:mod:`.rerank`), and
the ITC-only scores of dual encoders without an ITM head (CLIP, :func:`compute_sim_matrix_itc`).

The ITC pass of LAVIS's ``compute_sim_matrix`` (``lavis/models/albef_models/__init__.py``): every
caption through the text encoder (padded to LAVIS's 35 tokens, so the candidates are LAVIS's), every
image through the visual encoder, the cosine similarity of all pairs; plus what the ITM pass needs
(token ids cut to the longest caption, the image tokens, ALBEF's text-only hidden states). Under
``torch.distributed`` every rank encodes only its share of images and captions.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from transformers import BatchEncoding

from ..distributed import gather_shards, rank_and_world, shard_range

__all__ = [
    "LAVIS_EVAL_MAX_TXT_LEN",
    "RetrievalFeatures",
    "amp_dtype",
    "compute_sim_matrix_itc",
    "encode_itc_similarity",
    "encode_retrieval_features",
    "eval_autocast",
    "first_cross_layer",
    "reranks_with_itm",
    "scores_with_lavis_sim_matrix",
]

#: LAVIS's compute_sim_matrix tokenizes evaluation captions to this length (hard-coded there).
LAVIS_EVAL_MAX_TXT_LEN = 35
#: Text batch of the ITC pass, as in LAVIS.
_TEXT_BATCH = 256


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 (fp16 where the GPU lacks it) under ``run.amp`` on CUDA; ``None`` otherwise."""
    if not (amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def eval_autocast(device: torch.device, enabled: bool):
    """The evaluation's autocast context: :func:`amp_dtype` on CUDA under ``run.amp``, else off."""
    dtype = amp_dtype(device, enabled)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=dtype)


@dataclass
class RetrievalFeatures:
    """Everything the ITM pass needs, computed once per evaluation.

    Attributes:
        sims: ``[n_img, n_txt]`` ITC cosine similarity (all ranks hold all of it).
        image_feats: ``[n_own, P, D]`` visual-encoder tokens of this rank's images.
        image_range: ``(start, end)`` of this rank's images.
        text_ids: ``[n_txt, L]`` ITM token ids (BLIP: ``[ENC]`` first), ``L`` the longest caption (<= 35).
        text_mask: ``[n_txt, L]`` attention mask.
        text_states: ``[n_txt, L, H]`` ALBEF hidden states after the text-only layers; ``None`` for BLIP.
        first_fusion_layer: index of the first text-encoder layer the ITM pass runs.
    """

    sims: Tensor
    image_feats: Tensor
    image_range: tuple[int, int]
    text_ids: Tensor
    text_mask: Tensor
    text_states: Tensor | None
    first_fusion_layer: int


def first_cross_layer(text_encoder) -> int:
    """Index of the text encoder's first cross-attention layer (ALBEF: ``fusion_layer``; BLIP: 0).

    Raises:
        ValueError for relative position embeddings or a text encoder without cross-attention.
    """
    kind = getattr(text_encoder.config, "position_embedding_type", "absolute")
    if kind != "absolute":  # relative positions enter LAVIS's attention scores; not reproduced here
        raise ValueError(
            f"the fast ITM evaluation supports absolute position embeddings, the text encoder has {kind!r}: "
            "set run.itm_eval: stock"
        )
    layers = text_encoder.encoder.layer
    for i, layer in enumerate(layers):
        if hasattr(layer, "crossattention"):
            return i
    raise ValueError(
        "the model's text encoder has no cross-attention layer: it has no ITM head to re-rank with"
    )


def _image_loader(data_loader, start: int, end: int) -> DataLoader:
    """The evaluation loader's settings over images ``[start, end)``, in order.

    Built anew so that a distributed sampler on the given loader (LAVIS's ``use_dist_eval_sampler``)
    cannot drop or repeat images, and so each rank reads only its share.
    """
    base = getattr(data_loader, "loader", data_loader)  # LAVIS's PrefetchLoader wraps a DataLoader
    return DataLoader(
        Subset(data_loader.dataset, range(start, end)),
        batch_size=base.batch_size or 64,
        num_workers=base.num_workers,
        collate_fn=base.collate_fn,
        shuffle=False,
        pin_memory=torch.cuda.is_available(),
    )


def _feature_home(device: torch.device, nbytes: int, feature_device: str) -> torch.device:
    """Where to keep the image features: the compute device when they fit comfortably."""
    if feature_device == "cpu":
        return torch.device("cpu")
    if feature_device == "device" or device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes < 0.5 * free else torch.device("cpu")


@torch.no_grad()
def encode_retrieval_features(
    model, data_loader, amp: bool = False, feature_device: str = "auto"
) -> RetrievalFeatures:
    """ITC features of the whole split, split across ranks, plus the ITM inputs.

    Args:
        model: a LAVIS ``BlipRetrieval`` / ``AlbefRetrieval`` (or a listwise subclass).
        data_loader: the evaluation loader; its dataset has ``text``, ``image`` and ``__getitem__``
            returning ``{"image": ...}``.
        amp: autocast (bf16 where supported, else fp16) on CUDA.
        feature_device: ``auto`` (the model's device when the features use < half of the free
            memory), ``device`` or ``cpu``.
    """
    device = model.device
    rank, world = rank_and_world()
    dataset = data_loader.dataset
    texts, n_img = list(dataset.text), len(dataset.image)
    n_txt = len(texts)
    text_encoder = model.text_encoder
    first_fusion = first_cross_layer(text_encoder)
    keep_states = first_fusion > 0  # ALBEF: the text-only layers' output feeds the fusion layers

    # Captions: every rank tokenizes all (cheap, and the ITM pass needs any caption's ids); each
    # rank runs the text encoder on its share only.
    tok = model.tokenizer(
        texts, padding="max_length", truncation=True, max_length=LAVIS_EVAL_MAX_TXT_LEN, return_tensors="pt"
    )
    # The ITC pass pads to 35 as LAVIS does (same features, so the same candidates); what the ITM
    # pass keeps is cut to the longest caption of the split.
    longest = int(tok.attention_mask.sum(1).max())
    t0, t1 = shard_range(n_txt, rank, world)
    text_embeds, text_states = [], []
    with eval_autocast(device, amp):
        for s in range(t0, t1, _TEXT_BATCH):
            e = min(t1, s + _TEXT_BATCH)
            out = text_encoder.forward_text(BatchEncoding({k: v[s:e].to(device) for k, v in tok.items()}))
            text_embeds.append(F.normalize(model.text_proj(out.last_hidden_state[:, 0, :]), dim=-1))
            if keep_states:
                text_states.append(out.last_hidden_state[:, :longest])
    embed_dim = model.text_proj.out_features
    text_embeds = gather_shards(_cat_or_empty(text_embeds, (0, embed_dim), device), n_txt)
    states = None
    if keep_states:
        hidden = text_encoder.config.hidden_size
        states = gather_shards(_cat_or_empty(text_states, (0, longest, hidden), device), n_txt)

    ids = tok.input_ids[:, :longest].clone()
    if hasattr(model.tokenizer, "enc_token_id"):  # BLIP's ITM input starts with [ENC], as in LAVIS
        ids[:, 0] = model.tokenizer.enc_token_id

    # Images: this rank's share only.
    i0, i1 = shard_range(n_img, rank, world)
    feats, image_embeds = None, []
    filled = 0
    with eval_autocast(device, amp):
        for samples in _image_loader(data_loader, i0, i1):
            image = samples["image"].to(device, non_blocking=True)
            feat = model.visual_encoder.forward_features(image)
            image_embeds.append(F.normalize(model.vision_proj(feat[:, 0, :]), dim=-1))
            if feats is None:
                # Under amp the ITM pass reads them in the autocast dtype anyway: store them so (half
                # the memory of fp32, bit-identical K/V inputs).
                dtype = amp_dtype(device, amp) or feat.dtype
                shape = (i1 - i0,) + tuple(feat.shape[1:])
                nbytes = math.prod(shape) * dtype.itemsize
                feats = torch.empty(shape, dtype=dtype, device=_feature_home(device, nbytes, feature_device))
            feats[filled : filled + len(feat)] = feat
            filled += len(feat)
    if feats is None:  # a rank with no images
        feats = torch.empty((0, 1, model.vision_proj.in_features), device=device)
    image_embeds = gather_shards(_cat_or_empty(image_embeds, (0, embed_dim), device), n_img)

    sims = image_embeds @ text_embeds.t()
    return RetrievalFeatures(
        sims=sims.float(),
        image_feats=feats,
        image_range=(i0, i1),
        text_ids=ids,
        text_mask=tok.attention_mask[:, :longest],
        text_states=states,
        first_fusion_layer=first_fusion,
    )


def reranks_with_itm(model) -> bool:
    """Whether ``model`` has an ITM head to re-rank ITC candidates with (BLIP, ALBEF: ``itm_head``).
    Dual encoders (LAVIS's CLIP) do not: their ITC similarity is the retrieval score."""
    return hasattr(model, "itm_head")


def scores_with_lavis_sim_matrix(model) -> bool:
    """Whether ``model`` is scored by its own LAVIS ``compute_sim_matrix``, which the fast path cannot
    reproduce: BLIP-2's Q-Former (``Blip2Qformer`` and ``blip2_retrieval_listwise``), whose ITC is the
    maximum over query tokens and whose ITM runs the query tokens through the Q-Former, not a text
    encoder cross-attending to image tokens."""
    from lavis.models.blip2_models.blip2_qformer import Blip2Qformer

    return isinstance(model, Blip2Qformer)


@torch.no_grad()
def encode_itc_similarity(model, data_loader, amp: bool = False) -> Tensor:
    """``[n_img, n_txt]`` cosine similarity of a split through LAVIS's CLIP API, split across ranks.

    What LAVIS's ``CLIP.compute_sim_matrix`` computes (``tokenizer`` -> ``encode_text``, and
    ``encode_image``, each L2-normalised), except that under ``torch.distributed`` every rank encodes
    only its share of captions and images (from its own loader, so a distributed sampler on
    ``data_loader`` can neither drop nor repeat images) and the features are gathered.

    Args:
        model: has ``tokenizer(list[str]) -> [n, L]`` ids, ``encode_text([n, L]) -> [n, E]``,
            ``encode_image([b, 3, H, W]) -> [b, E]`` and ``text_projection`` ``[W, E]``.
        data_loader: the evaluation loader; its dataset has ``text``, ``image`` and ``__getitem__``
            returning ``{"image": ...}``.
        amp: autocast (bf16 where supported, else fp16) on CUDA.

    Returns: float32 similarity on the model's device, the same on every rank.
    """
    device = model.device
    rank, world = rank_and_world()
    dataset = data_loader.dataset
    texts, n_img = list(dataset.text), len(dataset.image)
    embed_dim = model.text_projection.shape[-1]
    t0, t1 = shard_range(len(texts), rank, world)
    text_embeds, image_embeds = [], []
    with eval_autocast(device, amp):
        for s in range(t0, t1, _TEXT_BATCH):
            ids = model.tokenizer(texts[s : min(t1, s + _TEXT_BATCH)]).to(device)
            text_embeds.append(F.normalize(model.encode_text(ids).float(), dim=-1))
        i0, i1 = shard_range(n_img, rank, world)
        for samples in _image_loader(data_loader, i0, i1):
            image = samples["image"].to(device, non_blocking=True)
            image_embeds.append(F.normalize(model.encode_image(image).float(), dim=-1))
    text_all = gather_shards(_cat_or_empty(text_embeds, (0, embed_dim), device), len(texts))
    image_all = gather_shards(_cat_or_empty(image_embeds, (0, embed_dim), device), n_img)
    return image_all @ text_all.t()


def compute_sim_matrix_itc(
    model, data_loader, views=None, amp: bool = False
) -> list[tuple[np.ndarray, np.ndarray]] | tuple[np.ndarray, np.ndarray]:
    """The scores of a model without ITM re-ranking: its ITC similarity (:func:`encode_itc_similarity`).

    Same return convention as :func:`~lavis_listwise.evaluation.compute_sim_matrix_fast`: with
    ``views=None`` ``(score_i2t [n_img, n_txt], score_t2i [n_txt, n_img])`` float32 numpy arrays of
    the whole split; otherwise one such pair per view (a :class:`~.rerank.RerankView`, e.g. a COCO 1K
    fold), the view's rows and columns of the one similarity matrix (nothing is re-ranked, so a
    fold's scores are those of the whole split).
    """
    start = time.time()
    was_training = model.training
    model.eval()
    try:
        sims = encode_itc_similarity(model, data_loader, amp=amp).cpu()
    finally:
        model.train(was_training)
    logging.info("Evaluation (ITC only, no ITM re-ranking) took %.1f s", time.time() - start)
    if views is None:
        return sims.numpy(), sims.t().contiguous().numpy()
    out = []
    for view in views:
        sub = sims.index_select(0, view.image_index.cpu()).index_select(1, view.text_index.cpu())
        out.append((sub.numpy(), sub.t().contiguous().numpy()))
    return out


def _cat_or_empty(parts: list[Tensor], empty_shape: tuple, device) -> Tensor:
    return torch.cat(parts) if parts else torch.empty(empty_shape, device=device)
