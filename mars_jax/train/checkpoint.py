"""orbax checkpoints of the full training state: parameters, optimiser, step and data order.

Layout: ``workdir/checkpoints/<step>/{state,data}``. ``state`` is the nnx state as a pure
dict of arrays (restored straight into the target shardings); ``data`` is the grain
iterator's state, so a resumed run reads exactly the batches it would have read. orbax writes
each step under a temporary name and renames it when complete: a directory left half-written
by a kill is never listed, hence never restored. Saves are asynchronous: training continues
while the previous checkpoint is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain
import jax
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


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                             item_names=("state", "data"))

    @property
    def directory(self) -> str:
        return str(self.manager.directory)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: nnx.State, data_iterator: Any) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(nnx.to_pure_dict(state)),
            data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
