"""A bundle: a self-contained folder that runs a trained model without its workdir.

    BUNDLE/config.json        format and version, what it holds, the model config, input
                              statistics, task / head / class names, serving signatures,
                              where it came from (workdir, step, git commit)
    BUNDLE/weights/*.safetensors   per-module tensors (``export.weights``)
    BUNDLE/serving/*.jaxexport     StableHLO per function (``export.serving``)
    BUNDLE/onnx/*.onnx        with ``onnx=True`` (``export.onnx``)
    BUNDLE/manifest.json      SHA-256 of every file, verified on load

``what``: ``encoders`` (the optical and SAR ViTs with their statistics and projections; no
fusion), ``model`` (the encoders and MMA: the whole pretrained encoder) or ``task`` (the
model and a fine-tuned head).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

import mars_jax
from mars_jax.export.manifest import MANIFEST_FILE, BundleError, verify_manifest, write_manifest
from mars_jax.export.weights import (
    ENCODER_PARTS,
    HEAD_PART,
    WEIGHTS_DIR,
    flatten,
    load_part,
    save_part,
    split_encoder,
)
from mars_jax.models import MaRSConfig, convert_layers
from mars_jax.models.encoder import MaRSEncoder
from mars_jax.models.heads import HeadConfig
from mars_jax.tasks import Task
from mars_jax.train.checkpoint import CheckpointLayoutError
from mars_jax.train.workdir import fill_module, load_workdir_model, task_from_record, task_record

FORMAT = "mars_jax.bundle"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WHATS = ("encoders", "model", "task")
PARTS = {"encoders": ("optical_encoder", "sar_encoder"),
         "model": ("optical_encoder", "sar_encoder", "mma"),
         "task": ("optical_encoder", "sar_encoder", "mma", HEAD_PART)}


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A bundle read back: its config.json and its model (eval mode)."""

    folder: Path
    config: dict[str, Any]
    model: nnx.Module  # MaRSEncoder, or TaskModel for ``what == "task"``

    @property
    def what(self) -> str:
        return self.config["what"]

    @property
    def task(self) -> Task | None:
        return None if self.config["task"] is None else task_from_record(self.config["task"])

    @property
    def encoder(self) -> MaRSEncoder:
        return self.model.encoder if self.what == "task" else self.model

    @property
    def fused(self) -> bool:
        return self.config["model"]["mma_layers"] > 0

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """{part: tensors}, the serving functions' first argument."""
        return {part: load_part(self.folder / file)
                for part, file in self.config["weights"].items()}


