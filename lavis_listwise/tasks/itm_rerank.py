"""Fast ITC + ITM re-ranking evaluation for LAVIS's BLIP and ALBEF retrieval models.

Same semantics as LAVIS's ``compute_sim_matrix`` (``lavis/models/albef_models/__init__.py``): ITC
similarity for every pair; the top ``k_test`` captions of every image and the top ``k_test`` images
of every caption re-scored by the ITM cross-encoder; final score ``itm + itc`` there and ``-100``
elsewhere. What changes is how the ITM work is done:

* the ITM logit of a pair does not depend on which direction asked for it, so each distinct
  (image, caption) pair is scored once, even when both directions (or several views, such as the
  COCO 1K folds) select it;
* pairs are grouped by image: each image's cross-attention keys and values are projected once per
  layer and shared by all its queries (LAVIS re-projects them for every query, about two thirds of
  the ITM FLOPs at 384 px), and many images' pairs go through one batched forward;
* every per-token layer (projections, output blocks, feed-forward) runs on the captions' real
  tokens only, packed, instead of LAVIS's 35 padded positions, and the last layer's cross-attention
  and feed-forward run on the [CLS]/[ENC] token only (the only one the ITM head reads);
* ALBEF's text-only layers (below ``fusion_layer``) run once per caption, in the ITC pass;
* under ``torch.distributed`` every rank encodes only its share of images and captions; ranks own
  the ITM pairs of their own images, and the scores are summed once over ranks (no ``-100`` sums).

The model's own modules (embeddings, query/key/value projections, output and feed-forward blocks,
ITM head) do the arithmetic; only the two attention cores are written here: self-attention in
LAVIS's formula on the padded caption grid, cross-attention on cached keys/values through
``scaled_dot_product_attention``. Position embeddings must be absolute (BLIP's and ALBEF's are).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from transformers import BatchEncoding

from ..distributed import gather_shards, rank_and_world, shard_range

__all__ = [
    "DEFAULT_MAX_PAIRS",
    "LAVIS_EVAL_MAX_TXT_LEN",
    "RerankView",
    "RetrievalFeatures",
    "candidate_pairs",
    "compute_sim_matrix_fast",
    "encode_retrieval_features",
    "itm_pair_scores",
    "rerank_views",
]

#: LAVIS's compute_sim_matrix tokenizes evaluation captions to this length (hard-coded there).
LAVIS_EVAL_MAX_TXT_LEN = 35
#: Text batch of the ITC pass, as in LAVIS.
_TEXT_BATCH = 256
#: Default pairs per ITM forward: cache-sized on CPU (measured: 256 is fastest), large on GPUs.
DEFAULT_MAX_PAIRS = {"cpu": 256, "cuda": 4096}


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 (fp16 where the GPU lacks it) under ``run.amp`` on CUDA; ``None`` otherwise."""
    if not (amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, enabled: bool):
    dtype = _amp_dtype(device, enabled)
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


def _first_cross_layer(text_encoder) -> int:
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
    first_fusion = _first_cross_layer(text_encoder)
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
    with _autocast(device, amp):
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
    with _autocast(device, amp):
        for samples in _image_loader(data_loader, i0, i1):
            image = samples["image"].to(device, non_blocking=True)
            feat = model.visual_encoder.forward_features(image)
            image_embeds.append(F.normalize(model.vision_proj(feat[:, 0, :]), dim=-1))
            if feats is None:
                # Under amp the ITM pass reads them in the autocast dtype anyway: store them so (half
                # the memory of fp32, bit-identical K/V inputs).
                dtype = _amp_dtype(device, amp) or feat.dtype
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


def _cat_or_empty(parts: list[Tensor], empty_shape: tuple, device) -> Tensor:
    return torch.cat(parts) if parts else torch.empty(empty_shape, device=device)


@dataclass(frozen=True)
class RerankView:
    """A sub-problem to re-rank: the images ``image_index`` against the captions ``text_index``.

    The whole split is ``RerankView(arange(n_img), arange(n_txt))``; a COCO 1K fold is its images
    with their captions.
    """

    image_index: Tensor  # [n_img_view] long
    text_index: Tensor  # [n_txt_view] long


