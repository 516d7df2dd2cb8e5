"""Failing loudly and reproducing exactly: non-finite guard, size checks, RNG isolation, exact resume
under torchrun, bounded hangs, atomic writes. Runs go through the real CLI in a subprocess."""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_run_yaml

from listwise_ranking.errors import CheckpointError, ConfigError


def _cli(*args, timeout=600, env=None, preexec_fn=None, launcher=None):
    cmd = (launcher or [sys.executable, "-m", "lavis_listwise"]) + list(args)
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        preexec_fn=preexec_fn,
    )


def _torchrun() -> list[str]:
    """``torchrun`` with two local processes; the caller appends the module and its arguments.
    ``--standalone`` binds a free port itself: a fixed one collides with a second test run beside this one."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _assert_user_error(out, *needles):
    """Exit code 1, one ``lavis-listwise: error:`` line holding every needle, no traceback."""
    assert out.returncode == 1, (out.returncode, out.stdout[-2000:], out.stderr[-4000:])
    assert "Traceback" not in out.stderr, out.stderr[-4000:]
    marker = "lavis-listwise: error:"  # after a progress bar's carriage return, if one was showing
    lines = [line[line.index(marker) :] for line in out.stderr.splitlines() if marker in line]
    assert len(lines) == 1, out.stderr[-4000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def run_yaml(tmp_path, tiny_dataset):
    return write_run_yaml(tmp_path / "run.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache")


# ---------------------------------------------------------------------------- 1. non-finite losses
def test_tau_that_overflows_in_float32_is_refused_when_the_config_is_read(tmp_path, run_yaml):
    from lavis_listwise.config import ListwiseConfig

    with pytest.raises(ConfigError, match=r"model\.listwise\.tau = 1e-300"):
        ListwiseConfig.from_cfg({"tau": 1e-300})
    with pytest.raises(ConfigError, match=r"model\.listwise\.tau"):
        ListwiseConfig.from_cfg({"tau": 1e-40})
    assert ListwiseConfig.from_cfg({"tau": 1e-3}).tau == 1e-3

    out = _cli(
        "train", "--cfg-path", str(run_yaml), "--job-id", "job", "--options", "model.listwise.tau=1e-300"
    )
    _assert_user_error(out, "model.listwise.tau")
    assert not list((tmp_path / "out").rglob("*.pth"))


def test_non_finite_loss_stops_at_the_step_and_saves_nothing(tmp_path, run_yaml):
    # weight * S-NDCG overflows float32 at the first step: the total loss is inf
    out = _cli(
        "train", "--cfg-path", str(run_yaml), "--job-id", "job", "--options", "model.listwise.weight=1e39"
    )
    line = _assert_user_error(out, "epoch 0, step 0", "loss = inf", "last good checkpoint: none")
    assert "loss_listwise" in line  # every logged term is listed
    assert not list((tmp_path / "out").rglob("*.pth"))


def test_weights_blowing_up_end_the_run_with_the_last_good_checkpoint(tmp_path, run_yaml):
    """Epoch 0 trains at lr 1e-9, epoch 1 at 1e3: the weights overflow in epoch 1, and LAVIS's ITM
    negative sampling would die in ``torch.multinomial``; the run names the step and epoch 0's file."""
    out = _cli(
        "train", "--cfg-path", str(run_yaml), "--job-id", "job", "--options", "run.max_epoch=3",
        "run.lr_sched=linear_warmup_step_lr", "run.init_lr=1e-9", "run.lr_decay_rate=1e12", "run.min_lr=0",
    )  # fmt: skip
    latest = tmp_path / "out" / "job" / "checkpoint_latest.pth"
    _assert_user_error(out, "training stopped at epoch 1", f"last good checkpoint: {latest} (epoch 0)")
    assert "multinomial" not in out.stderr.replace("torch.multinomial", "").split("error:")[0]
    checkpoint = torch.load(latest, weights_only=False)
    assert checkpoint["epoch"] == 0  # nothing was saved after the non-finite step
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


