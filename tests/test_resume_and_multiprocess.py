"""Real processes: SIGTERM / SIGKILL and resume give the uninterrupted run's losses exactly;
2 processes x 4 devices give the same losses as 1 process x 8 devices."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

STEPS = 8


def command(workdir, *extra):
    return [sys.executable, "-m", "mars_jax.main", "--config=configs/pretrain.py:tiny",
            f"--workdir={workdir}", f"--config.total_steps={STEPS}",
            "--config.input.image_size=32", "--config.data.synth_size=64",
            "--config.model.encoder.depth=1",
            "--config.optim.warmup_steps=2", "--config.log.every_steps=1",
            "--config.log.images_every_steps=0", "--config.log.progress=False",
            "--config.log.tensorboard=False", "--config.checkpoint.every_steps=2", *extra]


def environment(devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                        "--xla_backend_optimization_level=0")
    return env


def metrics(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        rows[row["step"]] = row
    return rows


def run(workdir, repo_root, devices=1, *extra):
    done = subprocess.run(command(workdir, *extra), cwd=repo_root, env=environment(devices),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def interrupt(workdir, repo_root, sig, after_step):
    """Starts a run and sends ``sig`` once ``after_step`` has been logged."""
    proc = subprocess.Popen(command(workdir), cwd=repo_root, env=environment(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while max(metrics(workdir), default=0) < after_step:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "run did not progress"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def assert_same_losses(run_a, run_b):
    assert sorted(run_a) == sorted(run_b) == list(range(1, STEPS + 1))
    for step in run_a:
        for key in ("loss", "mim_rgb", "mim_sar", "cgcl", "grad_norm"):
            assert run_a[step][key] == run_b[step][key], (step, key)  # bit-identical on CPU


@pytest.fixture(scope="module")
def reference(tmp_path_factory, repo_root):
    """An uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference")
    run(workdir, repo_root)
    return metrics(workdir)


@pytest.mark.slow  # training processes killed and resumed: ~3 min on 2 cores
def test_sigkill_and_resume_give_the_same_losses(tmp_path, repo_root, reference):
    code, _, _ = interrupt(tmp_path, repo_root, signal.SIGKILL, after_step=5)
    assert code == -signal.SIGKILL
    saved = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved, "a checkpoint every 2 steps must exist by step 5"
    # A checkpoint directory left mid-write must never be restored: plant one at a later step.
    (tmp_path / "checkpoints" / f"{STEPS - 1}.orbax-checkpoint-tmp-123").mkdir()
    resumed = run(tmp_path, repo_root)
    assert "resumed from step" in resumed.stdout
    assert_same_losses(reference, metrics(tmp_path))


@pytest.mark.slow
def test_sigterm_saves_then_resumes(tmp_path, repo_root, reference):
    code, out, _ = interrupt(tmp_path, repo_root, signal.SIGTERM, after_step=3)
    assert code == 0 and "stopped by SIGTERM after step" in out
    stopped_at = int(out.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert (tmp_path / "checkpoints" / str(stopped_at)).is_dir()  # saved off-schedule
    run(tmp_path, repo_root)
    assert_same_losses(reference, metrics(tmp_path))


MESH = ("--config.mesh.data=4", "--config.mesh.fsdp=2")


@pytest.fixture(scope="module")
def single_reference(tmp_path_factory, repo_root):
    """One process with 8 devices on the mesh the two-process runs use."""
    workdir = tmp_path_factory.mktemp("single")
    run(workdir, repo_root, 8, *MESH)
    return metrics(workdir)


def start_two_processes(workdir, repo_root):
    port = portpicker.pick_unused_port()
    procs = []
    for index in range(2):
        extra = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 f"--process_id={index}", *MESH]
        procs.append(subprocess.Popen(command(workdir, *extra), cwd=repo_root,
                                      env=environment(4), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs) -> list[str]:
    """Waits for every process (none is left running) and reports each one's stderr tail
    when any failed: a peer's error often explains why process 0 stopped."""
    results = []
    try:
        for proc in procs:
            results.append(proc.communicate(timeout=600))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    failed = [(i, proc.returncode, err)
              for i, (proc, (_, err)) in enumerate(zip(procs, results, strict=True))
              if proc.returncode != 0]
    assert not failed, "\n".join(f"process {i} exited with {code}:\n{err[-2500:]}"
                                  for i, code, err in failed)
    return [out for out, _ in results]


def assert_close_losses(got, want):
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in want:
        for key in ("loss", "mim_rgb", "mim_sar", "cgcl", "grad_norm"):
            np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-5,
                                       err_msg=f"step {step} {key}")


@pytest.mark.slow  # three processes compiling on two cores: ~2 minutes; CI runs -m slow too
def test_two_processes_match_one(tmp_path, repo_root, single_reference):
    finish(start_two_processes(tmp_path / "multi", repo_root))
    assert_close_losses(metrics(tmp_path / "multi"), single_reference)


@pytest.mark.slow
def test_sigterm_on_one_process_stops_every_process_at_one_step(tmp_path, repo_root,
                                                                 single_reference):
    # jax's preemption service (read through orbax's reached_preemption) agrees on one step:
    # no per-step collective, yet the host that got no signal stops and saves there too.
    procs = start_two_processes(tmp_path, repo_root)
    deadline = time.time() + 300
    while max(metrics(tmp_path), default=0) < 3:
        assert all(p.poll() is None for p in procs), "a process died before step 3"
        assert time.time() < deadline, "run did not progress"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # process 0, which writes the logs, gets nothing
    outs = finish(procs)
    stops = [out.split("stopped by SIGTERM after step ")[1].split(";")[0] for out in outs]
    assert stops[0] == stops[1], stops
    assert int(stops[0]) < STEPS and (tmp_path / "checkpoints" / stops[0]).is_dir()
    finish(start_two_processes(tmp_path, repo_root))  # resumes
    assert_close_losses(metrics(tmp_path), single_reference)
