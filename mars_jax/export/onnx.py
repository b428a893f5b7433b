"""``onnx/*.onnx``: the serving functions converted by jax2onnx (weights inside the graph, a
symbolic batch ``B``), each checked against the model with onnxruntime on random inputs at
export; a function that does not convert, or converts unfaithfully, is recorded with the
error instead of a file."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ONNX_DIR = "onnx"
TOLERANCE = 1e-4  # max |onnxruntime - jax| on the check inputs (float32)


def random_inputs(spec: Mapping[str, Mapping[str, Any]], batch: int, seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """Inputs of the described shapes: optical in [0, 255], SAR dB around -12, all valid."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, entry in spec.items():
        shape = [batch if d == "b" else int(d) for d in entry["shape"]]
        if entry["dtype"] == "uint8":
            out[name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif entry["dtype"] == "bool":
            out[name] = np.ones(shape, bool)
        else:
            out[name] = rng.normal(-12.0, 5.0, shape).astype(np.float32)
    return out


def convert(fn: Callable, spec: Mapping[str, Mapping[str, Any]], path: Path,
            outputs: list[str], batch: int | str = "B") -> dict[str, Any]:
    """One function to ONNX with ``batch`` (symbolic ``"B"`` or a size) and its check;
    returns config.json's entry."""
    import jax2onnx
    import onnxruntime

    names = list(spec)
    flat = lambda *arrays: tuple(fn(dict(zip(names, arrays, strict=True)))[k] for k in outputs)
    shapes = [jax.ShapeDtypeStruct(tuple(batch if d == "b" else int(d) for d in entry["shape"]),
                                   jnp.dtype(entry["dtype"])) for entry in spec.values()]
    path.parent.mkdir(parents=True, exist_ok=True)
    jax2onnx.to_onnx(flat, shapes, return_mode="file", output_path=str(path),
                     model_name=path.stem)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = random_inputs(spec, batch=2 if batch == "B" else batch)
    got = session.run(None, {i.name: check[n] for i, n in zip(session.get_inputs(), names,
                                                                strict=True)})
    want = flat(*(jnp.asarray(check[n]) for n in names))
    diff = max(float(np.max(np.abs(np.asarray(w, np.float64) - np.asarray(g, np.float64))))
               for w, g in zip(want, got, strict=True))
    return {"file": f"{ONNX_DIR}/{path.name}", "inputs": names, "outputs": outputs,
            "batch": "b" if batch == "B" else batch,
            "max_abs_diff": diff, "faithful": diff <= TOLERANCE}


def export_onnx(bundle, folder: str | os.PathLike, *, log=print) -> dict[str, Any]:
    """Every serving function of config.json's ``serving`` section as ONNX (module
    docstring); returns config.json's ``onnx`` section."""
    from mars_jax.inference import functions

    graphdef, state = nnx.split(bundle.model)
    entries = {}
    for name, serving in bundle.config["serving"].items():
        run = functions.SERVED[name.split("_", 1)[0]]
        fn = lambda inputs, run=run: run(nnx.merge(graphdef, state), inputs)
        path = Path(folder) / ONNX_DIR / f"{name}.onnx"
        try:
            try:
                entries[name] = convert(fn, serving["inputs"], path,
                                        sorted(serving["outputs"]))
            except Exception:  # some ops need a constant batch under jax2onnx: batch 1
                entries[name] = convert(fn, serving["inputs"], path,
                                        sorted(serving["outputs"]), batch=1)
        except Exception as error:  # a converter's limit, recorded, not fatal
            path.unlink(missing_ok=True)
            entries[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            log(f"  onnx/{name}.onnx: not converted ({entries[name]['error']})")
            continue
        if not entries[name]["faithful"]:
            path.unlink(missing_ok=True)
            log(f"  onnx/{name}.onnx: dropped, differs from the model by "
                f"{entries[name]['max_abs_diff']:.2e} > {TOLERANCE}")
        else:
            log(f"  onnx/{name}.onnx: max |onnxruntime - jax| "
                f"{entries[name]['max_abs_diff']:.2e}")
    return entries
