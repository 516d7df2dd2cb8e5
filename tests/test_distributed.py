"""Two gloo processes holding half a global batch each equal one process holding all of it; a process
group the plugin sets up ends with the block that made it."""

import os
import subprocess
import sys

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


def _tiny_model_and_split_positives(arch: str):
    """The tiny ``arch``, its caption table and a global batch with two captions of images 0 and 3,
    each pair split across the two processes' halves (positives across ranks)."""
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    import lavis_listwise  # noqa: F401

    cls = registry.get_model_class(arch)
    torch.manual_seed(0)
    model = cls.from_config(OmegaConf.load(cls.default_config_path("tiny")).model)
    g = torch.Generator().manual_seed(1)
    model.set_caption_embeddings(F.normalize(torch.randn(40, 384, generator=g), dim=-1))
    ids = torch.tensor([0, 1, 2, 3, 0, 4, 5, 3])
    caps = torch.arange(40).view(8, 5)
    words = ["red", "blue", "green", "small", "large", "circle", "square", "star"]
    samples = {
        "image": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g),
        "text_input": [" ".join(words[(i + j) % 8] for j in range(i % 3 + 2)) for i in range(GLOBAL_BATCH)],
        "image_id": ids,
        "caption_index": caps[ids, torch.arange(8) % 5],
        "image_caption_index": caps[ids],
    }
    return model, samples


def _clip_setup():
    return _tiny_model_and_split_positives("clip_retrieval_listwise")


def _clip_step(model, samples, rows):
    """One forward and backward of this process's rows; the logged losses and every gradient."""
    local = {k: v[rows] for k, v in samples.items()}
    out = model(local)
    out.loss.backward()
    losses = torch.stack([out.loss, out.loss_itc, out.loss_listwise]).detach()
    params = getattr(model, "module", model).named_parameters()  # under DDP: the wrapped model's
    return losses, {n: p.grad.clone() for n, p in params}


def _clip_worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, samples = _clip_setup()
        per = GLOBAL_BATCH // world
        losses, grads = _clip_step(DDP(model.train()), samples, slice(rank * per, (rank + 1) * per))
        if rank == 0:
            torch.save({"losses": losses, "grads": grads}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_clip_two_processes_equal_one(tmp_path):
    """CLIP's contrastive loss (image-id-aware targets across ranks) and its listwise term, with
    features gathered with gradient: two processes of half the batch train as one with all of it."""
    out_file = tmp_path / "rank0.pt"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_clip_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    two = torch.load(out_file)

    model, samples = _clip_setup()  # one process, whole batch
    losses, grads = _clip_step(model.train(), samples, slice(0, GLOBAL_BATCH))

    assert losses[2] > 0  # the listwise term is on
    torch.testing.assert_close(two["losses"], losses, rtol=1e-5, atol=1e-6)
    assert grads.keys() == two["grads"].keys()
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _blip2_setup():
    model, samples = _tiny_model_and_split_positives("blip2_retrieval_listwise")
    return model.eval(), samples  # eval: dropout off; the forward is the training one either way


def _blip2_step(model, samples, rows, world):
    """This process's rows: ITC (averaged over ranks, as DDP averages gradients) and the listwise term,
    their gradients summed over ranks / world (what DDP does), and the drawn ITM negatives' image ids.

    ITM and LM are left out of the comparison: ITM draws its negatives at random per rank, and LM
    averages over each rank's own tokens."""
    local = {k: v[rows] for k, v in samples.items()}
    out = model(local)
    (out.loss_itc + out.loss_listwise).backward()
    losses = torch.stack([out.loss_itc, out.loss_listwise]).detach()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if world > 1:
        dist.all_reduce(losses)
        losses[1] /= world  # every rank computes the whole listwise term; ITC is the mean over ranks
        losses[0] /= world
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
    draws = [out.intermediate_output]
    with torch.no_grad():
        draws += [model(local).intermediate_output for _ in range(5)]  # more ITM draws to check
    drawn = torch.stack([d for i in draws for d in (i.itm_negative_images, i.itm_negative_texts)])
    return losses, grads, samples["image_id"][drawn], local["image_id"]  # [12, B] ids drawn, [B] own


def _blip2_worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, samples = _blip2_setup()
        per = GLOBAL_BATCH // world
        torch.manual_seed(rank)
        losses, grads, drawn_ids, own_ids = _blip2_step(
            model, samples, slice(rank * per, (rank + 1) * per), world
        )
        if rank == 0:
            torch.save({"losses": losses, "grads": grads, "drawn": drawn_ids, "own": own_ids}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_blip2_two_processes_equal_one(tmp_path):
    """BLIP-2's ITC (image-id-aware targets across ranks, the other ranks' features without gradient as
    in LAVIS) and its listwise term: two processes of half the batch train as one with all of it; the
    ITM negatives drawn across ranks are never of the same image."""
    out_file = tmp_path / "rank0.pt"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_blip2_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    two = torch.load(out_file)
    # image 0's second caption and image 3's first are on rank 1: never drawn as rank 0's negatives
    assert not (two["drawn"] == two["own"]).any()

    model, samples = _blip2_setup()  # one process, whole batch
    losses, grads, _, _ = _blip2_step(model, samples, slice(0, GLOBAL_BATCH), 1)

    assert losses[1] > 0  # the listwise term is on
    torch.testing.assert_close(two["losses"], losses, rtol=1e-5, atol=1e-6)
    assert grads.keys() == two["grads"].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert grads["query_tokens"].abs().sum() > 0 and grads["text_proj.weight"].abs().sum() > 0


def test_process_group_released_destroys_only_the_group_made_inside_it():
    # in a fresh process: the test session may hold a group of its own (in-process runs make one)
    script = """
import torch.distributed as dist
from omegaconf import OmegaConf
from lavis_listwise.distributed import init_distributed, process_group_released

cfg = OmegaConf.create({"device": "cpu"})
with process_group_released():
    init_distributed(cfg)
    assert dist.is_initialized()
assert not dist.is_initialized(), "the group made inside the block outlived it"
try:
    with process_group_released():
        init_distributed(cfg)
        raise KeyError("boom")
except KeyError:
    pass
assert not dist.is_initialized(), "an error inside the block kept the group"
init_distributed(cfg)
with process_group_released():
    pass
assert dist.is_initialized(), "a group made before the block was destroyed"
dist.destroy_process_group()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
