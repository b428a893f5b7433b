"""orbax checkpoints of the full training state: parameters, optimiser, step and data order.

Layout: ``workdir/checkpoints/<step>/{state,data}``. ``state`` is the nnx state as a pure
dict of arrays (restored straight into the target shardings); ``data`` is the grain
iterator's state, so a resumed run reads exactly the batches it would have read. orbax writes
each step under a temporary name and renames it when complete: a directory left half-written
by a kill is never listed, hence never restored. Saves are asynchronous: training continues
while the previous checkpoint is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging as logging_std
import os
import shutil
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from mars_jax.models import convert_layers

# Top-level model entries of checkpoints written before the encoder / pretrainer split.
LEGACY_MODEL_KEYS = ("optical_encoder", "sar_encoder", "cgcl_temperatures")
_LEGACY_ENCODER = {"optical_mean": "optical_mean", "optical_std": "optical_std",
                   "sar_db_mean": "sar_db_mean", "sar_db_std": "sar_db_std",
                   "optical_encoder": "optical_vit", "sar_encoder": "sar_vit",
                   "optical_projection": "optical_projection",
                   "sar_projection": "sar_projection", "mma": "mma"}


class CheckpointLayoutError(ValueError):
    """A checkpoint's parameter tree is not the one this model builds, nor convertible."""


def saved_state_paths(step_dir: str | os.PathLike) -> list[tuple[str, ...]]:
    """Parameter paths of a saved ``state`` item, read from orbax's tree metadata (cheap:
    no array is read)."""
    metadata = Path(step_dir) / "state" / "_METADATA"
    if not metadata.exists():
        return []
    tree = json.loads(metadata.read_text()).get("tree_metadata", {})
    return [tuple(k["key"] for k in entry["key_metadata"]) for entry in tree.values()]


def _flat_paths(tree: Any) -> set[tuple[str, ...]]:
    return {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def _wrap_blocks(module: Mapping, key: str) -> dict:
    """Legacy ``<key>/<i>`` block lists -> the stack's ``blocks/layers/<i>``."""
    module = dict(module)
    if key in module:
        module["blocks"] = {"layers": module.pop(key)}
    return module


def upgrade_legacy(tree: Any) -> Any:
    """A pure dict written before the encoder split (parameters, or optimiser moments that
    mirror them) in today's layout: ``optical_encoder/blocks/<i>`` ->
    ``encoder/optical_vit/blocks/layers/<i>``, ``mma/layers/<i>`` ->
    ``encoder/mma/blocks/layers/<i>``, decoders' ``blocks/<i>`` -> ``blocks/layers/<i>``,
    ``cgcl_temperatures`` -> ``temperatures``. Other entries are unchanged."""
    if not isinstance(tree, Mapping):
        return tree
    tree = {k: upgrade_legacy(v) for k, v in tree.items()}
    if not set(tree) & {"optical_encoder", "sar_encoder"}:
        return tree
    encoder = {}
    for old, new in _LEGACY_ENCODER.items():
        if old in tree:
            value = tree.pop(old)
            if old in ("optical_encoder", "sar_encoder"):
                value = _wrap_blocks(value, "blocks")
            elif old == "mma":
                value = _wrap_blocks(value, "layers")
            encoder[new] = value
    upgraded = {"encoder": encoder}
    for decoder in ("optical_decoder", "sar_decoder"):
        if decoder in tree:
            upgraded[decoder] = _wrap_blocks(tree.pop(decoder), "blocks")
    if "cgcl_temperatures" in tree:
        upgraded["temperatures"] = tree.pop("cgcl_temperatures")
    return upgraded | tree


def _int_keys(tree: Any) -> Any:
    """orbax returns every key as a string; nnx pure dicts index lists and tuples by int."""
    if not isinstance(tree, Mapping):
        return tree
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v)
            for k, v in tree.items()}


