"""Checkpoints that must fit, checkpoints that would not be read, job directories that two runs must
not share, and training batches of one image. Real tiny models, real files, the real CLI."""

import fcntl
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import write_run_yaml
from lavis.common.registry import registry
from omegaconf import OmegaConf
from retrieval_batch import caption_table, retrieval_batch, tiny_model, tiny_model_cfg
from stock_twins import blip2_stock_twin, stock_twin

import lavis_listwise  # noqa: F401
from lavis_listwise.models import (
    AlbefRetrievalListwise,
    Blip2RetrievalListwise,
    BlipRetrievalListwise,
    ClipRetrievalListwise,
)
from listwise_ranking.errors import CheckpointError, ConfigError

PAIRWISE = (BlipRetrievalListwise, AlbefRetrievalListwise, Blip2RetrievalListwise)


pytestmark = pytest.mark.usefixtures("one_process_group")  # conftest.py


def _build(cls, seed=0, listwise=None, **model):
    cfg = tiny_model_cfg(cls, **(listwise or {}))
    cfg.update(model)
    torch.manual_seed(seed)
    return cls.from_config(cfg)


def _save(path, state_dict, wrap=True):
    torch.save({"model": state_dict} if wrap else state_dict, path)
    return str(path)


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("clip") / "clip.pth", tiny_model(ClipRetrievalListwise).state_dict())


# ---------------------------------------------------------------------------- 1. checkpoints must fit
@pytest.mark.parametrize("cls", PAIRWISE, ids=lambda c: c.__name__)
def test_another_architectures_finetuned_checkpoint_is_refused(cls, clip_checkpoint):
    """LAVIS's load_checkpoint loads a CLIP checkpoint into BLIP / ALBEF / BLIP-2 with strict=False: nothing
    fits, one INFO line, and the run evaluates random weights with rc 0."""
    with pytest.raises(CheckpointError) as err:
        _build(cls, load_finetuned=True, finetuned=clip_checkpoint)
    message = str(err.value)
    assert message.startswith(f"model.finetuned: {clip_checkpoint} does not fit this model"), message
    assert "missing keys: " in message and "unexpected keys: positional_embedding" in message
    assert "\n" not in message


@pytest.mark.parametrize("cls", PAIRWISE, ids=lambda c: c.__name__)
def test_a_truncated_state_dict_is_refused_and_a_full_one_loads(cls, tmp_path):
    state = _build(cls, seed=1).state_dict()
    full = _save(tmp_path / "full.pth", state)
    loaded = _build(cls, seed=2, load_finetuned=True, finetuned=full).state_dict()
    for name, value in state.items():
        assert torch.equal(loaded[name], value), name
    head = next(k for k in state if k.startswith("itm_head.") or k.startswith("text_proj."))
    partial = _save(tmp_path / "partial.pth", {k: v for k, v in state.items() if k != head})
    with pytest.raises(CheckpointError, match=rf"model\.finetuned: .*partial\.pth .*missing keys: {head}"):
        _build(cls, load_finetuned=True, finetuned=partial)


def test_a_checkpoint_of_lavis_runner_without_frozen_parameters_loads(tmp_path):
    """LAVIS's RunnerBase._save_checkpoint drops parameters with requires_grad=False (BLIP's momentum
    encoders): such a checkpoint is accepted, and the momentum encoders start from the loaded ones."""
    source = _build(BlipRetrievalListwise, seed=1)
    frozen = {n for n, p in source.named_parameters() if not p.requires_grad}
    assert frozen and all("_m." in n for n in frozen)  # the momentum encoders and projections
    path = _save(tmp_path / "lavis.pth", {k: v for k, v in source.state_dict().items() if k not in frozen})
    model = _build(BlipRetrievalListwise, seed=2, load_finetuned=True, finetuned=path)
    for online, momentum in model.model_pairs:
        for p, q in zip(online.parameters(), momentum.parameters()):
            assert torch.equal(p, q)
    assert torch.equal(model.visual_encoder_m.pos_embed, source.visual_encoder.pos_embed)
    # a part of the frozen parameters is a truncated file, not LAVIS's runner
    one = sorted(frozen)[0]
    some = _save(tmp_path / "some.pth", {k: v for k, v in source.state_dict().items() if k != one})
    with pytest.raises(CheckpointError, match=rf"missing keys: {one}"):
        _build(BlipRetrievalListwise, load_finetuned=True, finetuned=some)


