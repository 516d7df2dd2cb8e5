"""The factorisation the fast Smooth-NDCG kernels share: ``sigma(x_j - x_i) = 1 / (1 + u_i v_j)``.

Every term of the smoothed rank and of its gradient is a sigmoid of a score difference. With the
row's centred exponentials ``u = e^(x - c)`` and ``v = e^(c - x)`` (``c`` the row's mid-range),
``e^(x_i - x_j) = u_i v_j``: a multiply, an add and a reciprocal per term, the ``O(N)``
exponentials done once per row instead of ``O(N^2)`` times (a reciprocal is also cheaper than a
general division on CPU). Its rounding is that of the direct form: the exponent loses half an ulp of
``|x - c|`` per factor (the direct form half an ulp of ``|x_i - x_j|``), then a few ulp of relative
error from the exponentials, the product and the reciprocal.

``u`` and ``v`` must be finite, normal numbers: that holds for rows whose half range
``(max - min)/2`` is at most :data:`CENTRED_EXP_LIMIT` (fp32: 80, a score spread of 1.6 at
``tau = 0.01``). A product that overflows or underflows is still right: ``1/(1 + inf) = 0`` and
``1/(1 + 0) = 1`` are the saturated sigmoid. Rows with a wider spread use ``sigma`` of the
difference (:func:`by_row_kind`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["CENTRED_EXP_LIMIT", "apply_by_row_kind", "by_row_kind", "centred_exp"]

#: Largest row half range for which ``e^(x - c)`` and ``e^(c - x)`` are finite and normal
#: (fp32: e^80 < 3.4e38, e^-80 > 1.2e-38).
CENTRED_EXP_LIMIT = {torch.float32: 80.0, torch.float64: 700.0}


def centred_exp(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``u = e^(x - c)``, ``v = e^(c - x)`` (``c_q``: row ``q``'s mid-range): ``e^(x_qi - x_qj) = u_qi v_qj``.

    Args:
        x: ``[Q, N]`` fp32 or fp64 scaled scores.
    Returns:
        ``u`` and ``v``, both ``[Q, N]``, and ``safe`` ``[Q]``: the rows whose ``u`` and ``v`` may
        be used (in the others they may be ``inf`` or ``0``).
    """
    hi, lo = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
    safe = ((hi - lo) / 2 <= CENTRED_EXP_LIMIT[x.dtype]).squeeze(1)
    centred = x - (hi + lo) / 2
    u = centred.exp()
    return u, centred.neg_().exp_(), safe  # v reuses centred's memory


Rows = Tensor | slice


def by_row_kind(
    safe: Tensor,
    factored: Callable[[Rows], Tensor | None],
    direct: Callable[[Rows], Tensor | None],
    like: Tensor,
) -> Tensor | None:
    """Runs ``factored(rows)`` on the rows ``safe`` marks and ``direct(rows)`` on the others.

    Args:
        safe: ``[Q]`` bool from :func:`centred_exp`.
        factored, direct: map the selected rows (a slice or an index tensor) to their ``[rows, N]``
            result, or ``None`` when their kernel failed.
        like: ``[Q, N]`` tensor whose shape and dtype the result takes.
    Returns:
        ``[Q, N]``, or ``None`` if a kernel failed.
    """
    if bool(safe.all()):  # the common case: no gather, no scatter
        return factored(slice(None))
    if not bool(safe.any()):
        return direct(slice(None))
    rows_f, rows_d = safe.nonzero().squeeze(1), (~safe).nonzero().squeeze(1)
    part_f, part_d = factored(rows_f), direct(rows_d)
    if part_f is None or part_d is None:
        return None
    out = torch.empty_like(like)
    out[rows_f], out[rows_d] = part_f, part_d
    return out


def apply_by_row_kind(
    x: Tensor,
    factored: Callable[..., Tensor | None],
    direct: Callable[..., Tensor | None],
    *row_args: Tensor,
) -> Tensor | None:
    """One fast kernel over all rows of ``x``: ``factored(u, v, *row_args)`` on the rows the centred
    exponentials cover, ``direct(x, *row_args)`` on the others (each given only its rows).

    Args:
        x: ``[Q, N]`` scaled scores.
        factored, direct: the kernel's two forms; each returns ``[rows, N]``, or ``None`` if it failed.
        row_args: further ``[Q, N]`` inputs (the rank gradient), split by rows the same way.
    Returns:
        ``[Q, N]``, or ``None`` if a kernel failed.
    """
    u, v, safe = centred_exp(x)
    return by_row_kind(
        safe,
        lambda rows: factored(*(t[rows] for t in (u, v, *row_args))),
        lambda rows: direct(*(t[rows] for t in (x, *row_args))),
        like=x,
    )
