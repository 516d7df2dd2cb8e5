"""Plain-text forms of evaluation results: :func:`format_results_table` (the metrics ``train`` and
``evaluate`` print) and :func:`format_agreement` (one split's relevance agreement, as the demo and
``lavis-listwise relevance-report`` print it).
"""

from __future__ import annotations

import re

__all__ = ["format_agreement", "format_results_table"]

_ROW = re.compile(r"^(?:(?P<group>[a-z0-9]+)_)??(?P<dir>txt|img)_(?P<metric>.+)$")
_DIRECTION = {"txt": "image->text", "img": "text->image"}


def format_agreement(split: str, values: dict) -> str:
    """One line: Spearman and NDCG@10 both directions, and the training gain of other captions."""
    gains = " / ".join(f"{values[f'gain_p{q}']:.2f}" for q in (10, 50, 90))
    line = (
        f"  {split}: Spearman {values['spearman_i2t']:.3f} (image->text) / {values['spearman_t2i']:.3f} "
        f"(text->image); NDCG@10 of the relevance as a ranker {values['ndcg10_i2t']:.2f} / "
        f"{values['ndcg10_t2i']:.2f}; gain of other images' captions p10/p50/p90 {gains}"
    )
    if "irrelevant_share" in values:  # the calibration figures (relevance_agreement with batch_size)
        line += (
            f"; plausible positives at gain 0 {values['relevant_at_zero']:.1%}, the other pairs' share of "
            f"a {values['batch_size']}-caption list's gain {values['irrelevant_share']:.1%}"
        )
    return line


def format_results_table(logs: dict) -> str:
    """A plain-text table per split: one row per direction (and per protocol, e.g. COCO 1K), one
    column per metric; other values (``r_mean``, ``agg_metrics``...) listed underneath."""
    lines = []
    for split, metrics in logs.items():
        if not isinstance(metrics, dict):
            continue
        rows: dict[str, dict[str, float]] = {}
        columns: list[str] = []
        others = []
        for key, value in metrics.items():
            match = _ROW.match(key)
            if match is None or not isinstance(value, (int, float)):
                others.append(f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}")
                continue
            label = f"{match['group'] or ''} {_DIRECTION[match['dir']]}".strip()
            rows.setdefault(label, {})[match["metric"]] = float(value)
            if match["metric"] not in columns:
                columns.append(match["metric"])
        width = max([len(r) for r in rows] + [len(split)])
        lines.append(f"{split:<{width}}  " + "  ".join(f"{c:>9}" for c in columns))
        for label, values in rows.items():
            cells = (f"{values[c]:9.2f}" if c in values else " " * 9 for c in columns)
            lines.append((f"{label:<{width}}  " + "  ".join(cells)).rstrip())
        if others:
            lines.append("  ".join(others))
        lines.append("")
    return "\n".join(lines)
