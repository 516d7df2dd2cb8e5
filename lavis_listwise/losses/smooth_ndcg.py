"""Smooth-NDCG (S-NDCG), the listwise loss of arXiv 2305.16566, with a memory-lean backward.

For a query ``q`` with scores ``s_q.`` and graded relevance ``r_q.`` over ``N`` candidates::

    gain_qi  = 2^(r_qi) - 1
    rank_qi  = 1 + sum_{j != i} sigmoid((s_qj - s_qi) / tau)
    DCG_q    = sum_i gain_qi / log2(1 + rank_qi)
    IDCG_q   = sum_i gain_qi / log2(1 + rank*_qi),   rank*_qi = 1 + #{j : r_qj > r_qi}
    loss_q   = 1 - DCG_q / IDCG_q          (0 where IDCG_q == 0)

That ``IDCG`` is the paper's (``ideal_dcg="paper"``, the default): every item of a tied relevance
group gets the group's best rank, so a row with several tied positives has an ``IDCG`` no ranking
reaches and a loss floor above 0 (three tied positives: 0.29). ``ideal_dcg="sorted"`` uses the
standard ideal DCG instead, the gains sorted in descending order at ranks 1, 2, 3, ... (what
evaluation NDCG divides by), so a perfectly ordered row has loss 0.

The smoothed rank needs every (q, i, j) triple. Written with broadcasting, autograd keeps several
``Q x N x N`` tensors alive; here a custom autograd function keeps only ``O(Q*N)`` state and
recomputes the sigmoids in tiles during the backward pass, using the closed-form gradient::

    d rank_qi / d s_qj = sigma'(x_qij) / tau   (j != i),   x_qij = (s_qj - s_qi) / tau
    d loss / d s_qk   = (1/tau) * (sum_i g_qi P_qik - g_qk sum_j P_qkj),   P = sigma'(x)

``P`` is symmetric and ``sigma(-x) = 1 - sigma(x)``, so each tile ``(a, b)`` of candidates also
yields tile ``(b, a)`` for free: only the upper triangle of tiles is evaluated (about half the
sigmoid work), and ``sigma' = sigma * (1 - sigma)`` costs no second exponential.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .smooth_ndcg_compiled import compiled_available, compiled_rank_backward, compiled_ranks
from .smooth_ndcg_triton import triton_available, triton_rank_backward, triton_ranks

__all__ = ["IDEAL_DCG_RULES", "KERNELS", "SmoothNDCGLoss", "smooth_ndcg_loss", "smoothed_ranks", "ideal_dcg"]

_REDUCTIONS = ("mean", "sum", "none")
_LN2 = math.log(2.0)

#: Bytes of scratch memory per tile (one or two ``[chunk, block, block]`` buffers).
DEFAULT_TILE_BYTES = 8 * 1024 * 1024
#: Candidate block edge: the sigmoid matrix is evaluated in ``block x block`` tiles.
DEFAULT_BLOCK = 128


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else accumulates in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(n: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, n)) for start in range(0, n, block)]


def _chunk_rows(block: int, elem_bytes: int, buffers: int, tile_bytes: int) -> int:
    """Queries per tile so that ``buffers`` tensors of ``[rows, block, block]`` fit ``tile_bytes``."""
    return max(1, tile_bytes // (buffers * block * block * elem_bytes))


def smoothed_ranks(
    scaled_scores: Tensor, block: int = DEFAULT_BLOCK, tile_bytes: int = DEFAULT_TILE_BYTES
) -> Tensor:
    """Smoothed rank ``1 + sum_{j != i} sigmoid(x_qj - x_qi)`` of every item.

    Args:
        scaled_scores: ``[Q, N]`` scores already divided by ``tau``.
    Returns:
        ``[Q, N]`` ranks in the dtype of ``scaled_scores``, each in ``[1, N]``.
    """
    q, n = scaled_scores.shape
    block = min(block, n)
    rows = _chunk_rows(block, scaled_scores.element_size(), 1, tile_bytes)
    # sigma(0) = 1/2 on the diagonal is counted by the tiles; the "+1" of the rank minus it is 1/2.
    ranks = torch.full_like(scaled_scores, 0.5)
    spans = _blocks(n, block)
    for q0 in range(0, q, rows):
        x = scaled_scores[q0 : q0 + rows]
        r = ranks[q0 : q0 + rows]
        for ai, (a0, a1) in enumerate(spans):
            for b0, b1 in spans[ai:]:
                # tile[c, i, j] = sigma(x_j - x_i), i in block a, j in block b
                tile = (x[:, None, b0:b1] - x[:, a0:a1, None]).sigmoid_()
                r[:, a0:a1] += tile.sum(dim=2)
                if b0 != a0:
                    # sigma(x_i - x_j) = 1 - sigma(x_j - x_i): block b's ranks against block a.
                    r[:, b0:b1] += (a1 - a0) - tile.sum(dim=1)
    return ranks


def _rank_backward(scaled_scores: Tensor, grad_rank: Tensor, block: int, tile_bytes: int) -> Tensor:
    """``sum_i g_qi d rank_qi / d x_qk`` for all ``q, k`` without a ``Q x N x N`` tensor.

    Args:
        scaled_scores: ``[Q, N]`` scores divided by ``tau``.
        grad_rank: ``[Q, N]`` gradient of the loss with respect to the ranks.
    Returns:
        ``[Q, N]`` gradient with respect to ``scaled_scores``.
    """
    q, n = scaled_scores.shape
    block = min(block, n)
    rows = _chunk_rows(block, scaled_scores.element_size(), 2, tile_bytes)
    grad = torch.zeros_like(scaled_scores)
    spans = _blocks(n, block)
    for q0 in range(0, q, rows):
        x = scaled_scores[q0 : q0 + rows]
        g = grad_rank[q0 : q0 + rows]
        out = grad[q0 : q0 + rows]
        for ai, (a0, a1) in enumerate(spans):
            ga = g[:, a0:a1]
            for b0, b1 in spans[ai:]:
                gb = g[:, b0:b1]
                p = (x[:, None, b0:b1] - x[:, a0:a1, None]).sigmoid_()
                p.addcmul_(p, p, value=-1.0)  # sigma' = sigma (1 - sigma), symmetric in (i, j)
                # item k in block a: sum_i g_i P_ik - g_k sum_j P_kj, over j in block b
                out[:, a0:a1] += torch.bmm(p, gb.unsqueeze(2)).squeeze(2) - ga * p.sum(dim=2)
                if b0 != a0:
                    out[:, b0:b1] += torch.bmm(ga.unsqueeze(1), p).squeeze(1) - gb * p.sum(dim=1)
    return grad


#: Elements per row chunk of :func:`ideal_dcg` (its sort temporaries take ~30 bytes per element).
IDCG_CHUNK_ELEMENTS = 1 << 20
#: ``ideal_dcg`` rules: the paper's tie rule, or the standard sorted ideal DCG.
IDEAL_DCG_RULES = ("paper", "sorted")


def ideal_dcg(gains: Tensor, relevance: Tensor, rule: str = "paper") -> Tensor:
    """The ideal DCG of each row, by the paper's rule or the standard one.

    ``paper``: ``IDCG_q = sum_i gain_qi / log2(1 + rank*_qi)``, ``rank*_qi = 1 + #{j : r_qj > r_qi}``;
    ties in relevance share the best rank of their group, as in the paper's formula.
    ``sorted``: ``IDCG_q = sum_p g_q(p) / log2(1 + p)`` with ``g_q(1) >= g_q(2) >= ...`` the row's
    gains in descending order, the normaliser of evaluation NDCG. The two agree on rows without
    tied non-zero gains. Rows are done in chunks of about :data:`IDCG_CHUNK_ELEMENTS`, so the
    sort's temporaries stay small.

    Args:
        gains: ``[Q, N]`` gains ``2^r - 1``.
        relevance: ``[Q, N]`` relevance the gains come from.
        rule: ``"paper"`` or ``"sorted"``.
    Returns:
        ``[Q]`` ideal DCG in the dtype of ``gains``.
    """
    if rule not in IDEAL_DCG_RULES:
        raise ValueError(f"ideal_dcg must be one of {IDEAL_DCG_RULES}, got {rule!r}")
    q, n = relevance.shape
    rows = max(1, IDCG_CHUNK_ELEMENTS // n)
    position = torch.arange(n, device=relevance.device)
    out = gains.new_empty(q)
    if rule == "sorted":
        discounts = 1.0 / torch.log2(2.0 + position.to(gains.dtype))
        for q0 in range(0, q, rows):
            out[q0 : q0 + rows] = (gains[q0 : q0 + rows].sort(dim=1, descending=True).values * discounts).sum(
                1
            )
        return out
    for q0 in range(0, q, rows):
        descending, order = relevance[q0 : q0 + rows].sort(dim=1, descending=True)
        starts_group = torch.ones_like(descending, dtype=torch.bool)
        starts_group[:, 1:] = descending[:, 1:] != descending[:, :-1]
        # items greater than the one at a sorted position = the position where its tie group starts
        greater = torch.where(starts_group, position, 0).cummax(dim=1).values
        sorted_gains = gains[q0 : q0 + rows].gather(1, order)
        out[q0 : q0 + rows] = (sorted_gains / torch.log2(2.0 + greater.to(gains.dtype))).sum(dim=1)
    return out


def dcg_and_rank_weights_(gains: Tensor, ranks: Tensor) -> tuple[Tensor, Tensor]:
    """``DCG_q = sum_i gain_qi / log2(1 + rank_qi)`` and the rank weights
    ``w_qi = -d DCG_q / d rank_qi = gain_qi ln2 / ((1 + rank_qi) ln^2(1 + rank_qi))``.

    Overwrites both inputs (``w`` is returned in ``gains``' memory) and needs one more ``[Q, N]``
    buffer. ``d(1 - DCG/IDCG)/d rank = w / IDCG``: the loss's gradient with respect to the ranks is
    ``w`` scaled per row, so backward can keep ``w`` alone.

    Args:
        gains: ``[Q, N]``; ranks: ``[Q, N]`` smoothed ranks.
    Returns:
        ``[Q]`` DCG and ``[Q, N]`` ``w``.
    """
    log_term = torch.log1p(ranks)
    denominator = ranks.add_(1.0).mul_(log_term).mul_(log_term)
    dcg = torch.div(gains, log_term, out=log_term).sum(dim=1).mul_(_LN2)
    return dcg, gains.mul_(_LN2).div_(denominator)


def _as_compute(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A fresh contiguous ``dtype`` copy of ``t`` (the caller modifies it in place)."""
    return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t.detach())


