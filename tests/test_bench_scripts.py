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