def git_commit() -> str | None:
    """The commit of the mars_jax source tree, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(mars_jax.__file__).parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _canonical(model: nnx.Module, build: Callable[[], nnx.Module]) -> dict:
    """The model's parameters as numpy, in the per-layer layout (``build`` makes the
    unscanned twin, whose shapes are the template)."""
    tree = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    template = nnx.to_pure_dict(nnx.state(nnx.eval_shape(build)))
    return convert_layers(tree, template)


def export_bundle(source: str | os.PathLike, out: str | os.PathLike, *,
                  step: int | None = None, what: str | None = None,
                  config: ml_collections.ConfigDict | None = None,
                  image_size: int | None = None, serving: bool = True, onnx: bool = False,
                  overwrite: bool = False, log=print) -> Bundle:
    """Writes the bundle of a training workdir's newest (or ``step``'s) checkpoint to
    ``out`` (written beside it and renamed when complete, so a failed export leaves no half
    bundle). ``what``: default ``task`` for fine-tuning, ``model`` for pretraining;
    ``image_size``: the serving functions' (default: the run's crop size)."""
    out = Path(out)
    if what is not None and what not in WHATS:
        raise BundleError(f"--what={what!r}: choose one of {WHATS}")
    if out.exists() and not overwrite:
        raise BundleError(f"--out {out} exists; choose another folder or pass --overwrite")
    loaded = load_workdir_model(source, step=step, config=config)
    finetuned = loaded.run.is_finetuning
    what = what or ("task" if finetuned else "model")
    if what == "task" and not finetuned:
        raise BundleError(f"--what=task: {source} is a pretraining workdir (no head); use "
                          "--what=model or --what=encoders")
    model_config: MaRSConfig = loaded.experiment.model
    size = image_size or loaded.experiment.input.image_size
    if size % model_config.patch_size:
        raise BundleError(f"--image_size={size} is not a multiple of the patch size "
                          f"{model_config.patch_size}")
    unscanned = dataclasses.replace(model_config, scan_layers=False, remat="none")
    if finetuned:
        exp, task = loaded.experiment, loaded.task
        tree = _canonical(loaded.model, lambda: type(loaded.model)(
            unscanned, task, exp.head, levels=exp.task.levels or None, rngs=nnx.Rngs(0)))
        encoder_tree, head_tree = tree["encoder"], tree["head"]
    else:
        encoder_tree = _canonical(loaded.model, lambda: MaRSEncoder(unscanned,
                                                                    rngs=nnx.Rngs(0)))
        head_tree = None
    if what == "encoders":
        unscanned = dataclasses.replace(unscanned, mma_layers=0)

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        files = {}
        for part, tensors in split_encoder(encoder_tree, PARTS[what][:3]).items():
            files[part] = save_part(staging, part, tensors).relative_to(staging).as_posix()
        if what == "task":
            files[HEAD_PART] = save_part(staging, HEAD_PART, flatten(head_tree)) \
                .relative_to(staging).as_posix()
        stats = {k: np.asarray(encoder_tree[k], np.float64).tolist()
                 for k in ("optical_mean", "optical_std", "sar_db_mean", "sar_db_std")}
        record: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "mars_jax_version": mars_jax.__version__, "what": what,
            "model": unscanned.to_dict() | stats, "statistics": stats,
            "task": None, "head": None, "levels": None, "modalities": list(
                loaded.experiment.task.modalities) if finetuned else ["optical", "sar"],
            "image_size": size, "weights": files, "serving": {}, "onnx": None,
            "source": {"workdir": str(Path(source).absolute()), "step": loaded.step,
                       "checkpoint": str(loaded.folder.absolute()),
                       "kind": "finetuning" if finetuned else "pretraining",
                       "git_commit": git_commit()},
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        if what == "task":
            record |= {"task": task_record(task) | {"kind": task.kind},
                       "head": loaded.experiment.head.to_dict(),
                       "levels": list(loaded.model.levels)}
        (staging / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
        bundle = read_bundle(staging, verify=False)
        if serving:
            from mars_jax.export.serving import export_serving

            record["serving"] = export_serving(bundle, staging, log=log)
            bundle = dataclasses.replace(bundle, config=record)
        if onnx:
            if not serving:
                raise BundleError("--onnx converts the serving functions: drop --noserving")
            from mars_jax.export.onnx import export_onnx

            record["onnx"] = export_onnx(bundle, staging, log=log)
        (staging / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
        write_manifest(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"bundle {out}: {what} of {source} step {loaded.step} "
        f"({', '.join(sorted(files))}; serving: {', '.join(record['serving']) or 'none'})")
    return dataclasses.replace(bundle, folder=out, config=record)


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """config.json of a bundle, its format and version checked."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise BundleError(f"bundle {folder}: no such folder")
    if not path.is_file():
        raise BundleError(f"bundle {folder}: {CONFIG_FILE} is missing")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise BundleError(f"{path}: not a mars_jax bundle (format {record.get('format')!r})")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"bundle {folder} has format version {version}; this mars_jax "
                          f"({mars_jax.__version__}) reads version {FORMAT_VERSION}: export it "
                          "again with this version, or install the mars_jax that wrote it "
                          f"({record.get('mars_jax_version')})")
    return record


def read_bundle(folder: str | os.PathLike, *, verify: bool = True) -> Bundle:
    """A bundle's config and model (eval mode). ``verify``: check every file against
    manifest.json first (a missing or altered file is a ``BundleError`` naming it)."""
    folder = Path(folder)
    record = read_config(folder)
    if verify:
        verify_manifest(folder)
    for part, file in record["weights"].items():
        if not (folder / file).is_file():
            raise BundleError(f"bundle {folder}: {file} ({part} weights) is missing")
    model_config = MaRSConfig.from_dict({k: v for k, v in record["model"].items()})
    if record["what"] == "task":
        from mars_jax.tasks.model import TaskModel

        task = task_from_record(record["task"])
        head = HeadConfig.from_dict(record["head"])
        build = lambda: TaskModel(model_config, task, head, levels=record["levels"],
                                  rngs=nnx.Rngs(0))
    else:
        build = lambda: MaRSEncoder(model_config, rngs=nnx.Rngs(0))
    model = nnx.eval_shape(build)
    from mars_jax.export.serving import assemble

    parts = {part: load_part(folder / file) for part, file in record["weights"].items()}
    try:
        fill_module(model, assemble(parts, record["what"] == "task"), f"bundle {folder}")
    except CheckpointLayoutError as error:
        raise BundleError(f"{error} (weights: {', '.join(record['weights'].values())})"
                          ) from None
    model.eval()
    return Bundle(folder, record, model)


__all__ = [
    "CONFIG_FILE",
    "ENCODER_PARTS",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "PARTS",
    "WEIGHTS_DIR",
    "WHATS",
    "Bundle",
    "BundleError",
    "export_bundle",
    "read_bundle",
    "read_config",
]
