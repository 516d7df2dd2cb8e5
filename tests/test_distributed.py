"""Two gloo processes holding half a global batch each equal one process holding all of it."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

GLOBAL_BATCH = 8


class ListwiseHead(nn.Module):
    """The grad-carrying ITC projections of a model, feeding its listwise term."""

    def __init__(self, model):
        super().__init__()
        self.vision_proj, self.text_proj = model.vision_proj, model.text_proj
        self._model = [model]  # not a submodule: DDP only syncs the projections

    def forward(self, image_cls, text_cls, samples):
        image_feat = F.normalize(self.vision_proj(image_cls), dim=-1)
        text_feat = F.normalize(self.text_proj(text_cls), dim=-1)
        return self._model[0].listwise_term(image_feat, text_feat, samples)


def _setup():
    """Same model, caption table and global batch in every process."""
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    import lavis_listwise  # noqa: F401

    cls = registry.get_model_class("blip_retrieval_listwise")
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    torch.manual_seed(0)
    model = cls.from_config(cfg)
    g = torch.Generator().manual_seed(1)
    model.set_caption_embeddings(F.normalize(torch.randn(40, 384, generator=g), dim=-1))
    ids = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5])
    caps = torch.arange(40).view(8, 5)
    samples = {
        "image_id": ids,
        "caption_index": caps[ids, torch.arange(8) % 5],
        "image_caption_index": caps[ids],
    }
    image_cls = torch.randn(GLOBAL_BATCH, 64, generator=g)
    text_cls = torch.randn(GLOBAL_BATCH, 64, generator=g)
    return model, samples, image_cls, text_cls


def _step(head, samples, image_cls, text_cls, rows):
    local = {k: v[rows] for k, v in samples.items()}
    loss = head(image_cls[rows], text_cls[rows], local)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in head.module.named_parameters()}


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, samples, image_cls, text_cls = _setup()
        head = DDP(ListwiseHead(model))
        per = GLOBAL_BATCH // world
        loss, grads = _step(head, samples, image_cls, text_cls, slice(rank * per, (rank + 1) * per))
        if rank == 0:
            torch.save({"loss": loss, "grads": grads}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_equal_one(tmp_path):
    out_file = tmp_path / "rank0.pt"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    two = torch.load(out_file)

    model, samples, image_cls, text_cls = _setup()  # no process group here: one process, whole batch
    head = ListwiseHead(model)
    head.module = head  # same access path as under DDP in _step
    loss, grads = _step(head, samples, image_cls, text_cls, slice(0, GLOBAL_BATCH))

    torch.testing.assert_close(two["loss"], loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == two["grads"].keys()
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)
