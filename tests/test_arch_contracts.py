"""Contracts every registered plugin arch keeps, parametrised over the registry (as timm's tests run
over ``list_models()``): a new arch in ``lavis_listwise/models/`` is checked here without editing
this file, except for one entry in :data:`STOCK_TWINS` (how to build LAVIS's own model with its
weights), which the ``weight: 0`` and state-dict contracts ask for by name."""

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from lavis.common.registry import registry
from lavis.models.albef_models.albef_retrieval import AlbefRetrieval
from lavis.models.blip2_models.blip2_qformer import Blip2Qformer
from lavis.models.blip_models.blip_retrieval import BlipRetrieval
from lavis.models.clip_models.model import CLIP
from lavis.processors.blip_processors import BlipCaptionProcessor, BlipImageEvalProcessor
from omegaconf import OmegaConf
from retrieval_batch import caption_table, retrieval_batch
from stock_twins import blip2_stock_twin, clip_stock_twin, stock_twin
from torch.utils.data import DataLoader

import lavis_listwise  # noqa: F401
from lavis_listwise.config import ListwiseConfig
from lavis_listwise.config_check import plugin_archs
from lavis_listwise.datasets.retrieval_listwise import ListwiseRetrievalEvalDataset
from lavis_listwise.evaluation import (
    RerankView,
    ScoringOptions,
    lavis_model_retrieval_scores,
    retrieval_scores,
)

ARCHS = plugin_archs()


@dataclass(frozen=True)
class StockTwin:
    """An arch's contract fixture: LAVIS's own class of it and how to build that class with a listwise
    model's weights, offline (``tests/stock_twins.py``)."""

    lavis_class: type
    build: Callable  # (listwise model, its ``model:`` config) -> the LAVIS model, weights loaded strictly
    #: The batch the ``weight: 0`` model equals the LAVIS model on. BLIP's and ALBEF's ITC targets are
    #: image-id-aware already, so a batch with two captions per image; BLIP-2's and CLIP's LAVIS losses
    #: use batch-position targets where these archs use image-id-aware ones (on purpose:
    #: test_blip2_retrieval.py / test_clip_retrieval.py show the difference), so they agree only on a
    #: batch whose image ids are all distinct.
    captions_per_image: int
    #: The same arithmetic (bit-identical losses and gradients); CLIP's image-id-aware loss is
    #: ``log_softmax`` against soft targets where LAVIS's ``ClipLoss`` is ``cross_entropy`` against
    #: ``arange``: equal up to float32 rounding.
    bit_identical: bool


STOCK_TWINS = {
    "blip_retrieval_listwise": StockTwin(BlipRetrieval, lambda model, cfg: stock_twin(model), 2, True),
    "albef_retrieval_listwise": StockTwin(AlbefRetrieval, lambda model, cfg: stock_twin(model), 2, True),
    "blip2_retrieval_listwise": StockTwin(Blip2Qformer, lambda model, cfg: blip2_stock_twin(model), 1, True),
    "clip_retrieval_listwise": StockTwin(
        CLIP, lambda model, cfg: clip_stock_twin(model, cfg.get("model_config") or cfg.model_type), 1, False
    ),
}


def test_the_registry_holds_the_four_archs():
    assert set(ARCHS) >= {
        "blip_retrieval_listwise",
        "albef_retrieval_listwise",
        "blip2_retrieval_listwise",
        "clip_retrieval_listwise",
    }


@pytest.fixture(scope="module")
def eval_loader(tmp_path_factory):
    from lavis_listwise.demo.synthetic import generate_synthetic_dataset

    root = generate_synthetic_dataset(
        tmp_path_factory.mktemp("contracts") / "data", n_train=4, n_val=4, n_test=12, image_size=32, seed=5
    )
    dataset = ListwiseRetrievalEvalDataset(
        BlipImageEvalProcessor(image_size=32),
        BlipCaptionProcessor(),
        str(root),
        [str(root / "annotations" / "test.json")],
    )
    return DataLoader(dataset, batch_size=8)


def _tiny_cfg(arch: str, **listwise):
    """The ``model:`` section of ``arch``'s ``tiny`` YAML (``configs/models/*_listwise_tiny.yaml``)."""
    cfg = OmegaConf.load(registry.get_model_class(arch).default_config_path("tiny")).model
    cfg.listwise.update(listwise)
    return cfg


@dataclass
class Pair:
    cfg: object  # the ``model:`` config both were built from
    model: torch.nn.Module  # the listwise arch, ``model.listwise.weight: 0``
    stock: torch.nn.Module | None  # LAVIS's own model with its weights; None: no STOCK_TWINS entry


@pytest.fixture(scope="module")
def pair(arch, one_process_group):
    """``arch``'s tiny model with ``weight: 0`` and its stock twin, built once per module (each test
    sets the modes and state it needs). The process group (conftest.py): LAVIS's ``Blip2Qformer`` and
    ``CLIP`` losses ask ``torch.distributed`` for the rank and world size."""
    cfg = _tiny_cfg(arch, weight=0.0)
    torch.manual_seed(0)
    model = registry.get_model_class(arch).from_config(cfg)
    twin = STOCK_TWINS.get(arch)
    return Pair(cfg, model, twin.build(model, cfg) if twin else None)


def _twin(arch: str, pair: Pair) -> tuple[StockTwin, torch.nn.Module]:
    if pair.stock is None:
        pytest.fail(f"{arch}: add how to build LAVIS's own model of it to STOCK_TWINS (tests/stock_twins.py)")
    return STOCK_TWINS[arch], pair.stock


