"""Contracts every registered plugin arch keeps, parametrised over the registry (as timm's tests run
over ``list_models()``): a new arch in ``lavis_listwise/models/`` is checked here without editing
this file."""

import numpy as np
import pytest
import torch
from lavis.common.registry import registry
from lavis.processors.blip_processors import BlipCaptionProcessor, BlipImageEvalProcessor
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

import lavis_listwise  # noqa: F401
from lavis_listwise.config_check import plugin_archs
from lavis_listwise.datasets.retrieval_listwise import ListwiseRetrievalEvalDataset
from lavis_listwise.evaluation import (
    RerankView,
    ScoringOptions,
    lavis_model_retrieval_scores,
    retrieval_scores,
)

ARCHS = plugin_archs()


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


def _tiny(arch: str):
    cls = registry.get_model_class(arch)
    torch.manual_seed(0)
    return cls.from_config(OmegaConf.load(cls.default_config_path("tiny")).model).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_model_owns_its_retrieval_scoring(arch, eval_loader):
    """The task scores a plugin model through the model's own ``retrieval_scores`` (so adding an arch
    touches no task or evaluation file), and that is the path LAVIS's own class of the arch gets."""
    model = _tiny(arch)
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
