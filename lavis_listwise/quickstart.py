"""A short CPU run that shows the listwise objective at work, before the full demo exists.

Captions go through LAVIS's own ``blip_caption`` processor, are embedded once by the bundled
all-MiniLM-L6-v2 (cached on disk), and RSC turns them into graded relevance. Two identical
two-tower projections are trained from the same seed on synthetic "image" features that encode
each scene's attributes: one with the pairwise loss only (LAVIS's ITC), one with ITC + S-NDCG.
Both are scored on held-out scenes with R@1 and NDCG@10 against RSC relevance.
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .losses import bidirectional_smooth_ndcg_loss
from .metrics import ndcg_at_k, recall_at_k
from .relevance import CaptionEmbeddingCache, rsc_relevance

COLOURS = ["red", "blue", "green", "yellow", "black", "white"]
OBJECTS = ["car", "dog", "bicycle", "boat", "cat", "bus"]
PLACES = ["on a street", "in a park", "near the water", "inside a garage"]
TEMPLATES = [
    "A {c} {o} {p}.",
    "There is a {c} {o} {p}!",
    "a photo of a {c} {o} {p}",
    "Picture showing one {c} {o} {p}.",
    "The {o} is {c} and it is {p}",
]


def make_scenes(seed: int):
    """All colour x object x place scenes, 5 templated captions each, in a seeded order."""
    scenes = list(itertools.product(range(len(COLOURS)), range(len(OBJECTS)), range(len(PLACES))))
    random.Random(seed).shuffle(scenes)
    captions = [t.format(c=COLOURS[c], o=OBJECTS[o], p=PLACES[p]) for c, o, p in scenes for t in TEMPLATES]
    return scenes, captions


def scene_features(scenes, dim: int, seed: int) -> torch.Tensor:
    """Fixed random attribute codes summed per scene plus noise: a stand-in for image features."""
    g = torch.Generator().manual_seed(seed)
    codes = [torch.randn(len(v), dim, generator=g) for v in (COLOURS, OBJECTS, PLACES)]
    feats = torch.stack([codes[0][c] + codes[1][o] + codes[2][p] for c, o, p in scenes])
    return feats + 1.5 * torch.randn(feats.shape, generator=g)


class TwoTower(nn.Module):
    def __init__(self, img_dim: int, txt_dim: int, embed_dim: int = 32) -> None:
        super().__init__()
        self.vision_proj = nn.Sequential(nn.Linear(img_dim, 64), nn.GELU(), nn.Linear(64, embed_dim))
        self.text_proj = nn.Linear(txt_dim, embed_dim)
        self.temp = nn.Parameter(torch.tensor(0.07))

    def forward(self, img, txt):
        return F.normalize(self.vision_proj(img), dim=-1), F.normalize(self.text_proj(txt), dim=-1)


def _train(weight, img, txt, rel, steps, seed, batch):
    torch.manual_seed(seed)
    model = TwoTower(img.shape[1], txt.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    n_img = img.shape[0]
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randperm(n_img, generator=g)[:batch]
        cap = ids * 5 + torch.randint(0, 5, (len(ids),), generator=g)  # one caption per image
        v, t = model(img[ids], txt[cap])
        sim = v @ t.t()
        labels = torch.arange(len(ids))
        logits = sim / model.temp.clamp(0.001, 0.5)
        itc = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
        loss = itc + weight * bidirectional_smooth_ndcg_loss(sim, rel[ids][:, cap]) if weight else itc
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def run(cache_dir: str | Path, seed: int = 0, steps: int = 150, batch: int = 64, weight: float = 1.0) -> dict:
    import lavis.processors  # noqa: F401  (registers LAVIS's processors)
    from lavis.common.registry import registry

    start = time.time()
    text_processor = registry.get_processor_class("blip_caption").from_config()
    scenes, raw = make_scenes(seed)
    captions = [text_processor(c) for c in raw]
    print(f"[1/4] {len(scenes)} scenes x 5 captions, cleaned by LAVIS's blip_caption processor:")
    print(f"      {raw[0]!r} -> {captions[0]!r}")

    cache = CaptionEmbeddingCache(cache_dir)
    cached = cache.path_for(captions).exists()
    emb = cache.get(captions, progress=False)
    print(
        f"[2/4] embedded with all-MiniLM-L6-v2 "
        f"({'cache hit' if cached else 'cache built'}: {cache.path_for(captions)})"
    )

    n = len(scenes)
    positive = torch.zeros(n, 5 * n, dtype=torch.bool)
    positive[torch.arange(n).repeat_interleave(5), torch.arange(5 * n)] = True
    rel = rsc_relevance(emb.view(n, 5, -1), emb, positive)
    c0 = captions[0]
    order = rel[0].argsort(descending=True)
    shown = [order[5], order[len(order) // 20], order[len(order) // 2], order[-1]]
    print(f"[3/4] RSC relevance to the scene of {c0!r}:")
    for j in shown:
        print(f"      {rel[0, j].item():.3f}  {captions[j]!r}")

    img = scene_features(scenes, 48, seed)
    train, test = torch.arange(n) < int(0.75 * n), torch.arange(n) >= int(0.75 * n)
    train_caps = train.repeat_interleave(5)
    test_caps = ~train_caps
    results = {}
    print(f"[4/4] training two identical models for {steps} steps (seed {seed}), batch {batch}:")
    for name, w in (("pairwise (ITC)", 0.0), (f"ITC + {weight} x S-NDCG", weight)):
        model = _train(w, img[train], emb[train_caps], rel[train][:, train_caps], steps, seed, batch)
        with torch.no_grad():
            v, t = model(img[test], emb[test_caps])
            sim = v @ t.t()
        r, p = rel[test][:, test_caps], positive[test][:, test_caps]
        results[name] = {
            "i2t_r1": 100 * recall_at_k(sim, p, 1),
            "t2i_r1": 100 * recall_at_k(sim.t(), p.t(), 1),
            "i2t_ndcg10": 100 * ndcg_at_k(sim, r, 10),
            "t2i_ndcg10": 100 * ndcg_at_k(sim.t(), r.t(), 10),
        }
    cols = list(next(iter(results.values())))
    print(f"      {'held-out scenes':<24}" + "".join(f"{c:>12}" for c in cols))
    for name, row in results.items():
        print(f"      {name:<24}" + "".join(f"{row[c]:>12.2f}" for c in cols))
    print(f"done in {time.time() - start:.1f} s")
    return results