def _forward(model, samples, seed=0):
    torch.manual_seed(seed)  # dropout and the ITM hard negatives (torch.multinomial) draw from it
    return model(samples)


def _losses(output) -> dict:
    return {k: v for k, v in output.items() if k.startswith("loss") and v is not None}


@pytest.mark.parametrize("arch", ARCHS, scope="module")
def test_the_model_owns_its_retrieval_scoring(arch, pair, eval_loader):
    """The task scores a plugin model through the model's own ``retrieval_scores`` (so adding an arch
    touches no task or evaluation file), and that is the path LAVIS's own class of the arch gets."""
    model = pair.model.eval()
    assert callable(getattr(model, "retrieval_scores", None))
    dataset = eval_loader.dataset
    n_img, n_txt = len(dataset.image), len(dataset.text)
    views = [
        RerankView(torch.arange(n_img), torch.arange(n_txt)),
        RerankView(torch.arange(6), torch.arange(30)),
    ]
    options = ScoringOptions(k_test=4, progress=False)
    with torch.no_grad():
        ours = retrieval_scores(model, eval_loader, views, options)
        lavis_path = lavis_model_retrieval_scores(model, eval_loader, views, options)
    assert len(ours) == len(views)
    for (i2t, t2i), (i2t_ref, t2i_ref), view in zip(ours, lavis_path, views, strict=True):
        assert i2t.shape == (len(view.image_index), len(view.text_index)) and t2i.shape == i2t.shape[::-1]
        np.testing.assert_array_equal(i2t, i2t_ref)
        np.testing.assert_array_equal(t2i, t2i_ref)


@pytest.mark.parametrize("arch", ARCHS, scope="module")
def test_weight_zero_is_the_stock_lavis_model(arch, pair):
    """``model.listwise.weight: 0`` is LAVIS's own model: the same losses and the same gradients, on the
    same batch with the same weights (bit for bit where the arithmetic is the same)."""
    twin, stock = _twin(arch, pair)
    model = pair.model.train()
    stock.train().load_state_dict(model.state_dict())  # other tests may have run a forward on model
    # LAVIS's own class (a subclass only where the twin replaces LAVIS's downloading constructors)
    assert twin.lavis_class in type(stock).__mro__[:2] and not isinstance(stock, type(model))
    model.zero_grad(set_to_none=True)
    stock.zero_grad(set_to_none=True)
    samples = retrieval_batch(n_images=4, per_image=twin.captions_per_image)
    ours, theirs = _forward(model, samples), _forward(stock, samples)
    stock_losses = _losses(theirs)
    assert "loss" in stock_losses and set(stock_losses) <= set(_losses(ours))
    assert ours.loss_listwise == 0

    def assert_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
        if twin.bit_identical:
            assert torch.equal(a, b), what
        else:
            torch.testing.assert_close(a, b, msg=what)

    for key, value in stock_losses.items():
        assert_same(ours[key], value, key)
    ours.loss.backward()
    theirs.loss.backward()
    pairs = zip(model.named_parameters(), stock.named_parameters(), strict=True)
    for (name, p), (stock_name, q) in pairs:
        assert name == stock_name and (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert_same(p.grad, q.grad, name)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS, scope="module")
def test_state_dicts_load_strictly_both_ways_with_lavis(arch, pair):
    """A LAVIS checkpoint of the arch loads strictly into the listwise model and the listwise model's
    into LAVIS's class: the same keys in the same order and shapes (the listwise model saves nothing
    of its own, its caption table included)."""
    _, stock = _twin(arch, pair)
    model = pair.model
    model.set_caption_embeddings(caption_table())
    ours, theirs = model.state_dict(), stock.state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    original = {k: v.clone() for k, v in ours.items()}
    shifted = {k: v + 1 if v.is_floating_point() else v.clone() for k, v in theirs.items()}
    try:
        model.load_state_dict(shifted)  # strict, LAVIS -> listwise
        torch.testing.assert_close(model.state_dict(), shifted, rtol=0, atol=0)
        stock.load_state_dict(original)  # strict, listwise -> LAVIS
        torch.testing.assert_close(stock.state_dict(), original, rtol=0, atol=0)
    finally:
        model.load_state_dict(original)
        stock.load_state_dict(original)


@pytest.mark.parametrize("arch", ARCHS, scope="module")
def test_from_config_round_trip(arch, pair):
    """The ``model:`` config, written out and read back, builds the same model: the state dict of one
    built from it loads strictly into another, which then gives the same outputs in eval mode, and the
    ``model.listwise`` settings survive."""
    model = pair.model.eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    cfg = OmegaConf.create(OmegaConf.to_yaml(pair.cfg))
    assert cfg == pair.cfg
    torch.manual_seed(1)  # another initialisation, so that the load is what makes them equal
    again = registry.get_model_class(arch).from_config(cfg).eval()
    assert type(again) is type(model)
    assert again.listwise_cfg == model.listwise_cfg == ListwiseConfig.from_cfg(pair.cfg.listwise)
    assert not all(torch.equal(a, b) for a, b in zip(again.parameters(), model.parameters(), strict=True))
    buffer.seek(0)
    again.load_state_dict(torch.load(buffer))  # strict
    samples = retrieval_batch(n_images=2, per_image=1)
    with torch.no_grad():
        ours, theirs = _forward(again, samples), _forward(model, samples)
        features = zip(again.listwise_features(ours), model.listwise_features(theirs), strict=True)
        for a, b in features:  # the grad-carrying ITC features the listwise term ranks by
            assert torch.equal(a, b)
    assert _losses(ours).keys() == _losses(theirs).keys()
    for key, value in _losses(theirs).items():
        assert torch.equal(ours[key], value), key
