"""The ITM cross-encoder of BLIP / ALBEF on packed tokens, each image's keys and values projected once.

LAVIS's ``BertModel`` runs every caption padded to 35 positions and re-projects an image's
cross-attention keys and values for every caption it is paired with. :func:`packed_itm_logits` gives
the same "match" logits with:

* pairs grouped by image: each image's cross-attention keys and values are projected once per
  layer and shared by all its captions (about two thirds of the ITM FLOPs at 384 px);
* every per-token layer (projections, output blocks, feed-forward) on the captions' real tokens
  only, packed, and the last layer's cross-attention and feed-forward on the [CLS]/[ENC] token only
  (the only one the ITM head reads).

The model's own modules (embeddings, query/key/value projections, output and feed-forward blocks,
ITM head) do the arithmetic; only the two attention cores are written here: self-attention in
LAVIS's formula on the padded caption grid, cross-attention on cached keys/values through
``scaled_dot_product_attention``. Position embeddings must be absolute (BLIP's and ALBEF's are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["packed_itm_logits"]


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


def packed_itm_logits(
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