def _gains(relevance: Tensor, dtype: torch.dtype) -> Tensor:
    return _as_compute(relevance, dtype).mul_(_LN2).expm1_()


KERNELS = ("auto", "torch", "compiled", "triton")


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """``auto``: the compiled path on CUDA, the chunked PyTorch path elsewhere. A kernel whose
    compilation failed earlier on this device type resolves to the chunked path."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "auto":
        kernel = "compiled" if device.type == "cuda" else "torch"
    if kernel == "triton" and device.type != "cuda" and not triton_available(device):
        raise ValueError(
            "kernel='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for Triton's CPU interpreter); "
            f"got {device.type} tensors"
        )
    if (kernel == "compiled" and not compiled_available(device)) or (
        kernel == "triton" and not triton_available(device)
    ):
        kernel = "torch"
    return kernel


def _ranks(scaled: Tensor, kernel: str, block: int, tile_bytes: int) -> Tensor:
    out = None
    if kernel == "compiled":
        out = compiled_ranks(scaled)
    elif kernel == "triton" and scaled.dtype == torch.float32:  # fp64 stays on the chunked path
        out = triton_ranks(scaled)
    return out if out is not None else smoothed_ranks(scaled, block, tile_bytes)


def _ranks_backward(scaled: Tensor, grad_rank: Tensor, kernel: str, block: int, tile_bytes: int) -> Tensor:
    out = None
    if kernel == "compiled":
        out = compiled_rank_backward(scaled, grad_rank)
    elif kernel == "triton" and scaled.dtype == torch.float32:
        out = triton_rank_backward(scaled, grad_rank)
    return out if out is not None else _rank_backward(scaled, grad_rank, block, tile_bytes)


class _SmoothNDCG(torch.autograd.Function):
    """Per-row ``1 - DCG/IDCG`` with the closed-form backward (tiled or compiled).

    Memory: besides its inputs it keeps only the ``[Q, N]`` rank weights for backward (the scaled
    scores are recomputed there); forward and backward each peak at about five ``[Q, N]`` buffers
    in the compute dtype (fast kernels; the chunked path needs two fewer, plus its tiles).
    """

    @staticmethod
    def forward(
        ctx,
        scores: Tensor,
        relevance: Tensor,
        tau: float,
        block: int,
        tile_bytes: int,
        kernel: str,
        ideal: str,
    ):
        dtype = _compute_dtype(scores.dtype)
        gains = _gains(relevance, dtype)
        idcg = ideal_dcg(gains, relevance.detach(), ideal)
        ranks = _ranks(_as_compute(scores, dtype).div_(tau), kernel, block, tile_bytes)
        dcg, rank_weights = dcg_and_rank_weights_(gains, ranks)
        del ranks
        valid = idcg > 0
        safe_idcg = torch.where(valid, idcg, torch.ones_like(idcg))
        loss = torch.where(valid, 1.0 - dcg / safe_idcg, torch.zeros_like(dcg))
        ctx.save_for_backward(scores, rank_weights, safe_idcg, valid)
        ctx.tau, ctx.block, ctx.tile_bytes, ctx.kernel = tau, block, tile_bytes, kernel
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor):
        scores, rank_weights, safe_idcg, valid = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None
        # d loss_q / d rank_qi = w_qi / IDCG_q; the rank backward is linear in it, so run it on w and
        # scale each row afterwards (no [Q, N] gradient-of-ranks buffer)
        coef = torch.where(valid, grad_loss.to(safe_idcg.dtype) / safe_idcg, torch.zeros_like(safe_idcg))
        scaled = _as_compute(scores, rank_weights.dtype).div_(ctx.tau)
        grad = _ranks_backward(scaled, rank_weights, ctx.kernel, ctx.block, ctx.tile_bytes)
        del scaled
        return grad.mul_((coef / ctx.tau)[:, None]).to(scores.dtype), None, None, None, None, None, None


def _check_inputs(scores: Tensor, relevance: Tensor, tau: float, reduction: str) -> None:
    if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise ValueError("scores must be a floating-point torch.Tensor")
    if not isinstance(relevance, Tensor):
        raise ValueError("relevance must be a torch.Tensor")
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [queries, candidates], got shape {tuple(scores.shape)}")
    if relevance.shape != scores.shape:
        raise ValueError(
            f"relevance shape {tuple(relevance.shape)} does not match scores shape {tuple(scores.shape)}"
        )
    if scores.numel() == 0:
        raise ValueError(f"scores must be non-empty, got shape {tuple(scores.shape)}")
    if relevance.device != scores.device:
        raise ValueError(f"relevance is on {relevance.device} but scores on {scores.device}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contains NaN or infinite values")
    rel = relevance.float() if not relevance.is_floating_point() else relevance
    if not bool(torch.isfinite(rel).all()):
        raise ValueError("relevance contains NaN or infinite values")
    if bool((rel < 0).any()):
        raise ValueError("relevance must be >= 0 (gains are 2^r - 1)")


def smooth_ndcg_loss(
    scores: Tensor,
    relevance: Tensor,
    tau: float = 0.01,
    reduction: str = "mean",
    *,
    block: int = DEFAULT_BLOCK,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    kernel: str = "auto",
    relevance_topk: int | None = None,
    ideal_dcg: str = "paper",
) -> Tensor:
    """Smooth-NDCG loss ``1 - S-NDCG`` of each query row.

    Args:
        scores: ``[Q, N]`` similarity of each query (row) to each candidate (column); any float
            dtype, computed in fp32 (fp64 for fp64 inputs). Differentiable.
        relevance: ``[Q, N]`` graded relevance ``>= 0`` (RSC gives ``[0, 1]``). Not differentiated.
        tau: sigmoid temperature of the smoothed rank, ``> 0``.
        reduction: ``"mean"`` over all rows (rows with IDCG 0 count as 0), ``"sum"``, or
            ``"none"`` for the ``[Q]`` vector.
        block: candidate tile edge of the tiled computation.
        tile_bytes: scratch memory per tile; peak extra memory is ``O(Q*N)`` plus this.
        kernel: ``"torch"`` (chunked tiles, portable), ``"compiled"`` (fused ``torch.compile``
            reductions; falls back to ``"torch"`` with one warning if compilation fails),
            ``"triton"`` (hand-written Triton kernels, CUDA; same fallback), or ``"auto"``
            (compiled on CUDA, torch elsewhere).
        relevance_topk: if set, an approximation: only each row's ``relevance_topk`` most relevant
            candidates keep their gain (the others count as 0) and only they are ranked, in
            ``O(Q * relevance_topk * N)`` (chunked PyTorch, ``kernel`` is not used).
        ideal_dcg: the normaliser, ``"paper"`` (the paper's tie rule, see the module docstring) or
            ``"sorted"`` (the standard ideal DCG, as evaluation NDCG uses).
    Returns:
        Scalar (``mean``/``sum``) or ``[Q]`` loss, fp32 (fp64 for fp64 scores).
    """
    _check_inputs(scores, relevance, tau, reduction)
    if block < 1 or tile_bytes < 1:
        raise ValueError("block and tile_bytes must be >= 1")
    if ideal_dcg not in IDEAL_DCG_RULES:
        raise ValueError(f"ideal_dcg must be one of {IDEAL_DCG_RULES}, got {ideal_dcg!r}")
    if relevance_topk is not None and relevance_topk < scores.shape[1]:
        from .smooth_ndcg_topk import sparse_smooth_ndcg_per_row

        per_row = sparse_smooth_ndcg_per_row(
            scores, relevance, float(tau), relevance_topk, int(tile_bytes), ideal_dcg=ideal_dcg
        )
    else:
        kernel = resolve_kernel(kernel, scores.device)
        per_row = _SmoothNDCG.apply(
            scores, relevance, float(tau), int(block), int(tile_bytes), kernel, ideal_dcg
        )
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row


class SmoothNDCGLoss(nn.Module):
    """``nn.Module`` form of :func:`smooth_ndcg_loss`: ``forward(scores [Q, N], relevance [Q, N])``."""

    is_listwise = True  # takes graded relevance, usable as ``model.listwise.loss``

    def __init__(
        self,
        tau: float = 0.01,
        reduction: str = "mean",
        kernel: str = "auto",
        relevance_topk: int | None = None,
        ideal_dcg: str = "paper",
    ) -> None:
        super().__init__()
        if ideal_dcg not in IDEAL_DCG_RULES:
            raise ValueError(f"ideal_dcg must be one of {IDEAL_DCG_RULES}, got {ideal_dcg!r}")
        self.ideal_dcg = ideal_dcg
        if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
            raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.tau = float(tau)
        self.reduction = reduction
        if relevance_topk is not None and (not isinstance(relevance_topk, int) or relevance_topk < 1):
            raise ValueError(f"relevance_topk must be a positive integer or None, got {relevance_topk!r}")
        self.kernel = kernel
        self.relevance_topk = relevance_topk

    def forward(self, scores: Tensor, relevance: Tensor) -> Tensor:
        return smooth_ndcg_loss(
            scores,
            relevance,
            tau=self.tau,
            reduction=self.reduction,
            kernel=self.kernel,
            relevance_topk=self.relevance_topk,
            ideal_dcg=self.ideal_dcg,
        )

    def extra_repr(self) -> str:
        topk = f", relevance_topk={self.relevance_topk}" if self.relevance_topk else ""
        ideal = f", ideal_dcg={self.ideal_dcg!r}" if self.ideal_dcg != "paper" else ""
        return f"tau={self.tau}, reduction={self.reduction!r}, kernel={self.kernel!r}{topk}{ideal}"
