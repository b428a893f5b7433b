"""Save failures: a full disk stops the run with one message naming the last good checkpoint,
which stays intact; failed asynchronous saves and log writes are reported, not lost."""

import errno
import os
import shutil
import subprocess
import sys
from collections import namedtuple

import jax
import orbax.checkpoint as ocp
import pytest

from mars_jax.train import checkpoint as checkpoint_module
from mars_jax.train.checkpoint import Checkpointer, CheckpointSaveError
from mars_jax.train.pretrain import initial_state, make_input, make_plan, model_and_optimizer
from mars_jax.train.pretrain import train as train_run
from tests.helpers import tiny_run_config


def config(steps: int):
    return tiny_run_config(steps, log={"every_steps": 2})


Usage = namedtuple("Usage", "total used free")


@pytest.mark.slow  # two short runs: ~35 s
def test_full_disk_stops_before_writing_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                           monkeypatch):
    real = shutil.disk_usage
    calls = []

    def usage(path):  # the disk fills up after the first checkpoint
        calls.append(path)
        return real(path) if len(calls) == 1 else Usage(10 * 2**30, 10 * 2**30, 2**20)

    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", usage)
    with pytest.raises(CheckpointSaveError, match=r"saving checkpoint step 4 to .* failed: "
                                                  r"the disk is full .*needs about .* MiB, "
                                                  r"1.0 MiB are free.*Last good checkpoint: "
                                                  r"step 2 .*it is intact"):
        train_run(config(6), tmp_path, log=lambda *_: None, devices=jax.devices()[:1])
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["2"]  # nothing half-written beside it
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", real)
    lines = []
    train_run(config(6), tmp_path, log=lines.append, devices=jax.devices()[:1])
    assert any("resumed from step 2" in line for line in lines)  # the good one restores


def test_a_failed_asynchronous_save_is_raised_at_the_next_save_and_at_close(tmp_path,
                                                                           monkeypatch):
    plan = make_plan(config(4), devices=jax.devices()[:1])
    _, _, shardings, create = model_and_optimizer(plan, 0, 4)
    state = initial_state(plan, shardings, create)
    data = iter(make_input(plan))
    checkpointer = Checkpointer(tmp_path, async_save=True)
    checkpointer.save(1, state, data)
    checkpointer.wait()

    def failed(self):  # what orbax raises once a background write has failed
        raise ValueError("RESOURCE_EXHAUSTED: Error writing ...: No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", failed)
    with pytest.raises(CheckpointSaveError, match=r"saving checkpoint step 1 .*disk is full.*"
                                                  r"Last good checkpoint: step 1"):
        checkpointer.save(2, state, data)
    with pytest.raises(CheckpointSaveError, match="disk is full"):
        checkpointer.wait()
    checkpointer.close(quiet=True)  # while an error is already on its way: no second raise


def test_a_save_error_is_wrapped_naming_the_step(tmp_path, monkeypatch):
    plan = make_plan(config(4), devices=jax.devices()[:1])
    _, _, shardings, create = model_and_optimizer(plan, 0, 4)
    state = initial_state(plan, shardings, create)
    checkpointer = Checkpointer(tmp_path, async_save=False)

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(ocp.CheckpointManager, "save", refuse)
    with pytest.raises(CheckpointSaveError, match=r"saving checkpoint step 3 .*"
                                                  r"PermissionError.*Last good checkpoint: "
                                                  r"step None"):
        checkpointer.save(3, state, iter(make_input(plan)))
    checkpointer.close(quiet=True)


def test_log_write_failures_are_reported_once(tmp_path):
    from mars_jax.train.config import LogConfig
    from mars_jax.train.loop import Reporter

    lines = []
    reporter = Reporter(tmp_path, LogConfig(progress=False, tensorboard=False), start=0,
                        total=4, examples_per_step=2, log=lines.append)

    def broken(step, values):
        raise OSError(errno.ENOSPC, "No space left on device")

    reporter.logger.write_scalars = broken
    for step in (1, 2, 3):
        reporter.add({"loss": 1.0})
        reporter.report(step)
    reporter.close()
    warnings = [line for line in lines if line.startswith("warning: writing logs")]
    assert len(warnings) == 1 and "No space left" in warnings[0]
    assert reporter.write_failures == 3


def _mount_small_tmpfs(path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
def test_a_real_full_disk_ends_with_one_message_and_exit_1(tmp_path, repo_root):
    disk = tmp_path / "disk"
    if not _mount_small_tmpfs(disk):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        env = dict(os.environ)
        env.pop("XLA_FLAGS", None)
        done = subprocess.run(
            [sys.executable, "-m", "mars_jax.main", "--config=configs/pretrain.py:tiny",
             f"--workdir={disk / 'w'}", "--config.total_steps=12",
             "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=5",
             "--config.log.progress=False", "--config.log.images_every_steps=0"],
            cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 1, done.stderr[-3000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "disk is full" in errors[0], done.stderr[-3000:]
        good = int(errors[0].split("Last good checkpoint: step ")[1].split(" ")[0])
        assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) < 20
        shutil.copytree(disk / "w", tmp_path / "moved")  # room again: it resumes from there
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    resumed = subprocess.run(
        [sys.executable, "-m", "mars_jax.main", "--config=configs/pretrain.py:tiny",
         f"--workdir={tmp_path / 'moved'}", f"--config.total_steps={good + 2}",
         "--config.checkpoint.every_steps=2", "--config.log.progress=False",
         "--config.log.images_every_steps=0"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {good}" in resumed.stdout
