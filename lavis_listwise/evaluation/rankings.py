"""The rankings report (``run.save_rankings: K``): every query's top-K candidates as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["ranking_report", "write_rankings"]


def ranking_report(score_i2t, score_t2i, dataset, k: int) -> dict:
    """Every query's top-``k`` candidates with scores and ground truth, for inspection.

    Returns ``{"k", "i2t": [{"image", "top": [{"text", "caption", "score", "positive"}]}], "t2i": [...]}``
    with indices into the split's ``image`` / ``text`` lists.
    """
    s_i2t, s_t2i = torch.as_tensor(score_i2t), torch.as_tensor(score_t2i)
    k_i, k_t = min(k, s_i2t.shape[1]), min(k, s_t2i.shape[1])
    i2t_val, i2t_idx = s_i2t.topk(k_i, dim=1)
    t2i_val, t2i_idx = s_t2i.topk(k_t, dim=1)
    images = [str(path) for path in dataset.image]  # file names relative to the image root
    i2t = [
        {
            "image": i,
            "file": images[i],
            "top": [
                {
                    "text": t,
                    "caption": dataset.text[t],
                    "score": round(v, 5),
                    "positive": dataset.txt2img[t] == i,
                }
                for t, v in zip(idx, val)
            ],
        }
        for i, (idx, val) in enumerate(zip(i2t_idx.tolist(), i2t_val.tolist()))
    ]
    t2i = [
        {
            "text": t,
            "caption": dataset.text[t],
            "top": [
                {"image": i, "file": images[i], "score": round(v, 5), "positive": dataset.txt2img[t] == i}
                for i, v in zip(idx, val)
            ],
        }
        for t, (idx, val) in enumerate(zip(t2i_idx.tolist(), t2i_val.tolist()))
    ]
    return {"k": k, "i2t": i2t, "t2i": t2i}


def write_rankings(rankings: dict, out: Path) -> None:
    """Write a :func:`ranking_report` to ``out`` atomically (never a half-written file)."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(rankings))
    os.replace(tmp, out)