# ---------------------------------------------------------------------------- 3. sizes
def test_k_test_larger_than_the_split_fails_before_training(run_yaml):
    out = _cli("train", "--cfg-path", str(run_yaml), "--job-id", "job", "--options", "run.k_test=100")
    _assert_user_error(out, "run.k_test = 100", "8 images", "40 captions")
    assert "train epoch" not in out.stderr + out.stdout


@pytest.mark.parametrize(
    "options, needle",
    [
        (["run.k_test=0"], "run.k_test must be a positive integer"),
        (["run.batch_size_train=0"], "run.batch_size_train must be a positive integer"),
        (["run.batch_size_eval=0"], "run.batch_size_eval must be a positive integer"),
        (["run.batch_size_train=100"], "run.batch_size_train = 100 is larger than"),
        (["model.queue_size=60"], "model.queue_size = 60 must be a multiple of the global batch"),
    ],
)
def test_sizes_are_checked_when_the_datasets_are_built(run_yaml, options, needle):
    import argparse

    import lavis.tasks as tasks
    from lavis.common.config import Config

    import lavis_listwise  # noqa: F401

    cfg = Config(argparse.Namespace(cfg_path=str(run_yaml), options=options))
    task = tasks.setup_task(cfg)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        task.build_datasets(cfg)


# ---------------------------------------------------------------------------- 4. RNG isolation
def test_sentence_encoder_leaves_the_global_rng_untouched():
    from listwise_ranking.relevance import SentenceEncoder

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    emb = SentenceEncoder().encode(["a red circle on the left.", "two shapes."], progress=False)
    assert emb.shape == (2, 384)
    assert torch.equal(before[0], torch.get_rng_state())
    assert np.array_equal(before[1], np.random.get_state()[1]) and before[2] == random.getstate()


def test_a_saved_rng_state_loads_weights_only_and_restores_every_generator(tmp_path):
    """A checkpoint's RNG states load with ``torch.load(weights_only=True)`` (LAVIS's load_checkpoint
    reads a run's checkpoint that way as ``model.finetuned``) and restore torch, numpy and random."""
    from listwise_ranking.rng import rng_state, set_rng_state

    np.random.seed(3)
    np.random.randn()  # numpy keeps the second Box-Muller draw: has_gauss is part of the state
    random.seed(4)
    torch.save({"rng": rng_state()}, tmp_path / "rng.pth")
    drawn = (np.random.randn(3), random.random(), torch.rand(2))
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    again = (np.random.randn(3), random.random(), torch.rand(2))
    assert np.array_equal(drawn[0], again[0]) and drawn[1] == again[1] and torch.equal(drawn[2], again[2])


