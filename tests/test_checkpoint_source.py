"""Where ``model.finetuned`` / ``model.pretrained`` come from: LAVIS's download cache, a local file, or a
URL that cannot be fetched. Offline by construction: ``.invalid`` never resolves (RFC 2606)."""

import pytest
import torch
from lavis.common.registry import registry
from omegaconf import OmegaConf

import lavis_listwise  # noqa: F401
from listwise_ranking.errors import CheckpointError

ARCH = "blip_retrieval_listwise"
URL = "https://checkpoints.invalid/lavis-listwise/blip_tiny_for_tests.pth"


def build(seed=0, **model):
    cls = registry.get_model_class(ARCH)
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.update(model)
    torch.manual_seed(seed)
    return cls.from_config(cfg)


@pytest.fixture
def lavis_cache(tmp_path, monkeypatch):
    """LAVIS's download cache (timm's hub directory) under a temporary TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.parametrize("key", ["finetuned", "pretrained"])
def test_a_url_that_cannot_be_fetched_is_one_message_naming_url_key_and_cache(lavis_cache, key):
    with pytest.raises(CheckpointError) as raised:
        build(**{"load_finetuned": key == "finetuned", key: URL})
    message = str(raised.value)
    assert message.startswith(f"model.{key}: cannot download {URL} (checkpoints.invalid:443: "), message
    assert f"set model.{key} to its local path" in message
    assert str(lavis_cache / "blip_tiny_for_tests.pth") in message and "\n" not in message
    assert not (lavis_cache / "blip_tiny_for_tests.pth").exists()


def test_a_checkpoint_already_in_lavis_cache_loads_without_network(lavis_cache):
    source = build(seed=0)
    lavis_cache.mkdir(parents=True, exist_ok=True)
    torch.save({"model": source.state_dict()}, lavis_cache / "blip_tiny_for_tests.pth")
    fresh = build(seed=1)
    loaded = build(seed=1, load_finetuned=True, finetuned=URL)
    expected, got = source.state_dict(), loaded.state_dict()
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in expected.items())  # seeds differ
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_a_local_checkpoint_that_is_not_a_file_names_the_key(tmp_path):
    missing = tmp_path / "model_base.pth"
    with pytest.raises(
        CheckpointError, match=rf"^model.pretrained: '{missing}' is neither a file nor an http"
    ):
        build(load_finetuned=False, pretrained=str(missing))
