"""The benchmark scripts run end to end on tiny shapes (their figures are not asserted)."""

import json
import os
import subprocess
import sys

import pytest


def run(repo_root, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(repo_root), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device (hlo_report simulates its own 8)
    done = subprocess.run([sys.executable, *args], cwd=repo_root, env=env, timeout=timeout,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_hlo_report_compiles_both_layouts(repo_root):
    out = run(repo_root, "bench/hlo_report.py", "--config=configs/pretrain.py:tiny",
              "--config.input.image_size=32", "--config.data.synth_size=64",
              "--remat=none", "--scan_layers=false,true", "--json")
    rows = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines()
            if line.startswith("hlo_report {")]
    assert [r["scan_layers"] for r in rows] == [False, True]
    assert "remat=none scan=True" in out
    # Scanned stacks hold one block each in the program, unscanned ones every layer.
    assert rows[1]["traced_dots"] < rows[0]["traced_dots"]


@pytest.mark.slow
def test_pretrain_step_bench_reports_the_layout(repo_root):
    out = run(repo_root, "bench/pretrain_step.py", "--config=configs/pretrain.py:tiny",
              "--config.model.scan_layers=True", "--config.optim.grad_accum_steps=2",
              "--steps=1", "--repeats=1")
    line = next(line for line in out.splitlines() if line.startswith("pretrain_step "))
    result = json.loads(line.split(" ", 1)[1])
    assert result["scan_layers"] is True and result["pairs_per_s"] > 0


def test_alignment_check_bench_runs(repo_root):
    out = run(repo_root, "bench/alignment_check.py", "--size", "128", "--count", "2",
              "--shift", "12,-8", timeout=120)
    assert "2 scenes of 128 px" in out and "--max-shift 16: aligned flagged" in out


@pytest.mark.slow
def test_registration_check_reports_shortcut_registration_and_equivariance(repo_root,
                                                                          tmp_path):
    # A 2-step pretraining run with position jitter through the command line, then the
    # zero-shot figures of its checkpoint.
    workdir = tmp_path / "pretrain"
    run(repo_root, "-m", "mars_jax.main", "--config=configs/pretrain.py:tiny",
        f"--workdir={workdir}", "--config.total_steps=2", "--config.input.batch_size=4",
        "--config.input.image_size=64", "--config.loss.position_jitter=2",
        "--config.log.progress=False", "--config.log.images_every_steps=0")
    out = run(repo_root, "bench/registration_check.py", f"--checkpoint={workdir}",
              "--pairs=1", "--size=64", "--extra=4,-2,1")
    line = next(line for line in out.splitlines() if line.startswith("registration_check "))
    record = json.loads(line.split(" ", 1)[1])
    assert record["pairs"] == 1 and record["size"] == 64
    assert 0.0 <= record["position_shortcut"] <= 1.0
    assert record["chance"] == pytest.approx(1 / 8**2)  # 64 px, the tiny patch of 8
    assert record["extra"] == [4.0, -2.0, 1.0] and record["extra_corner_error"] > 4.0
    assert record["identity_corner_error"] > 0.0
