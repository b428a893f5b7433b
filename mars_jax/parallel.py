"""Device mesh, logical-axis sharding rules, and host-local -> global batches.

One ``jax.sharding.Mesh`` with axes (data, fsdp, tensor), all of type Auto (XLA propagates
shardings; ``jax.make_mesh``'s Explicit default rejects ordinary reshapes). Parameters carry
logical axis names (``embed``, ``mlp``, ``heads``, ``kv``, ``patch``); a rule table from the
config maps each to a mesh axis, a tuple of axes, or None (replicated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the global batch is split over both data-parallel axes

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes per MESH_AXES, one of which may be -1 (the rest); must use every device."""
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh: unknown axes {unknown}; axes are {MESH_AXES}")
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh: sizes must be positive with at most one -1, got {dict(sizes)}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh {dict(sizes)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs "
                         f"{math.prod(shape)} devices, but {num_devices} are available")
    return tuple(shape)


def create_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(sizes, len(devices))
    grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_mesh(logical: Sequence[str | None], rules: Rules) -> PartitionSpec:
    """Maps one parameter's logical axis names to a PartitionSpec over mesh axes."""
    table = dict(rules)
    spec = []
    for name in logical:
        if name is None:
            spec.append(None)
        elif name not in table:
            raise ValueError(f"sharding rules: no rule for logical axis {name!r}; rules cover "
                             f"{sorted(table)}")
        else:
            spec.append(table[name])
    used = [a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)]
    if len(used) != len(set(used)):
        raise ValueError(f"sharding rules map {tuple(logical)} onto a mesh axis twice: {spec}")
    return PartitionSpec(*spec)


def _axis_size(mesh: Mesh, entry: str | tuple[str, ...] | None) -> int:
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else entry
    return math.prod(mesh.shape[n] for n in names)


def state_shardings(state: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for an nnx State (abstract or concrete), following the parameters'
    logical axes. Variables without annotations are replicated. Fails, naming the parameter,
    when a dimension does not divide by its mesh axes."""
    logical = nnx.get_partition_spec(state)

    def to_sharding(path, leaf, spec):
        names = tuple(spec) if spec is not None else ()
        pspec = logical_to_mesh(names, rules) if names else PartitionSpec()
        for dim, entry in zip(np.shape(leaf), tuple(pspec) + (None,) * len(np.shape(leaf)),
                              strict=False):
            if dim % _axis_size(mesh, entry):
                raise ValueError(
                    f"parameter {jax.tree_util.keystr(path)} of shape {np.shape(leaf)}: "
                    f"dimension {dim} does not divide over mesh axes {entry} "
                    f"(size {_axis_size(mesh, entry)})")
        return NamedSharding(mesh, pspec)

    return jax.tree_util.tree_map_with_path(
        lambda path, leaf, spec: to_sharding(path, leaf, spec), state, logical)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of the batch -> global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}
