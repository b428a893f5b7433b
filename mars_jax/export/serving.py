"""``serving/*.jaxexport``: StableHLO artifacts (``jax.export``) of a bundle's functions with
a symbolic batch dimension, callable from a program that has only jax.

Calling convention: ``exported.call(weights, inputs)``. ``weights`` is ``{part: {tensor:
array}}``, the bundle's ``weights/{part}.safetensors`` files as loaded (so the weights are
stored once, not once per function); ``inputs`` is ``{name: array}`` as config.json's
``serving`` section lists them (batch ``b``, a fixed image size). Outputs are a dict of
float32 arrays (``inference.functions``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mars_jax.export.weights import ENCODER_PARTS, HEAD_PART, unflatten

SERVING_DIR = "serving"
BATCH = "b"


def assemble(parts: Mapping[str, Mapping[str, Any]], has_head: bool) -> dict:
    """{part: flat tensors} -> the model's pure dict (``MaRSEncoder``'s, or with a head
    ``TaskModel``'s ``{"encoder", "head"}``)."""
    encoder: dict[str, Any] = {}
    for part in ENCODER_PARTS:
        encoder |= dict(parts.get(part, {}))
    tree = unflatten(encoder)
    if not has_head:
        return tree
    return {"encoder": tree, "head": unflatten(parts[HEAD_PART])}


def bind(model: nnx.Module, has_head: bool, fn: Callable) -> Callable:
    """``fn(module, inputs)`` -> ``(weights, inputs) -> outputs``: the module rebuilt from
    the weights argument inside the traced function."""
    graphdef, state = nnx.split(model)

    def served(weights, inputs):
        filled = jax.tree.map(lambda x: x, state)
        nnx.replace_by_pure_dict(filled, assemble(weights, has_head))
        return fn(nnx.merge(graphdef, filled), inputs)

    return served


def input_specs(spec: Mapping[str, Mapping[str, Any]]) -> dict[str, jax.ShapeDtypeStruct]:
    """config.json's input description -> ShapeDtypeStructs with the symbolic batch."""
    (batch,) = jax.export.symbolic_shape(BATCH)
    return {name: jax.ShapeDtypeStruct(tuple(batch if d == BATCH else int(d)
                                             for d in entry["shape"]),
                                       jnp.dtype(entry["dtype"]))
            for name, entry in spec.items()}


def export_function(served: Callable, weights: Mapping[str, Mapping[str, np.ndarray]],
                    inputs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike
                    ) -> dict[str, Any]:
    """Exports ``served`` for every platform's CPU and GPU, writes it to ``path`` and returns
    config.json's entry (inputs and outputs with shapes, ``b`` the batch)."""
    weight_specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), weights)
    exported = jax.export.export(jax.jit(served), platforms=("cpu", "cuda"))(
        weight_specs, input_specs(inputs))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(exported.serialize())
    outputs = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
    describe = lambda aval: {"shape": [str(d) if not isinstance(d, int) else d
                                       for d in aval.shape], "dtype": str(aval.dtype)}
    return {"file": Path(path).relative_to(Path(path).parent.parent).as_posix(),
            "inputs": dict(inputs), "outputs": {k: describe(v) for k, v in outputs.items()}}


def image_inputs(names: tuple[str, ...], size: int, optical_channels: int,
                 sar_channels: int) -> dict[str, dict[str, Any]]:
    """Input descriptions of role images (``optical``, ``sar``, ``*_t2``) and ``valid``."""
    spec = {}
    for name in names:
        optical = name.removesuffix("_t2") == "optical"
        spec[name] = {"shape": [BATCH, size, size, optical_channels if optical
                                else sar_channels],
                      "dtype": "uint8" if optical else "float32"}
    spec["valid"] = {"shape": [BATCH, size, size], "dtype": "bool"}
    return spec


def export_serving(bundle, folder: str | os.PathLike, *, log=print) -> dict[str, Any]:
    """Exports ``embed_{modalities}`` for each modality set and, for a task bundle,
    ``predict_{modalities}`` for each set the task predicts from; returns config.json's
    ``serving`` section."""
    from mars_jax.inference import functions

    config, has_head = bundle.config, bundle.what == "task"
    model_config = config["model"]
    channels = (model_config["optical_channels"], model_config["sar_channels"])
    weights = bundle.weights()
    jobs = [(f"embed_{functions.set_name(s)}", functions.embed, s)
            for s in functions.EMBED_SETS]
    if has_head:
        task = bundle.task
        jobs += [(f"predict_{functions.set_name(s)}", functions.predict,
                  functions.roles(task, s)) for s in functions.predict_sets(
                      task, config["modalities"])]
    entries = {}
    for name, fn, names in jobs:
        path = Path(folder) / SERVING_DIR / f"{name}.jaxexport"
        entries[name] = export_function(bind(bundle.model, has_head, fn), weights,
                                        image_inputs(names, config["image_size"], *channels),
                                        path)
        log(f"  serving/{name}.jaxexport: inputs {sorted(entries[name]['inputs'])}, outputs "
            f"{sorted(entries[name]['outputs'])}")
    return entries
