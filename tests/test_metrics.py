"""Metric logs (JSONL, TensorBoard, PNG), resume truncation, accumulation, progress, console."""

import io
import json
import math
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from mars_jax.train import metrics
from mars_jax.train.metrics import (
    MetricAccumulator,
    MetricLogger,
    Progress,
    console_line,
    read_metrics,
)


def strict_json(line: str) -> dict:
    """json.loads that rejects the NaN / Infinity tokens Python would otherwise accept."""
    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=reject)


def read_events(logdir: Path) -> list[event_pb2.Event]:
    """Every event of the TFRecord event files in ``logdir`` (length, crc, data, crc)."""
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event()
            event.ParseFromString(data[offset + 12:offset + 12 + length])
            events.append(event)
            offset += 12 + length + 4
    return events


def scalar_events(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(logdir):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def write_steps(workdir: Path, steps, **kwargs) -> None:
    with MetricLogger(workdir, **kwargs) as logger:
        for step in steps:
            logger.write_scalars(step, {"loss": 1.0 / step})


def test_scalars_to_jsonl_and_tensorboard(tmp_path):
    with MetricLogger(tmp_path) as logger:
        logger.write_scalars(1, {"loss": jnp.float32(2.5), "mim_rgb": np.float64(0.75),
                                 "pairs_seen": 8, "cgcl": float("nan"), "grad_norm": math.inf,
                                 "mas": -math.inf})
        # Flushed line by line: another reader sees the record before close (or a SIGKILL).
        assert strict_json((tmp_path / "metrics.jsonl").read_text())["step"] == 1
        logger.write_scalars(2, {"loss": 2.0})

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    first = strict_json(lines[0])  # valid JSON although three values are not finite
    assert first == {"step": 1, "loss": 2.5, "mim_rgb": 0.75, "pairs_seen": 8, "cgcl": "nan",
                     "grad_norm": "inf", "mas": "-inf"}
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert math.isnan(records[0]["cgcl"])
    assert records[0]["grad_norm"] == math.inf and records[0]["mas"] == -math.inf

    scalars = scalar_events(tmp_path / "tensorboard")
    assert scalars["loss"] == [(1, 2.5), (2, 2.0)]
    assert math.isnan(scalars["cgcl"][0][1])


def test_write_scalars_rejects_non_scalars(tmp_path):
    with MetricLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(ValueError, match="scalar"):
            logger.write_scalars(1, {"loss": np.ones(3)})
        with pytest.raises(ValueError, match="reserved"):
            logger.write_scalars(1, {"step": 3})
    assert read_metrics(tmp_path) == []
    assert not (tmp_path / "tensorboard").exists()


def test_resume_drops_later_steps_and_a_half_written_line(tmp_path):
    write_steps(tmp_path, range(1, 6))
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 6, "loss": 0.1')  # SIGKILL in mid-write
    with pytest.raises(ValueError):
        json.loads(path.read_text().splitlines()[-1])
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]  # readers skip it too

    write_steps(tmp_path, [4, 5], resume_step=3)  # the resumed run redoes steps 4 and 5
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    assert [strict_json(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5]

    # TensorBoard hides the first run's steps after the resume point (purge_step = 4).
    starts = [e.step for e in read_events(tmp_path / "tensorboard")
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [4]


def test_open_without_resume_appends_and_repairs_the_tail(tmp_path):
    write_steps(tmp_path, [1, 2], tensorboard=False)
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')
    write_steps(tmp_path, [3], tensorboard=False)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]

    # A record cut just before its newline is whole: kept.
    path.write_text(path.read_text() + '{"step": 4, "loss": 0.25}')
    write_steps(tmp_path, [5], tensorboard=False)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]

    write_steps(tmp_path, [], resume_step=0, tensorboard=False)  # a fresh run: empty log
    assert read_metrics(path) == []


def test_read_metrics_fails_on_a_corrupt_interior_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(path)


def test_images_to_png_and_tensorboard(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    with MetricLogger(tmp_path) as logger:
        logger.write_images(120, {"reconstruction": image, "val/pca": image[::-1]})
        with pytest.raises(ValueError, match="uint8"):
            logger.write_images(120, {"bad": image.astype(np.float32)})
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "images" / "reconstruction_0000120.png")), image)
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "images" / "val_pca_0000120.png")), image[::-1])
    tags = {v.tag for e in read_events(tmp_path / "tensorboard") for v in e.summary.value
            if v.HasField("image")}
    assert tags == {"reconstruction", "val/pca"}


def test_closed_logger_refuses_writes(tmp_path):
    logger = MetricLogger(tmp_path, tensorboard=False)
    logger.close()
    logger.close()
    with pytest.raises(RuntimeError, match="closed"):
        logger.write_scalars(1, {"loss": 1.0})


def test_accumulator_means_with_dynamic_keys():
    acc = MetricAccumulator()
    assert acc.compute() == {}
    acc.update({"loss": jnp.float32(1.0), "mim_rgb": np.float64(0.5)})
    acc.update({"loss": 2.0, "mim_rgb": jnp.bfloat16(1.5), "mas": 0.25})
    acc.update({"loss": jnp.asarray(6, jnp.int32)})
    result = acc.compute()
    assert result == pytest.approx({"loss": 3.0, "mim_rgb": 1.0, "mas": 0.25})
    assert all(type(v) is float for v in result.values())
    assert len(acc) == 3
    acc.reset()
    assert acc.compute() == {}
    acc.update({"loss": 4.0})
    assert acc.compute() == {"loss": 4.0}
    with pytest.raises(ValueError, match="scalar"):
        acc.update({"loss": jnp.ones(2)})


def test_progress_reports_pairs_per_second_excluding_the_first_update(monkeypatch):
    clock = iter([160.0, 162.0, 164.0])  # step 1 done after compiling, then 10 steps / 2 s
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    progress = Progress(100, 0, pairs_per_step=8, file=out)
    progress.update(1, {"loss": 3.0})
    assert progress.pairs_per_second is None
    progress.update(11, {"loss": 2.5, "mim_rgb": 0.125, "grad_norm": 9.0})
    assert progress.pairs_per_second == pytest.approx(10 * 8 / 2.0)
    progress.update(21, {"loss": 2.0})
    assert progress.pairs_per_second == pytest.approx(10 * 8 / 2.0)
    progress.close()
    text = out.getvalue()
    assert "starting" in text and "21/100" in text
    assert "loss 2" in text and "pairs/s 40.0" in text
    assert "grad_norm" not in text  # not a chosen term

    quiet = io.StringIO()
    disabled = Progress(100, 0, pairs_per_step=8, enabled=False, file=quiet)
    disabled.update(1, {"loss": 1.0})
    disabled.write("hello")
    disabled.close()
    assert quiet.getvalue() == ""


def test_console_line():
    scalars = {"loss": 2.31234, "mim_rgb": 0.5, "cgcl_patch": 4.0, "pairs_per_s": 42.0,
               "mfu": 0.3112, "learning_rate": 1.5e-4, "cgcl": float("nan")}
    assert console_line(120, 1000, scalars) == (
        "step  120/1000 | loss 2.312 | mim_rgb 0.5 | cgcl nan | lr 0.00015 | pairs/s 42 "
        "| mfu 0.3112")
    assert console_line(7, 9, scalars, keys=("cgcl_patch", "absent")) == "step 7/9 | cgcl_patch 4"
