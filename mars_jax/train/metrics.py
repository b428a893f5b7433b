"""Training metrics: interval means (clu.metrics), JSONL / TensorBoard / PNG logs, progress.

Only the main process (``jax.process_index() == 0``) should write logs: build
:class:`MetricLogger` there alone and pass ``enabled=False`` to :class:`Progress` elsewhere.

``metrics.jsonl`` holds one JSON object per logged step, ``{"step": s, "loss": ..., ...}``.
JSON has no NaN or infinity, so non-finite values are written as the strings ``"nan"``,
``"inf"`` and ``"-inf"`` (every line stays valid JSON); :func:`read_metrics` turns them back
into floats.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np
import tqdm
from absl import logging
from clu import metrics as clu_metrics

from mars_jax.train.images import save_png

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
IMAGES_DIR = "images"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

# -- metrics.jsonl ---------------------------------------------------------------------------


def _json_scalar(name: str, value: Any) -> int | float | str | bool:
    """A Python / NumPy / JAX scalar as a JSON value; non-finite floats become strings."""
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"metric {name!r} must be a scalar, got shape {array.shape}")
    item = array.reshape(()).item()
    if isinstance(item, float) and not math.isfinite(item):
        return "nan" if math.isnan(item) else ("inf" if item > 0 else "-inf")
    if not isinstance(item, (bool, int, float)):
        raise ValueError(f"metric {name!r} must be a number, got {value!r}")
    return item


def _encode_record(step: int, scalars: Mapping[str, Any]) -> str:
    if "step" in scalars:
        raise ValueError("'step' is reserved for the step number in metrics.jsonl")
    record = {"step": int(step), **{k: _json_scalar(k, v) for k, v in scalars.items()}}
    return json.dumps(record, allow_nan=False) + "\n"


def _decode_record(line: str) -> dict[str, Any]:
    """One line -> record; raises ValueError on anything but a JSON object with an int step."""
    record = json.loads(line)
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError(f"not a metrics record: {line[:80]!r}")
    return {k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()}


def _complete_lines(text: str) -> list[str]:
    """The file's lines, less a final line without its newline that does not parse.

    Every record is written with its newline in one flushed write: an unterminated last
    line is what a kill in mid-write leaves, unless the kill fell just before the newline.
    """
    lines = text.split("\n")
    tail = lines.pop()  # "" when the text ends with a newline
    if tail:
        try:
            _decode_record(tail)
            lines.append(tail)
        except ValueError:
            logging.warning("metrics.jsonl: dropping a half-written last line %r", tail[:80])
    return lines


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (or a workdir holding one), non-finite values as floats.

    A half-written last line (the writer was killed) is skipped; any other bad line raises.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = []
    for number, line in enumerate(_complete_lines(path.read_text()), start=1):
        try:
            records.append(_decode_record(line))
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from None
    return records


def _truncate_for_resume(path: Path, resume_step: int | None) -> None:
    """Keeps the records with step <= resume_step (all when None) and drops a torn last line.

    Records after the resume step are about to be logged again by the resumed run; lines
    that do not parse are dropped with a warning rather than stopping the run.
    """
    if not path.exists():
        return
    text = path.read_text()
    if resume_step is None and (not text or text.endswith("\n")):
        return
    kept = []
    for line in _complete_lines(text):
        try:
            step = _decode_record(line)["step"]
        except ValueError:
            logging.warning("%s: dropping an unreadable line %r", path, line[:80])
            continue
        if resume_step is None or step <= resume_step:
            kept.append(line + "\n")
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text("".join(kept))
    os.replace(scratch, path)  # atomic: a kill now leaves the old or the new file, whole


# -- writers ---------------------------------------------------------------------------------


class MetricLogger:
    """Writes scalars to ``workdir/metrics.jsonl`` and TensorBoard, images to PNG + TensorBoard.

    ``resume_step``: the step a resumed run restarts from (0 for a fresh run in a workdir
    that may hold an old log). Records after it are removed from metrics.jsonl and hidden
    in TensorBoard (``purge_step``), since the run logs those steps again. None appends to
    whatever is there. Each JSONL record is flushed as it is written, so a SIGKILL loses at
    most the line being written; TensorBoard events are flushed every ``flush_secs``.
    """

    def __init__(self, workdir: str | os.PathLike[str], *, resume_step: int | None = None,
                 tensorboard: bool = True, flush_secs: int = 30):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.workdir / METRICS_FILE
        self.images_dir = self.workdir / IMAGES_DIR
        _truncate_for_resume(self.metrics_path, resume_step)
        self._jsonl: TextIO | None = open(self.metrics_path, "a", encoding="utf-8")
        self._tensorboard = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge_step = None if resume_step is None else resume_step + 1
            self._tensorboard = SummaryWriter(str(self.workdir / TENSORBOARD_DIR),
                                              purge_step=purge_step, flush_secs=flush_secs)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One JSONL record ``{"step": step, **scalars}`` and one TensorBoard scalar per key."""
        if self._jsonl is None:
            raise RuntimeError("MetricLogger is closed")
        line = _encode_record(step, scalars)
        self._jsonl.write(line)
        self._jsonl.flush()
        if self._tensorboard is not None:
            for name, value in scalars.items():
                self._tensorboard.add_scalar(name, float(np.asarray(value)), int(step))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """uint8 ``[H, W, 3]`` images to ``images/{name}_{step:07d}.png`` and TensorBoard.

        A ``/`` in a name (a TensorBoard group) becomes ``_`` in the file name.
        """
        if self._jsonl is None:
            raise RuntimeError("MetricLogger is closed")
        for name, image in images.items():
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"image {name!r} must be uint8 [H, W, 3], got {image.dtype} "
                                 f"{image.shape}")
            save_png(self.images_dir / f"{name.replace('/', '_')}_{int(step):07d}.png", image)
            if self._tensorboard is not None:
                self._tensorboard.add_image(name, image, int(step), dataformats="HWC")

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        """Flushes and closes everything; safe to call twice."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# -- accumulation ----------------------------------------------------------------------------

CORRUPT_METRIC = "data/corrupt_skipped"  # corrupt records replaced (data.skip_corrupt=True)
SUMMED_METRICS = frozenset({CORRUPT_METRIC})  # counts: summed over the interval, not averaged


class MetricAccumulator:
    """Means of per-step scalar metrics over a logging interval (one clu ``Average`` per key).

    The trainer has already fetched each step's scalars to the host (to check they are
    finite), so values are kept on the host and reduced once per interval: per-step device
    dispatches would cost more than a small model's step. Keys may come and go between
    steps: each is averaged over the steps that reported it. Counts (``SUMMED_METRICS``) are
    summed over the interval instead.
    """

    def __init__(self):
        self._values: dict[str, list[float]] = {}

    def update(self, metrics: Mapping[str, Any]) -> None:
        for name, value in metrics.items():
            if np.ndim(value) != 0:
                raise ValueError(f"metric {name!r} must be a scalar, got shape "
                                 f"{np.shape(value)}")
        for name, value in jax.device_get(dict(metrics)).items():
            self._values.setdefault(name, []).append(float(value))

    def compute(self) -> dict[str, float]:
        """The interval means (sums for ``SUMMED_METRICS``) as Python floats (empty before
        the first update)."""
        return {name: float(sum(values)) if name in SUMMED_METRICS
                else float(clu_metrics.Average.from_model_output(
                    np.asarray(values, np.float32)).compute())
                for name, values in self._values.items()}

    def reset(self) -> None:
        self._values = {}

    def __len__(self) -> int:
        """Number of keys seen since the last reset."""
        return len(self._values)


# -- console ---------------------------------------------------------------------------------

CONSOLE_KEYS = ("loss", "mim_rgb", "mim_sar", "cgcl", "mas", "grad_norm", "learning_rate",
                "pairs_per_s", "mfu")
PROGRESS_KEYS = ("loss", "mim_rgb", "mim_sar", "cgcl")
_SHORT_NAMES = {"learning_rate": "lr", "pairs_per_s": "pairs/s"}


def format_number(value: Any) -> str:
    """Four significant digits, ``nan`` / ``inf`` for non-finite values."""
    value = float(np.asarray(value))
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _name_value_pairs(scalars: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    return [f"{_SHORT_NAMES.get(k, k)} {format_number(scalars[k])}" for k in keys
            if k in scalars]


def console_line(step: int, total: int, scalars: Mapping[str, Any],
                 keys: Sequence[str] | None = None) -> str:
    """``step 120/1000 | loss 2.31 | mim_rgb 0.92 | ... | pairs/s 42 | mfu 0.31``.

    ``keys`` picks and orders the terms shown (default :data:`CONSOLE_KEYS`, those present).
    """
    head = f"step {step:>{len(str(total))}}/{total}"
    return " | ".join([head, *_name_value_pairs(scalars, CONSOLE_KEYS if keys is None else keys)])


class Progress:
    """A tqdm bar on stderr: steps, ETA, chosen loss terms and measured pairs/s.

    Until the first :meth:`update` (compile, first steps) a placeholder bar says "starting";
    the first update replaces it by a bar that starts there, so neither the ETA nor the
    pairs/s (wall time between consecutive updates) counts compilation.
    """

    def __init__(self, total_steps: int, initial_step: int = 0, *, pairs_per_step: int,
                 enabled: bool = True, keys: Sequence[str] = PROGRESS_KEYS,
                 file: TextIO | None = None):
        self.total_steps = total_steps
        self.pairs_per_step = pairs_per_step
        self.enabled = enabled
        self.keys = tuple(keys)
        self.pairs_per_second: float | None = None
        self._file = file or sys.stderr
        self._last: tuple[int, float] | None = None  # (step, wall time) of the last update
        self._bar = self._new_bar(initial_step, leave=False, postfix="starting")

    def _new_bar(self, initial_step: int, *, leave: bool = True,
                 postfix: str | None = None) -> tqdm.tqdm:
        return tqdm.tqdm(total=self.total_steps, initial=initial_step, unit="step",
                         file=self._file, dynamic_ncols=True, leave=leave, postfix=postfix,
                         disable=not self.enabled)

    def update(self, step: int, scalars: Mapping[str, Any] | None = None) -> None:
        """``step``: steps completed so far; ``scalars``: the latest metrics, for the postfix."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._last is None:
            self._bar.close()
            self._bar = self._new_bar(step)
        elif step > self._last[0] and now > self._last[1]:
            steps, seconds = step - self._last[0], now - self._last[1]
            self.pairs_per_second = steps * self.pairs_per_step / seconds
        self._last = (step, now)
        terms = _name_value_pairs(scalars or {}, self.keys)
        if self.pairs_per_second is not None:
            terms.append(f"pairs/s {self.pairs_per_second:.1f}")
        advance = step - self._bar.n
        self._bar.set_postfix_str(" ".join(terms), refresh=advance <= 0)
        if advance > 0:
            self._bar.update(advance)

    def write(self, message: str) -> None:
        """Prints a line above the bar without breaking it."""
        if self.enabled:
            tqdm.tqdm.write(message, file=self._file)

    def close(self) -> None:
        """Closes the bar; safe to call twice."""
        self._bar.close()