def layout_of(saved: set[tuple[str, ...]], wanted: set[tuple[str, ...]]) -> str | None:
    """None when the saved tree is the model's, else what differs: "legacy" (before the
    encoder split), "scan" (the other ``model.scan_layers``) or "other"."""
    if not saved or saved == wanted:
        return None
    if {p[1] for p in saved if len(p) > 1 and p[0] == "0"} & set(LEGACY_MODEL_KEYS):
        return "legacy"
    scanned = lambda paths: any("stacked" in p for p in paths)
    return "scan" if scanned(saved) != scanned(wanted) else "other"


def check_layout(step_dir: str | os.PathLike, abstract_state: Any) -> str | None:
    """The conversion a checkpoint needs to restore into ``abstract_state`` (None, "legacy"
    or "scan"); a tree that no conversion fixes is an error naming what differs."""
    saved = set(saved_state_paths(step_dir))
    wanted = _flat_paths(nnx.to_pure_dict(abstract_state))
    layout = layout_of(saved, wanted)
    if layout == "other":
        raise _mismatch(f"checkpoint {step_dir} does not match the configured model (another "
                        "size or options?)", saved, wanted)
    return layout


def _mismatch(message: str, got: set, want: set) -> CheckpointLayoutError:
    missing, extra = sorted(want - got)[:3], sorted(got - want)[:3]
    return CheckpointLayoutError(f"{message}: missing e.g. {['/'.join(p) for p in missing]}, "
                                 f"unexpected e.g. {['/'.join(p) for p in extra]}")


def convert_state(saved: Mapping, target: Mapping, step_dir: str | os.PathLike) -> dict:
    """A restored pure dict in the target's layout (legacy upgrade, scan conversion)."""
    tree = convert_layers(upgrade_legacy(_int_keys(saved)), target)
    got, want = _flat_paths(tree), _flat_paths(target)
    if got != want:
        raise _mismatch(f"checkpoint {step_dir} could not be converted to the configured model",
                        got, want)
    return tree


def state_bytes(state: Any) -> int:
    """Bytes of every array of ``state`` (global sizes: what all processes write)."""
    return sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(state) if hasattr(x, "dtype"))


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, permissions, ...)."""


def describe_write_error(error: BaseException) -> str:
    """One line for a failed write: the first line of the error, and what it means."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    full = str(error)
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in full or (
            "RESOURCE_EXHAUSTED" in full):
        return f"the disk is full ({type(error).__name__}: {text[:240]})"
    return f"{type(error).__name__}: {text[:300]}"


def _from_orbax(tb) -> bool:
    return any("orbax" in frame.filename for frame in traceback.extract_tb(tb))


