"""Pieces of a training loop shared by pretraining and fine-tuning.

  restore_or_init   the newest checkpoint that restores (damaged ones skipped and named), or a
                    fresh state; a finished run restores nothing
  itstime           whether a periodic action (log, images, save) is due at a step
  check_finite      host-side finiteness check of a step's metrics, naming the bad terms
  Preemption        SIGTERM in one process; jax's preemption sync point (through orbax)
                    across processes, so no collective runs every step
  Reporter          interval means, throughput and MFU -> metrics.jsonl, TensorBoard,
                    progress bar or console lines, images
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
from absl import logging

from mars_jax.train import flops
from mars_jax.train.checkpoint import Checkpointer, CheckpointLayoutError
from mars_jax.train.config import LogConfig
from mars_jax.train.metrics import MetricAccumulator, MetricLogger, Progress, console_line


class NonFiniteError(FloatingPointError):
    """A loss term or the gradient norm stopped being finite."""


def itstime(step: int, every: int, total: int | None = None) -> bool:
    """True every ``every`` steps (never for 0) and, when ``total`` is given, at the end."""
    if not every:
        return False
    return step % every == 0 or (total is not None and step == total)


def check_finite(step: int, metrics: Mapping[str, Any], last_good: int | None) -> dict:
    """The step's metrics as floats; raises ``NonFiniteError`` naming every bad term."""
    values = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteError(
            f"non-finite {', '.join(f'{k}={values[k]}' for k in bad)} at step {step}; the run "
            f"stopped without saving it. Last good checkpoint: step {last_good}")
    return values


class CheckpointRestoreError(RuntimeError):
    """No checkpoint could be restored (or, with strict resume, the latest could not)."""


def restore_or_init(checkpointer: Checkpointer, abstract_state: Any, data_iterator: Any,
                    init: Callable[[], Any], *, total_steps: int, strict: bool = False,
                    log: Callable[[str], None] = print) -> tuple[Any | None, int]:
    """(state, start step): the newest checkpoint that restores cleanly, into
    ``abstract_state``'s shardings (``data_iterator`` moved to where it was), or ``init()``
    at step 0. A damaged step (truncated file, missing metadata) is skipped, logged with
    the reason and renamed ``<step>.damaged`` (never deleted); ``strict`` stops at it
    instead, touching nothing. A checkpoint of another model is an error, not damage. A run
    whose checkpoint already reached ``total_steps`` restores nothing: (None, step)."""
    steps = sorted(checkpointer.all_steps(), reverse=True)
    if steps and steps[0] >= total_steps:
        log(f"nothing to do: checkpoint step {steps[0]} >= total_steps {total_steps}")
        return None, steps[0]
    skipped = []
    for step in steps:
        try:
            state = checkpointer.restore(step, abstract_state, data_iterator)
        except CheckpointLayoutError:
            raise
        except Exception as error:  # orbax / tensorstore / grain: anything unreadable
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            if strict:
                raise CheckpointRestoreError(
                    f"checkpoint step {step} in {checkpointer.directory} does not restore "
                    f"({reason}); checkpoint.strict_resume=True stops here. Set it False to "
                    "fall back to the previous step.") from error
            kept = checkpointer.set_aside(step)
            logging.warning("checkpoint step %d does not restore (%s); moved to %s, trying "
                            "the previous step", step, reason, kept)
            log(f"skipped damaged checkpoint step {step} ({reason}); kept as {kept}")
            skipped.append(step)
            continue
        log(f"resumed from step {step}: {checkpointer.directory}/{step}"
            + (f" (skipped damaged steps {skipped})" if skipped else ""))
        return state, step
    if skipped:
        raise CheckpointRestoreError(
            f"no checkpoint in {checkpointer.directory} restores (damaged steps {skipped}, "
            "kept as <step>.damaged); nothing was deleted. Move them away to start afresh.")
    return init(), 0


class Preemption:
    """``reached(step)``: whether to save and stop after ``step``.

    One process: a SIGTERM handler sets a flag. Several processes: jax's preemption service
    (started by ``jax.distributed.initialize``) turns a SIGTERM on any host into one sync
    step agreed by all, read through orbax's ``reached_preemption``; nothing is exchanged
    between hosts at other steps.
    """

    def __init__(self, checkpointer: Checkpointer):
        self._checkpointer = checkpointer
        self._received = False
        self._previous = None

    def __enter__(self) -> Preemption:
        if jax.process_count() == 1:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread: no handler, nothing to restore
                self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self._received = True
        logging.warning("SIGTERM received: saving a checkpoint after this step, then stopping")

    def reached(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self._received
        return bool(self._checkpointer.manager.reached_preemption(step))

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Reporter:
    """Everything a run reports: means of the checked step metrics over each log interval,
    wall-clock throughput and MFU, written by the main process only."""

    def __init__(self, workdir: Path, cfg: LogConfig, *, start: int, total: int,
                 examples_per_step: int, step_flops: float | None = None,
                 schedule: Callable[[int], Any] | None = None,
                 log: Callable[[str], None] = print):
        self.is_main = jax.process_index() == 0
        self.cfg, self.total, self.examples_per_step = cfg, total, examples_per_step
        self.step_flops, self.schedule, self._log = step_flops, schedule, log
        self.peak = flops.peak_flops_per_device(jax.devices()[0])
        self.logger = MetricLogger(workdir, resume_step=start,
                                   tensorboard=cfg.tensorboard) if self.is_main else None
        self.progress = Progress(total, start, pairs_per_step=examples_per_step,
                                 enabled=self.is_main and cfg.progress)
        self.accumulator = MetricAccumulator()
        self.last: dict[str, float] = {}
        self.write_failures = 0
        self._timer = (start, time.perf_counter())

    def add(self, values: Mapping[str, float]) -> None:
        self.accumulator.update(values)

    def report(self, step: int) -> dict[str, float]:
        """Closes the interval at ``step``: writes and returns its means."""
        now = time.perf_counter()
        seconds = (now - self._timer[1]) / max(step - self._timer[0], 1)
        self._timer = (step, now)
        last = self.accumulator.compute()
        self.accumulator.reset()
        if self.schedule is not None:
            last["learning_rate"] = float(self.schedule(step - 1))
        last["pairs_per_s"] = self.examples_per_step / seconds
        last["step_seconds"] = seconds
        if self.step_flops:
            mfu = flops.mfu(self.step_flops, seconds, jax.device_count(), self.peak)
            if mfu is not None:
                last["mfu"] = mfu
        self._write(self.logger.write_scalars if self.logger else None, step, last)
        self.progress.update(step, last)
        if not self.cfg.progress and self.is_main:
            self._log(console_line(step, self.total, last))
        self.last = last
        return last

    def write_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Scalars outside the interval means (evaluation results) at ``step``."""
        self._write(self.logger.write_scalars if self.logger else None, step, values)

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        self._write(self.logger.write_images if self.logger else None, step, images)

    def _write(self, write: Callable | None, step: int, values: Any) -> None:
        """Log writes that fail (disk full, a removed folder) are reported once and the run
        goes on: metrics are not worth losing the training state for."""
        if write is None:
            return
        try:
            write(step, values)
        except OSError as error:
            self.write_failures += 1
            if self.write_failures == 1:
                self._log(f"warning: writing logs at step {step} failed ({error}); training "
                          "continues, later log write failures are counted silently")

    def close(self) -> None:
        self.progress.close()
        if self.logger:
            self.logger.close()
