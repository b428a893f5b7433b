"""orbax checkpoints of the full training state: parameters, optimiser, step and data order.

Layout: ``workdir/checkpoints/<step>/{state,data}``. ``state`` is the nnx state as a pure
dict of arrays (restored straight into the target shardings); ``data`` is the grain
iterator's state, so a resumed run reads exactly the batches it would have read. orbax writes
each step under a temporary name and renames it when complete: a directory left half-written
by a kill is never listed, hence never restored. Saves are asynchronous: training continues
while the previous checkpoint is written.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx


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
        ``data_iterator`` to where it was at ``step``."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            nnx.to_pure_dict(abstract_state))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        state = jax.tree.map(lambda x: x, abstract_state)  # a copy to fill in
        nnx.replace_by_pure_dict(state, restored["state"])
        return state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
