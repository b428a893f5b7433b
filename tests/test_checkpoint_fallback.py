"""A damaged latest checkpoint: resume falls back to the newest one that restores (kept, named),
or stops naming it with ``checkpoint.strict_resume``."""

import json
import shutil

import jax
import numpy as np
import pytest

from mars_jax.train.loop import CheckpointRestoreError
from mars_jax.train.pretrain import train
from tests.helpers import tiny_run_config


def config(steps: int, strict: bool = False):
    return tiny_run_config(steps, constant_lr=True,
                           checkpoint={"async_save": False, "strict_resume": strict})


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def truncate_largest_data_file(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()
             and p.name not in ("_METADATA", "_sharding", "commit_success.txt")
             and p.stat().st_size > 0]
    largest = max(files, key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 3])


def delete_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 6-step run, and a run stopped at 4 (checkpoints 2 and 4)."""
    quiet = dict(log=lambda *_: None, devices=jax.devices()[:1])
    straight = tmp_path_factory.mktemp("straight")
    train(config(6), straight, **quiet)
    stopped = tmp_path_factory.mktemp("stopped")
    train(config(4), stopped, **quiet)
    return losses(straight), stopped


@pytest.mark.slow  # four short runs, each compiling: ~1.5 minutes on 2 cores
@pytest.mark.parametrize("damage", [truncate_largest_data_file, delete_metadata])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(damage, runs, tmp_path):
    want, stopped = runs
    workdir = tmp_path / "run"
    shutil.copytree(stopped, workdir)
    damage(workdir / "checkpoints" / "4")
    lines = []
    train(config(6), workdir, log=lines.append, devices=jax.devices()[:1])
    assert any(line.startswith("skipped damaged checkpoint step 4 (") for line in lines), lines
    assert any("resumed from step 2" in line and "skipped damaged steps [4]" in line
               for line in lines), lines
    assert (workdir / "checkpoints" / "4.damaged").is_dir()  # kept, never deleted
    got = losses(workdir)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([got[s] for s in (3, 4, 5, 6)], [want[s] for s in (3, 4, 5, 6)],
                               rtol=1e-6)
    assert (workdir / "checkpoints" / "6").is_dir()

    strict = tmp_path / "strict"
    shutil.copytree(stopped, strict)
    damage(strict / "checkpoints" / "4")
    with pytest.raises(CheckpointRestoreError, match=r"checkpoint step 4 in .* does not "
                                                     r"restore .*strict_resume=True stops"):
        train(config(6, strict=True), strict, log=lambda *_: None, devices=jax.devices()[:1])
    assert (strict / "checkpoints" / "4").is_dir()  # strict mode touches nothing