def candidate_pairs(sims: Tensor, view: RerankView, k_test: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ITC top-``k_test`` of every row and column of a view, as LAVIS selects them.

    Returns:
        ``i2t_sim, i2t_idx``: ``[n_img_view, k]`` top similarities and view-local caption columns;
        ``t2i_sim, t2i_idx``: ``[n_txt_view, k]`` the same for captions against the view's images.
    """
    sub = sims.index_select(0, view.image_index.to(sims.device)).index_select(
        1, view.text_index.to(sims.device)
    )
    k = int(k_test)
    if k > min(sub.shape):
        raise ValueError(
            f"run.k_test = {k} is larger than the candidates ({sub.shape[0]} images, {sub.shape[1]} captions)"
        )
    i2t_sim, i2t_idx = sub.topk(k, dim=1)
    t2i_sim, t2i_idx = sub.t().topk(k, dim=1)
    return i2t_sim, i2t_idx, t2i_sim, t2i_idx


@dataclass
class _TokenLayout:
    """Where the real (unpadded) tokens of ``N`` captions sit.

    ``token_slots``: ``[T]`` flat positions in the ``[N, L]`` grid; ``key_mask``: ``[N, 1, 1, L]``
    additive mask (LAVIS's ``-10000`` on padding); ``token_row``: ``[T]`` caption row of each token.
    """

    n_rows: int
    length: int
    token_slots: Tensor
    token_row: Tensor
    key_mask: Tensor


def _heads(module, x: Tensor) -> Tensor:
    """``[..., H]`` -> ``[..., heads, d]``."""
    return x.view(*x.shape[:-1], module.num_attention_heads, module.attention_head_size)


def _self_attention(att, x: Tensor, layout: _TokenLayout) -> Tensor:
    """LAVIS's ``BertAttention`` (self mode) on packed tokens: projections on real tokens only,
    the attention core per caption on the padded ``[N, L]`` grid, padding keys masked."""
    sa = att.self
    grid = layout.n_rows * layout.length
    q, k, v = (
        x.new_zeros(grid, x.shape[1]).index_copy_(0, layout.token_slots, proj(x))
        for proj in (sa.query, sa.key, sa.value)
    )
    q, k, v = (_heads(sa, t.view(layout.n_rows, layout.length, -1)).transpose(1, 2) for t in (q, k, v))
    # LAVIS's own arithmetic; for captions of <= 35 tokens it is also faster than SDPA on CPU.
    scores = q @ k.transpose(-1, -2) / math.sqrt(sa.attention_head_size) + layout.key_mask.to(q.dtype)
    ctx = scores.softmax(dim=-1) @ v
    ctx = ctx.transpose(1, 2).reshape(grid, -1).index_select(0, layout.token_slots)
    return att.output(ctx, x)


def _cross_attention(ca, x: Tensor, keys: Tensor, values: Tensor, slots: Tensor, width: int) -> Tensor:
    """LAVIS's ``BertAttention`` in cross mode, with each image's keys/values computed once.

    Args:
        x: ``[T, H]`` packed token states, grouped by image.
        keys, values: ``[G, heads, P, d]``.
        slots: ``[T]`` position of each token in the ``[G, width]`` per-image grid.
    """
    sa = ca.self
    g = keys.shape[0]
    # All of an image's caption tokens form one query sequence against its P tokens.
    q = x.new_zeros(g * width, x.shape[1]).index_copy_(0, slots, sa.query(x))
    q = _heads(sa, q.view(g, width, -1)).transpose(1, 2)
    ctx = F.scaled_dot_product_attention(q, keys, values)
    ctx = ctx.transpose(1, 2).reshape(g * width, -1).index_select(0, slots)
    return ca.output(ctx, x)


def _kv(ca, feats: Tensor) -> tuple[Tensor, Tensor]:
    sa = ca.self
    return _heads(sa, sa.key(feats)).transpose(1, 2), _heads(sa, sa.value(feats)).transpose(1, 2)


def _group_slots(group: Tensor, n_groups: int) -> tuple[Tensor, int]:
    """Position of each item (sorted by group) in a ``[n_groups, width]`` grid, and ``width``."""
    counts = torch.bincount(group, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    width = int(counts.max())
    return group * width + torch.arange(len(group), device=group.device) - starts[group], width


def _itm_forward(
    model, feats: Tensor, ids: Tensor, mask: Tensor, row_group: Tensor, states: Tensor | None, first: int
) -> Tensor:
    """ITM "match" logits of ``N`` pairs: row ``n`` pairs caption ``ids[n]`` with ``feats[row_group[n]]``.

    Every per-token operation (projections, output blocks, feed-forward) runs on the real tokens
    only, packed; only the attention cores see padding. Rows must be sorted by ``row_group``.

    Args:
        feats: ``[G, P, D]`` image tokens; ``ids``/``mask``: ``[N, L]``; ``row_group``: ``[N]``;
            ``states``: ``[N, L, H]`` (ALBEF, after the text-only layers) or ``None``; ``first``:
            first layer to run.
    Returns: ``[N]``.
    """
    enc = model.text_encoder
    n_rows, length = mask.shape
    real = mask.reshape(-1).bool()
    slots = real.nonzero().squeeze(1)
    layout = _TokenLayout(
        n_rows=n_rows,
        length=length,
        token_slots=slots,
        token_row=slots // length,
        key_mask=enc.get_extended_attention_mask(mask, mask.shape, mask.device, False),
    )
    x = (enc.embeddings(input_ids=ids) if states is None else states).reshape(n_rows * length, -1)[slots]
    cls = slots % length == 0  # the [CLS]/[ENC] token of each caption, the only one the ITM head reads
    n_groups = feats.shape[0]
    token_group = row_group[layout.token_row]
    cross_slots, width = _group_slots(token_group, n_groups)
    layers = enc.encoder.layer
    for i in range(first, len(layers)):
        layer = layers[i]
        x = _self_attention(layer.attention, x, layout)
        if i == len(layers) - 1:  # tokens are independent from here on: keep only [CLS]/[ENC]
            x = x[cls]
            cross_slots, width = _group_slots(row_group, n_groups)
        if hasattr(layer, "crossattention"):
            keys, values = _kv(layer.crossattention, feats)
            x = _cross_attention(layer.crossattention, x, keys, values, cross_slots, width)
        x = layer.feed_forward_chunk(x)
    return model.itm_head(x)[:, 1]


def _batches(image_of_pair: Tensor, max_pairs: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Pack pairs (sorted by image) into ITM batches of whole images, ``<= max_pairs`` pairs each.

    Returns a list of ``(images [G], rows [N], row_group [N])``: ``rows`` indexes the pair list and
    ``row_group`` says which of the batch's images each row pairs with (non-decreasing).
    """
    images, counts = torch.unique_consecutive(image_of_pair, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    segments = []  # (image, first pair, count); an image with more pairs than a batch is split
    for img, start, count in zip(images.tolist(), starts.tolist(), counts.tolist()):
        for s in range(start, start + count, max_pairs):
            segments.append((img, s, min(max_pairs, start + count - s)))
    segments.sort(key=lambda seg: -seg[2])  # similar sizes side by side: little padding in the grid
    out, batch, size = [], [], 0
    for seg in segments + [None]:
        if seg is None or size + seg[2] > max_pairs:
            if batch:
                rows = torch.cat([torch.arange(s, s + c) for _, s, c in batch])
                group = torch.repeat_interleave(
                    torch.arange(len(batch)), torch.tensor([c for _, _, c in batch])
                )
                out.append((torch.tensor([img for img, _, _ in batch]), rows, group))
            batch, size = [], 0
        if seg is not None:
            batch.append(seg)
            size += seg[2]
    return out


@torch.no_grad()
def itm_pair_scores(
    model,
    features: RetrievalFeatures,
    pair_image: Tensor,
    pair_text: Tensor,
    max_pairs: int | None = None,
    amp: bool = False,
    progress: bool = True,
) -> Tensor:
    """ITM "match" logits of (image, caption) pairs, computed by the rank that owns each image.

    Args:
        pair_image, pair_text: ``[U]`` global indices, sorted by image (as :func:`torch.unique` of
            ``image * n_txt + text`` leaves them).
        max_pairs: pairs per ITM forward (default :data:`DEFAULT_MAX_PAIRS` for the device).
    Returns: ``[U]`` float32 logits on CPU, the same on every rank.
    """
    device = model.device
    max_pairs = max_pairs or DEFAULT_MAX_PAIRS.get(device.type, 1024)
    i0, i1 = features.image_range
    own = (pair_image >= i0) & (pair_image < i1)
    own_rows = own.nonzero().squeeze(1)
    scores = torch.zeros(len(pair_image), dtype=torch.float32, device=device)
    batches = _batches(pair_image[own_rows], max_pairs) if len(own_rows) else []
    bar = tqdm(total=len(own_rows), desc="ITM re-ranking", unit="pair", disable=not progress, leave=False)
    with _autocast(device, amp):
        for images, rows, row_group in batches:
            flat = own_rows[rows]
            txt = pair_text[flat]
            mask = features.text_mask[txt]
            length = int(mask.sum(1).max())
            mask = mask[:, :length].to(device)
            ids = features.text_ids[txt, :length].to(device)
            states = None
            if features.text_states is not None:
                states = features.text_states[txt.to(features.text_states.device), :length].to(device)
            feats = features.image_feats[(images - i0).to(features.image_feats.device)].to(device)
            logits = _itm_forward(
                model, feats, ids, mask, row_group.to(device), states, features.first_fusion_layer
            )
            scores[flat.to(device)] = logits.float()
            bar.update(len(rows))
    bar.close()
    if rank_and_world()[1] > 1:
        dist.all_reduce(scores)  # each pair was scored by exactly one rank, zeros elsewhere
    return scores.cpu()


@torch.no_grad()
def rerank_views(
    model,
    features: RetrievalFeatures,
    views: Sequence[RerankView],
    k_test: int,
    max_pairs: int | None = None,
    amp: bool = False,
    progress: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """LAVIS's re-ranked score matrices for each view, scoring each distinct pair once overall.

    Returns: per view, ``(score_i2t [n_img_view, n_txt_view], score_t2i [n_txt_view, n_img_view])``
    float32 numpy arrays: ``itm + itc`` for the ITC top-``k_test`` candidates, ``-100`` elsewhere.
    """
    n_txt = features.sims.shape[1]
    selected, keys = [], []
    for view in views:
        i2t_sim, i2t_idx, t2i_sim, t2i_idx = (t.cpu() for t in candidate_pairs(features.sims, view, k_test))
        img, txt = view.image_index.cpu(), view.text_index.cpu()
        keys.append((img[:, None] * n_txt + txt[i2t_idx]).reshape(-1))
        keys.append((img[t2i_idx] * n_txt + txt[:, None]).reshape(-1))
        selected.append((i2t_sim, i2t_idx, t2i_sim, t2i_idx))
    unique, inverse = torch.unique(torch.cat(keys), return_inverse=True)
    logging.info(
        "ITM re-ranking: %d distinct pairs for %d selections", len(unique), sum(len(k) for k in keys)
    )
    itm = itm_pair_scores(
        model, features, unique // n_txt, unique % n_txt, max_pairs=max_pairs, amp=amp, progress=progress
    )
    out, offset = [], 0
    for view, (i2t_sim, i2t_idx, t2i_sim, t2i_idx) in zip(views, selected):
        n_i, n_t = len(view.image_index), len(view.text_index)
        i2t_itm = itm[inverse[offset : offset + i2t_idx.numel()]].view_as(i2t_sim)
        offset += i2t_idx.numel()
        t2i_itm = itm[inverse[offset : offset + t2i_idx.numel()]].view_as(t2i_sim)
        offset += t2i_idx.numel()
        score_i2t = torch.full((n_i, n_t), -100.0).scatter_(1, i2t_idx, i2t_itm + i2t_sim)
        score_t2i = torch.full((n_t, n_i), -100.0).scatter_(1, t2i_idx, t2i_itm + t2i_sim)
        out.append((score_i2t.numpy(), score_t2i.numpy()))
    return out


def compute_sim_matrix_fast(
    model,
    data_loader,
    k_test: int,
    views: Sequence[RerankView] | None = None,
    max_pairs: int | None = None,
    amp: bool = False,
    feature_device: str = "auto",
    progress: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]] | tuple[np.ndarray, np.ndarray]:
    """Drop-in for ``model.compute_sim_matrix(data_loader, task_cfg)``.

    With ``views=None`` returns ``(score_i2t, score_t2i)`` of the whole split, as LAVIS does;
    otherwise one such pair per view (all views share one feature pass and one ITM pass).
    """
    start = time.time()
    was_training = model.training
    model.eval()
    try:
        features = encode_retrieval_features(model, data_loader, amp=amp, feature_device=feature_device)
        n_img, n_txt = features.sims.shape
        whole = RerankView(torch.arange(n_img), torch.arange(n_txt))
        result = rerank_views(
            model, features, [whole] if views is None else list(views), k_test, max_pairs, amp, progress
        )
    finally:
        model.train(was_training)
    logging.info("Evaluation (fast ITM re-ranking) took %.1f s", time.time() - start)
    return result[0] if views is None else result