def test_a_pretrained_checkpoint_must_hold_every_trainable_parameter(tmp_path):
    """``load_from_pretrained`` keeps LAVIS's interpolation and drops other heads, but a checkpoint that
    leaves the text tower out (LAVIS: loads, logs an INFO line) is refused; a complete one loads."""
    state = _build(BlipRetrievalListwise, seed=1).state_dict()
    extra = {**state, "text_decoder.cls.bias": torch.zeros(3)}  # a pre-training head: fine
    model = _build(BlipRetrievalListwise, seed=2, pretrained=_save(tmp_path / "pre.pth", extra))
    assert torch.equal(model.state_dict()["text_proj.weight"], state["text_proj.weight"])
    no_text = {k: v for k, v in state.items() if not k.startswith("text_encoder.")}
    path = _save(tmp_path / "no_text.pth", no_text)
    with pytest.raises(CheckpointError, match=r"model\.pretrained: .*no_text\.pth .*text_encoder\."):
        _build(BlipRetrievalListwise, pretrained=path)


def test_a_clip_pretrained_file_that_does_not_fit_names_the_key(tmp_path):
    blip = _save(tmp_path / "blip.pth", _build(BlipRetrievalListwise).state_dict(), wrap=False)
    with pytest.raises(CheckpointError, match=r"model\.pretrained: .*blip\.pth does not fit .*missing keys"):
        _build(ClipRetrievalListwise, pretrained=blip)


# ---------------------------------------------------------------------------- 2. checkpoints not read
@pytest.mark.parametrize("cls", (*PAIRWISE, ClipRetrievalListwise), ids=lambda c: c.__name__)
def test_a_finetuned_checkpoint_that_would_not_be_read_is_refused(cls, clip_checkpoint):
    with pytest.raises(ConfigError) as err:
        _build(cls, load_finetuned=False, finetuned=clip_checkpoint)
    message = str(err.value)
    assert "model.finetuned" in message and "model.load_finetuned is False" in message
    assert clip_checkpoint in message


def test_a_pretrained_checkpoint_that_would_not_be_read_is_refused(tmp_path, clip_checkpoint):
    with pytest.raises(ConfigError, match=r"model\.pretrained is set .* model\.load_finetuned is True"):
        _build(BlipRetrievalListwise, load_finetuned=True, finetuned=clip_checkpoint, pretrained="x.pth")


@pytest.mark.parametrize("arch", [f"{a}_retrieval_listwise" for a in ("blip", "albef", "blip2")])
def test_the_model_types_own_checkpoints_pass_the_unread_check(arch):
    """LAVIS's fine-tuning YAMLs set ``load_finetuned: False`` over a model type whose YAML names both
    checkpoints: those defaults are not the user's, and pass."""
    from lavis_listwise.models.checkpoints import refuse_unread_checkpoints

    cls = registry.get_model_class(arch)
    cfg = OmegaConf.load(cls.default_config_path("coco")).model
    assert cfg.finetuned and cfg.pretrained
    for model_type in (None, "coco"):  # from_pretrained("coco") passes the YAML without model_type
        cfg.model_type = model_type
        for load_finetuned in (True, False):
            cfg.load_finetuned = load_finetuned
            refuse_unread_checkpoints(cls, cfg)


