"""One synthetic training batch for the tiny retrieval models (shared by the model and stack tests)."""

from __future__ import annotations

import torch


def retrieval_batch(n_images: int = 4, per_image: int = 2, seed: int = 0, image_size: int = 32) -> dict:
    """``n_images * per_image`` samples, ``per_image`` captions per image (so same-image positives),
    random images ``[B, 3, image_size, image_size]`` and captions from a fixed word list; the
    ``caption_index`` / ``image_caption_index`` keys the listwise term reads (5 captions per image)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n_images).repeat_interleave(per_image)
    words = ["red", "blue", "green", "small", "large", "circle", "square", "star"]
    texts = [" ".join(words[j] for j in torch.randint(0, 8, (4,), generator=g).tolist()) for _ in ids]
    caps = torch.arange(n_images * 5).view(n_images, 5)
    return {
        "image": torch.randn(len(ids), 3, image_size, image_size, generator=g),
        "text_input": texts,
        "image_id": ids,
        "caption_index": caps[ids, torch.arange(len(ids)) % per_image],
        "image_caption_index": caps[ids],
        "epoch": 0,
        "iters": 1,
        "num_iters_per_epoch": 10,
    }


def tiny_model_cfg(cls, **listwise):
    """The ``model:`` section of ``cls``'s ``tiny`` default YAML with ``model.listwise`` overrides."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.listwise.update(listwise)
    return cfg


def tiny_model(cls, seed: int = 0, **listwise):
    """``cls``'s tiny model built from its default YAML after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return cls.from_config(tiny_model_cfg(cls, **listwise))


def caption_table(n: int = 20, seed: int = 0) -> torch.Tensor:
    """``[n, 384]`` random unit caption embeddings (a stand-in RSC caption table of MiniLM's width)."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 384, generator=g), dim=-1)
