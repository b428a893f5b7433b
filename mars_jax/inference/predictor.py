"""``inference.load``: a bundle or a training workdir -> a ``Predictor`` with jitted
``embed`` and ``predict``.

A predictor holds the model replicated over a data-parallel mesh (all local devices by
default) and splits inputs into batches sharded over it, the last batch padded to fill every
device; one compile per input signature. Inputs are numpy: optical uint8 RGB and / or SAR in
dB, ``[H, W, C]`` or ``[B, H, W, C]``, any size whose sides are multiples of the patch size.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mars_jax import parallel
from mars_jax.inference import functions
from mars_jax.tasks import Task

DEFAULT_BATCH = 8


@dataclasses.dataclass
class Prediction:
    """A task head's output over a batch, decoded by kind: ``labels`` [B, H, W] and
    ``probabilities`` [B, H, W, K] (segmentation, binary, change), ``values`` [B, H, W]
    (regression), ``image`` uint8 [B, H, W, 3] (translation), ``boxes`` per image
    (detection: ``{"boxes" [k, 4] x0 y0 x1 y1 px, "scores" [k], "classes" [k]}``),
    ``descriptors`` per modality (registration). ``outputs``: the raw head output."""

    outputs: np.ndarray | None = None
    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    values: np.ndarray | None = None
    image: np.ndarray | None = None
    boxes: list[dict[str, np.ndarray]] | None = None
    descriptors: dict[str, np.ndarray] | None = None


class Predictor:
    """Embeds images with the encoder and predicts with the task head (module docstring)."""

    def __init__(self, model: nnx.Module, *, what: str, modalities: Sequence[str],
                 source: str, devices: Sequence[jax.Device] | None = None,
                 batch_size: int = DEFAULT_BATCH, image_size: int | None = None):
        self.model, self.what, self.source = model, what, source
        self.image_size = image_size  # the training crop (or export size): a default tile
        self.modalities = tuple(modalities)
        self.task: Task | None = getattr(model, "task", None)
        self.encoder = model.encoder if self.task is not None else model
        self.patch_size = self.encoder.config.patch_size
        self.batch_size = batch_size
        self.mesh = parallel.create_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)
        graphdef, state = nnx.split(model)
        self._graphdef = graphdef
        self._state = jax.device_put(state, parallel.replicated(self.mesh))
        self._jitted: dict[str, Callable] = {}

    # -- public API ----------------------------------------------------------------------
    def embed(self, optical: np.ndarray | None = None, sar: np.ndarray | None = None, *,
              valid: np.ndarray | None = None, batch_size: int | None = None
              ) -> dict[str, np.ndarray]:
        """Per-patch embeddings ``optical`` / ``sar`` [B, h, w, D_e] (CGCL-aligned), their
        global means ``global_*`` [B, D_e] over the patches with data, ``patch_valid``
        [B, h, w] and, when the model has MMA, ``fused`` [B, h, w, D] / ``global_fused``.
        Unbatched inputs give unbatched outputs."""
        inputs, single = self._inputs({"optical": optical, "sar": sar}, valid)
        out = self._run("embed", functions.embed, inputs, batch_size)
        return {k: v[0] for k, v in out.items()} if single else out

    def predict(self, optical: np.ndarray | None = None, sar: np.ndarray | None = None, *,
                valid: np.ndarray | None = None, optical_t2: np.ndarray | None = None,
                sar_t2: np.ndarray | None = None, batch_size: int | None = None
                ) -> Prediction:
        """The task head's prediction (``Prediction``); bi-temporal tasks take the second
        date as ``optical_t2`` / ``sar_t2``. Always batched ([B, ...])."""
        if self.task is None:
            raise ValueError(f"{self.source} holds no task head (what={self.what!r}); "
                             "predict needs a fine-tuned bundle (--what=task) or workdir")
        images = {"optical": optical, "sar": sar, "optical_t2": optical_t2, "sar_t2": sar_t2}
        given = tuple(m for m in functions.MODALITIES if images[m] is not None)
        sets = functions.predict_sets(self.task, self.modalities)
        if given not in sets:
            raise ValueError(f"task {self.task.name!r} predicts from "
                             f"{[list(s) for s in sets]}; got {list(given)}")
        wanted = functions.roles(self.task, given)
        missing = [r for r in wanted if images[r] is None]
        if missing:
            raise ValueError(f"task {self.task.name!r} is bi-temporal: pass {missing} too")
        inputs, _ = self._inputs({r: images[r] for r in wanted}, valid)
        out = self._run("predict", functions.predict, inputs, batch_size)
        return self._decode(out)

    # -- inputs ----------------------------------------------------------------------------
    def _inputs(self, images: Mapping[str, np.ndarray | None], valid: np.ndarray | None
                ) -> tuple[dict[str, np.ndarray], bool]:
        """Batched, checked numpy inputs (before anything compiles) and whether they came
        unbatched."""
        config = self.encoder.config
        given = {k: np.asarray(v) for k, v in images.items() if v is not None}
        if not given:
            raise ValueError("give optical, sar or both")
        single = next(iter(given.values())).ndim == 3
        out, shape = {}, None
        for role, array in given.items():
            optical = role.removesuffix("_t2") == "optical"
            channels = config.optical_channels if optical else config.sar_channels
            if single:
                array = array[None]
            if array.ndim != 4 or array.shape[-1] != channels:
                raise ValueError(f"{role} must be [H, W, {channels}] or [B, H, W, {channels}]"
                                 f", got shape {np.shape(images[role])}")
            h, w = array.shape[1:3]
            if h % self.patch_size or w % self.patch_size:
                raise ValueError(f"{role} is {h}x{w}: height and width must be multiples of "
                                 f"the patch size {self.patch_size} (pad or crop it)")
            if shape is not None and array.shape[:3] != shape:
                raise ValueError(f"{role} shape {array.shape[:3]} differs from the other "
                                 f"images' {shape}")
            shape = array.shape[:3]
            out[role] = array.astype(np.uint8 if optical else np.float32)
        if valid is not None:
            valid = np.asarray(valid, bool)[None] if single else np.asarray(valid, bool)
            if valid.shape != shape:
                raise ValueError(f"valid must be {shape[1:] if single else shape}, got "
                                 f"{np.shape(valid)}")
        out["valid"] = np.ones(shape, bool) if valid is None else valid
        return out, single

    def _run(self, name: str, fn: Callable, inputs: Mapping[str, np.ndarray],
             batch_size: int | None) -> dict[str, np.ndarray]:
        """``fn(model, batch)`` over ``inputs`` in device-filling, sharded batches."""
        if name not in self._jitted:
            graphdef = self._graphdef
            self._jitted[name] = jax.jit(
                lambda state, batch: fn(nnx.merge(graphdef, state), batch),
                in_shardings=(parallel.replicated(self.mesh),
                              parallel.batch_sharding(self.mesh)),
                out_shardings=parallel.replicated(self.mesh))
        jitted = self._jitted[name]
        count = len(next(iter(inputs.values())))
        devices = parallel.data_parallel_size(self.mesh)
        chunk = -(-(batch_size or self.batch_size) // devices) * devices
        chunk = min(chunk, -(-count // devices) * devices)
        pieces: list[dict[str, np.ndarray]] = []
        sharding = parallel.batch_sharding(self.mesh)
        with jax.set_mesh(self.mesh):
            for start in range(0, count, chunk):
                part = {k: v[start:start + chunk] for k, v in inputs.items()}
                n = len(next(iter(part.values())))
                if n < chunk:  # the last batch, padded with copies of its last example
                    part = {k: np.concatenate([v, np.repeat(v[-1:], chunk - n, 0)])
                            for k, v in part.items()}
                out = jitted(self._state, jax.device_put(part, sharding))
                pieces.append({k: np.asarray(v)[:n] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}

    # -- outputs ---------------------------------------------------------------------------
    def _decode(self, out: Mapping[str, np.ndarray]) -> Prediction:
        task = self.task
        if task.kind == "registration":
            return Prediction(descriptors=dict(out))
        raw = out["outputs"]
        if task.kind in ("segmentation", "binary", "change"):
            probabilities = np.asarray(jax.nn.softmax(jnp.asarray(raw), axis=-1))
            return Prediction(raw, labels=raw.argmax(-1).astype(np.int32),
                              probabilities=probabilities)
        if task.kind == "regression":
            return Prediction(raw, values=raw[..., 0])
        if task.kind == "translation":
            return Prediction(raw, image=np.round(np.clip(raw, 0, 1) * 255).astype(np.uint8))
        from mars_jax.tasks.centernet import decode

        maps = task.split(jnp.asarray(raw))
        k = min(task.top_k, int(np.prod(maps["heatmap"].shape[1:])))
        found = jax.tree.map(np.asarray, decode(maps["heatmap"], maps["size"],
                                                maps["offset"], stride=task.stride, k=k))
        return Prediction(raw, boxes=[{key: found[key][i] for key in found}
                                      for i in range(raw.shape[0])])


def is_bundle(path: Path) -> bool:
    """A bundle's config.json names its format (a workdir's config.json does not)."""
    import json

    from mars_jax.export.bundle import CONFIG_FILE, FORMAT

    file = path / CONFIG_FILE
    if not file.is_file():
        return False
    try:
        return json.loads(file.read_text()).get("format") == FORMAT
    except ValueError:
        return False


def load(path: str | os.PathLike, *, step: int | None = None,
         config: ml_collections.ConfigDict | str | None = None,
         devices: Sequence[jax.Device] | None = None, batch_size: int = DEFAULT_BATCH,
         verify: bool = True) -> Predictor:
    """A predictor of a bundle (``python -m mars_jax.export``; its manifest verified unless
    ``verify=False``) or of a training workdir (its newest checkpoint, or ``step``'s,
    parameters only; ``config``: the run's config, for workdirs older than W/config.json)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such bundle or workdir")
    if is_bundle(path):
        from mars_jax.export.bundle import read_bundle

        if step is not None or config is not None:
            raise ValueError(f"{path} is a bundle: step and config are for training workdirs")
        bundle = read_bundle(path, verify=verify)
        return Predictor(bundle.model, what=bundle.what, modalities=bundle.config[
            "modalities"], source=str(path), devices=devices, batch_size=batch_size,
            image_size=bundle.config.get("image_size"))
    from mars_jax.train.workdir import load_workdir_model

    if isinstance(config, str):
        from mars_jax.config_files import load_config

        config = load_config(config)
    loaded = load_workdir_model(path, step=step, config=config)
    finetuned = loaded.run.is_finetuning
    return Predictor(loaded.model, what="task" if finetuned else "model",
                     modalities=loaded.experiment.task.modalities if finetuned
                     else functions.MODALITIES, source=str(path), devices=devices,
                     batch_size=batch_size, image_size=loaded.experiment.input.image_size)


__all__ = ["Prediction", "Predictor", "load"]