# ---------------------------------------------------------------------------- 5. exact resume, 2 ranks
@pytest.mark.slow
def test_two_process_resume_equals_the_uninterrupted_run(tmp_path, run_yaml):
    """gloo on CPU: 2 epochs in one go == epoch 0, then a resume from its checkpoint, bit for bit."""
    launcher = _torchrun() + ["-m", "lavis_listwise"]
    out = _cli("train", "--cfg-path", str(run_yaml), "--job-id", "straight", "--options",
               "run.max_epoch=2", "run.keep_epoch_checkpoints=true", launcher=launcher)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    straight = tmp_path / "out" / "straight"
    launcher = _torchrun() + ["-m", "lavis_listwise"]
    out = _cli("train", "--cfg-path", str(run_yaml), "--job-id", "resumed", "--options", "run.max_epoch=2",
               f"run.resume_ckpt_path={straight / 'epoch_0.pth'}", launcher=launcher)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    a = torch.load(straight / "checkpoint_latest.pth", weights_only=False)
    b = torch.load(tmp_path / "out" / "resumed" / "checkpoint_latest.pth", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1 and len(a["rng_per_rank"]) == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)

    def rows(job):
        lines = (tmp_path / "out" / job / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    epoch1 = [r for r in rows("straight") if r["split"] == "train" and r["epoch"] == 1]
    assert epoch1 == [r for r in rows("resumed") if r["split"] == "train"]
    test = [r for r in rows("straight") if r["split"] == "test"]
    assert test == [r for r in rows("resumed") if r["split"] == "test"]


# ---------------------------------------------------------------------------- 6. a stalled rank
def _rank_pid(parent: int, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_stalled_rank_ends_the_job_within_dist_timeout(tmp_path, run_yaml):
    timeout_s = 10
    cmd = _torchrun() + ["-m", "lavis_listwise", "train", "--cfg-path", str(run_yaml), "--job-id", "job",
                         "--options", "run.max_epoch=1000", f"run.dist_timeout={timeout_s}"]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: [lines.append((time.time(), ln)) for ln in proc.stderr], daemon=True
    )
    reader.start()
    stalled = None
    try:
        deadline = time.time() + 300
        while not any("train epoch 1" in ln for _, ln in lines):  # training is under way on both ranks
            assert proc.poll() is None and time.time() < deadline, "".join(ln for _, ln in lines)[-4000:]
            time.sleep(0.2)
        stalled = _rank_pid(proc.pid, 1)
        assert stalled is not None
        os.kill(stalled, signal.SIGSTOP)
        stopped_at = time.time()
        proc.wait(timeout=timeout_s + 120)
        reader.join(timeout=10)
        errors = [(t, ln) for t, ln in lines if "lavis-listwise: error:" in ln]
        assert errors, "".join(ln for _, ln in lines)[-4000:]
        when, message = errors[0]
        assert "rank 0 of 2" in message and f"run.dist_timeout = {timeout_s} s" in message
        assert when - stopped_at < timeout_s + 30
        assert proc.returncode != 0
    finally:
        if stalled is not None:
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(stalled, sig)
                except ProcessLookupError:
                    pass
        if proc.poll() is None:
            proc.kill()


# ---------------------------------------------------------------------------- 7. partial files
def _limit_file_size(limit_bytes: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_a_checkpoint_that_cannot_be_written_leaves_no_partial_file(tmp_path, run_yaml):
    # The tiny model's checkpoint is ~35 MB: at an 8 MB file-size limit its write fails midway.
    out = _cli("train", "--cfg-path", str(run_yaml), "--job-id", "job", preexec_fn=_limit_file_size(8 << 20))
    path = tmp_path / "out" / "job" / "checkpoint_best.pth"
    _assert_user_error(out, f"could not write checkpoint {path}", "File too large")
    assert not list((tmp_path / "out").rglob("*.pth")) and not list((tmp_path / "out").rglob("*.tmp"))


def test_an_unwritable_cache_directory_warns_once_and_trains(tmp_path, run_yaml):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would be\n")
    out = _cli("train", "--cfg-path", str(run_yaml), "--job-id", "job",
               "--options", f"model.listwise.relevance.cache_dir={blocker / 'cache'}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    assert (out.stdout + out.stderr).count("cannot be written") == 1
    assert (tmp_path / "out" / "job" / "test_results.json").is_file()


def test_a_resume_path_that_is_not_a_checkpoint_is_one_message(tmp_path, run_yaml):
    from lavis_listwise.runners.runner_listwise import load_checkpoint_file

    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    full = tmp_path / "full.pth"
    torch.save({"model": {}, "optimizer": {}, "epoch": 0}, full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    for bad in (text, cut, tmp_path / "missing.pth"):
        with pytest.raises(CheckpointError, match=r"run\.resume_ckpt_path"):
            load_checkpoint_file(bad)
    torch.save({"weights": {}}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="not a runner_listwise training checkpoint"):
        load_checkpoint_file(tmp_path / "weights.pth")
    assert load_checkpoint_file(full)["epoch"] == 0

    out = _cli(
        "train", "--cfg-path", str(run_yaml), "--job-id", "job", "--options", f"run.resume_ckpt_path={cut}"
    )
    _assert_user_error(out, "run.resume_ckpt_path", "is not a loadable torch checkpoint")