# ---------------------------------------------------------------------------- 3. unreadable files
@pytest.mark.parametrize("cls", (BlipRetrievalListwise, ClipRetrievalListwise), ids=lambda c: c.__name__)
def test_truncated_foreign_and_wrong_shape_finetuned_files_name_key_and_file(cls, tmp_path):
    state = _build(cls).state_dict()
    full = _save(tmp_path / "full.pth", state)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(open(full, "rb").read()[: os.path.getsize(full) // 2])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    nothing = _save(tmp_path / "list.pth", [1, 2, 3], wrap=False)
    for bad, needle in (
        (cut, "is not a loadable torch checkpoint"),
        (text, "is not a loadable torch checkpoint"),
        (nothing, "holds no model state dict"),
    ):
        with pytest.raises(CheckpointError) as err:
            _build(cls, load_finetuned=True, finetuned=str(bad))
        message = str(err.value)
        assert message.startswith(f"model.finetuned: '{bad}' {needle}") and "\n" not in message, message
    name = next(k for k, v in state.items() if v.dim() == 2)
    wrong = _save(tmp_path / "wrong.pth", {**state, name: torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match=rf"model\.finetuned: .*wrong\.pth .*another shape: {name} "):
        _build(cls, load_finetuned=True, finetuned=wrong)


def test_a_resume_checkpoint_of_another_model_names_its_keys(tmp_path, tiny_dataset):
    import argparse

    from lavis.common.config import Config

    from lavis_listwise.runners.runner_listwise import RunnerListwise

    cfg = Config(argparse.Namespace(cfg_path=str(_run_yaml(tmp_path, tiny_dataset)), options=[]))
    model = _build(BlipRetrievalListwise)
    other = _build(ClipRetrievalListwise).state_dict()
    path = tmp_path / "other.pth"
    torch.save({"model": other, "optimizer": {}, "epoch": 0}, path)
    runner = RunnerListwise(cfg=cfg, task=None, model=model, datasets={}, job_id="resume")
    with pytest.raises(CheckpointError) as err:
        runner._load_checkpoint(str(path))
    message = str(err.value)
    assert message.startswith(f"run.resume_ckpt_path: {path} does not fit this model: missing keys: ")
    assert "unexpected keys: positional_embedding" in message and "\n" not in message
    runner.release_output_dir()


# ---------------------------------------------------------------------------- 6. job directories
def _cli(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "lavis_listwise", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )


def _error_line(out):
    assert out.returncode == 1, (out.returncode, out.stderr[-4000:])
    assert "Traceback" not in out.stderr, out.stderr[-4000:]
    lines = [ln for ln in out.stderr.splitlines() if "lavis-listwise: error:" in ln]
    assert len(lines) == 1, out.stderr[-4000:]
    return lines[0]


def _run_yaml(tmp_path, data):
    return write_run_yaml(tmp_path / "run.yaml", data, tmp_path / "out", tmp_path / "cache", weight=0.0)


@pytest.mark.slow
def test_a_job_directory_in_use_is_refused(tmp_path, tiny_dataset):
    """A second run with the job id of a run still going refuses, naming the directory (LAVIS: both
    write one metrics.jsonl and the first run's checkpoints are overwritten)."""
    cfg = _run_yaml(tmp_path, tiny_dataset)
    job = tmp_path / "out" / "job"
    job.mkdir(parents=True)
    with open(job / ".lock", "a+") as held:  # what the first run's main process holds while it runs
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 on elsewhere, started earlier\n")
        held.flush()
        out = _cli("train", "--cfg-path", str(cfg), "--job-id", "job")
    line = _error_line(out)
    assert f"job directory {job} is in use by another run (pid 1 on elsewhere" in line
    assert not (job / "metrics.jsonl").exists() and not list(job.glob("*.pth"))


@pytest.mark.slow
def test_a_finished_job_directory_is_kept_resumed_or_overwritten_on_request(tmp_path, tiny_dataset):
    cfg = _run_yaml(tmp_path, tiny_dataset)
    job = tmp_path / "out" / "job"
    first = _cli("train", "--cfg-path", str(cfg), "--job-id", "job")
    assert first.returncode == 0, first.stderr[-4000:]
    best = (job / "checkpoint_best.pth").read_bytes()
    rows = (job / "metrics.jsonl").read_text()

    again = _cli("train", "--cfg-path", str(cfg), "--job-id", "job")
    line = _error_line(again)
    assert f"job directory {job} holds the outputs of an earlier run" in line
    assert "run.overwrite_output=True" in line and "run.resume_ckpt_path" in line
    assert (job / "checkpoint_best.pth").read_bytes() == best and (job / "metrics.jsonl").read_text() == rows

    # continuing the interrupted or finished job in its own directory stays possible
    resumed = _cli("train", "--cfg-path", str(cfg), "--job-id", "job", "--options", "run.max_epoch=2",
                   f"run.resume_ckpt_path={job / 'checkpoint_latest.pth'}")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    rows = [json.loads(r) for r in (job / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["split"] == "train"] == [0, 1]  # one log, both epochs

    # replacing it takes the explicit option: the earlier run's outputs go first
    ev = _cli("evaluate", "--cfg-path", str(cfg), "--job-id", "job",
              "--options", "run.evaluate=True", "run.overwrite_output=True")  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-4000:]
    assert not list(job.glob("*.pth")) and not (job / "metrics.jsonl").exists()
    assert not (job / "test_results.json").exists() and (job / "evaluate_results.json").is_file()


def test_default_job_ids_do_not_collide():
    from lavis_listwise.commands.train import default_job_id

    ids = {default_job_id() for _ in range(50)}  # within one second: LAVIS's ids were per minute
    assert len(ids) == 50
    assert all(len(i.split("-")[0]) == 14 for i in ids)  # %Y%m%d%H%M%S first: ids still sort by time


# ---------------------------------------------------------------------------- 8. one-image batches
def _twin(model):
    return blip2_stock_twin(model) if isinstance(model, Blip2RetrievalListwise) else stock_twin(model)


@pytest.mark.parametrize(
    "cls, model",
    [
        (BlipRetrievalListwise, {}),
        (BlipRetrievalListwise, {"negative_all_rank": True}),
        (AlbefRetrievalListwise, {}),
        (Blip2RetrievalListwise, {}),
    ],
    ids=["blip", "blip-negative_all_rank", "albef", "blip2"],
)
def test_a_batch_of_one_image_trains_itm_on_its_positives(cls, model):
    """LAVIS's forward dies in torch.multinomial ("invalid multinomial distribution") when every caption
    of the batch belongs to one image; the step trains ITM on the positive pairs, ITC as LAVIS."""
    ours = _build(cls, listwise={"weight": 0.5}, **model).train()
    ours.set_caption_embeddings(caption_table())
    stock = _twin(ours).train()
    samples = retrieval_batch(n_images=1, per_image=4)
    if cls is not Blip2RetrievalListwise:  # LAVIS's Blip2Qformer masks only the sample itself
        with pytest.raises(RuntimeError, match="multinomial"):
            torch.manual_seed(0)
            stock(samples)
    torch.manual_seed(0)
    out = ours(samples)
    assert torch.isfinite(out.loss) and out.loss_listwise.item() > 0
    logits, labels = out.intermediate_output.itm_logits, out.intermediate_output.itm_labels
    assert labels.tolist() == [1] * 4
    torch.testing.assert_close(out.loss_itm, F.cross_entropy(logits, labels))
    out.loss.backward()
    if cls is not Blip2RetrievalListwise:
        # ITC's side effects are the stock step's: LAVIS updated momentum encoders and queues before dying
        for name in ("image_queue", "text_queue", "idx_queue"):
            assert torch.equal(getattr(ours, name), getattr(stock, name)), name
        for p, q in zip(ours.visual_encoder_m.parameters(), stock.visual_encoder_m.parameters()):
            assert torch.equal(p, q)
    # an ordinary batch afterwards is the stock step again
    samples = retrieval_batch(n_images=2, per_image=2)
    plain = _build(cls, listwise={"weight": 0.0}, **model).train()
    assert len(plain(samples).intermediate_output.itm_labels) == 12


@pytest.mark.slow
def test_a_one_image_training_set_trains(tmp_path, tiny_dataset):
    """The whole training split is one image (LAVIS: dies at the first step)."""
    train = json.loads((tiny_dataset / "annotations" / "train.json").read_text())
    one = [a for a in train if a["image_id"] == train[0]["image_id"]]
    path = tmp_path / "one_image_train.json"
    path.write_text(json.dumps(one))
    cfg = _run_yaml(tmp_path, tiny_dataset)
    out = _cli("train", "--cfg-path", str(cfg), "--job-id", "one", "--options",
               "run.batch_size_train=4", "model.queue_size=8", "model.listwise.weight=0.5",
               f"datasets.retrieval_listwise_json.build_info.annotations.train.storage={path}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    rows = [json.loads(r) for r in (tmp_path / "out" / "one" / "metrics.jsonl").read_text().splitlines()]
    assert next(r for r in rows if r["split"] == "train")["loss_itm"]