class _DropOrbaxWriteErrors(logging_std.Filter):
    """asyncio logs "exception was never retrieved" once per array of a failed orbax write."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        message = record.getMessage()
        exc = record.exc_info[2] if record.exc_info else None
        return not ("never retrieved" in message and (
            "OCDBT" in message or "orbax" in message or (exc is not None and _from_orbax(exc))))


@contextlib.contextmanager
def quiet_background_save_errors():
    """While training: a failed asynchronous orbax save prints a traceback per background
    thread and one asyncio message per array (hundreds of lines). Those copies are dropped;
    ``Checkpointer`` raises the failure once, at the next save or when closing."""
    previous = threading.excepthook

    def hook(args):
        if args.exc_traceback is not None and _from_orbax(args.exc_traceback):
            return
        previous(args)

    drop = _DropOrbaxWriteErrors()
    asyncio_logger = logging_std.getLogger("asyncio")
    asyncio_logger.addFilter(drop)
    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous
        asyncio_logger.removeFilter(drop)


class Checkpointer:
    """orbax CheckpointManager for the training state, with save failures surfaced.

    An asynchronous save fails in a background thread; the outcome of the previous save is
    checked before each new save and when closing, and a failure raises one
    ``CheckpointSaveError`` naming the error, the path and the last good step."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                             item_names=("state", "data"))
        self._in_flight: int | None = None
        self.failed = False

    def last_good_step(self) -> int | None:
        steps = self.all_steps()
        return max(steps) if steps else None

    def _failure(self, step: int | None, error: BaseException) -> CheckpointSaveError:
        self.failed = True
        good = self.last_good_step()
        where = f"{self.directory}/{good}" if good is not None else "none"
        return CheckpointSaveError(
            f"saving checkpoint step {step} to {self.directory} failed: "
            f"{describe_write_error(error)}. Last good checkpoint: step {good} ({where}); it "
            "is intact. Free space (or fix the path) and re-run the same command to resume "
            "from it.")

    def check_previous_save(self) -> None:
        """Raises ``CheckpointSaveError`` if the last asynchronous save failed."""
        try:
            self.manager.check_for_errors()
        except Exception as error:
            raise self._failure(self._in_flight, error) from None

    @property
    def directory(self) -> str:
        return str(self.manager.directory)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every complete step on disk, read from the folder (orbax writes a step under a
        temporary name and renames it when complete; set-aside steps are renamed too)."""
        root = Path(self.directory)
        if not root.is_dir():
            return []
        return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())

    def set_aside(self, step: int) -> Path:
        """Renames a damaged step to ``<step>.damaged[-k]``: kept on disk for inspection,
        no longer listed, and out of the way of the step's next save."""
        source = Path(self.directory) / str(step)
        target = source.with_name(f"{step}.damaged")
        k = 1
        while target.exists():
            target, k = source.with_name(f"{step}.damaged-{k}"), k + 1
        if jax.process_index() == 0:  # one rename on a shared filesystem, then everyone
            source.rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"mars_jax set aside checkpoint {step}")
        self.manager.reload()
        return target

    def save(self, step: int, state: nnx.State, data_iterator: Any) -> None:
        """Starts saving ``step`` (asynchronously by default) after checking that the
        previous save succeeded and that the disk has room for this one: a save that cannot
        fit is refused before a byte is written, so no half-written step is left behind."""
        try:  # orbax would wait for the previous save here anyway
            self.manager.wait_until_finished()
        except Exception:
            pass  # check_previous_save names it
        self.check_previous_save()
        needed = int(1.05 * state_bytes(state)) + 2**20
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise self._failure(step, OSError(
                errno.ENOSPC, f"No space left on device: the checkpoint needs about "
                f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free"))
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(nnx.to_pure_dict(state)),
                data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)
        except Exception as error:
            raise self._failure(step, error) from None
        self._in_flight = step

    def restore(self, step: int, abstract_state: nnx.State, data_iterator: Any) -> nnx.State:
        """Restores into ``abstract_state``'s shapes, dtypes and shardings, and moves
        ``data_iterator`` to where it was at ``step``.

        A checkpoint written before the encoder split, or with the other
        ``model.scan_layers``, is converted on the way in (logged); any other mismatch is a
        ``CheckpointLayoutError`` naming the differing parameters."""
        step_dir = Path(self.directory) / str(step)
        layout = check_layout(step_dir, abstract_state)
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            nnx.to_pure_dict(abstract_state))
        state_args = ocp.args.StandardRestore(target if layout is None else None)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=state_args, data=grain.checkpoint.CheckpointRestore(data_iterator)))
        tree = restored["state"]
        if layout is not None:
            logging.warning("checkpoint %s: converting from the %s layout", step_dir,
                            "pre-split (MaRS before MaRSEncoder)" if layout == "legacy"
                            else "other scan_layers")
            tree = jax.tree.map(
                lambda x, t: jax.device_put(jax.numpy.asarray(x, t.dtype), t.sharding),
                convert_state(tree, target, step_dir), target)
        state = jax.tree.map(lambda x: x, abstract_state)  # a copy to fill in
        nnx.replace_by_pure_dict(state, tree)
        return state

    def wait(self) -> None:
        """Waits for the save in flight; raises ``CheckpointSaveError`` if it failed."""
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as error:
            raise self._failure(self._in_flight, error) from None

    def close(self, *, quiet: bool = False) -> None:
        """Finishes the save in flight and closes. ``quiet``: while another error is already
        on its way up, a save failure is not raised over it."""
        try:
            if not self.failed:
                self.wait()
        except CheckpointSaveError:
            if not quiet:
                raise
        finally:
            try:
                self.manager.close()
            except Exception:
                if not (quiet or self.failed):
                    raise
