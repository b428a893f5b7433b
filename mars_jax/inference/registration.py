"""``python -m mars_jax.register``'s work: read a pair, describe both images with a fine-tuned
registration model or the pretrained encoders (zero-shot), match, fit, write the outputs.

Descriptors come from one jitted call per modality and image size; matching and RANSAC are
``tasks.registration.register_descriptors``. Images are padded at the bottom and right to a
multiple of the patch size; padded pixels are no-data, so no match starts or ends there.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mars_jax.data import io
from mars_jax.data.datasets.base import SarOptions, normalise_sar, to_optical, to_sar_db
from mars_jax.metrics.registration import RegistrationScores, apply_transform, as_matrix
from mars_jax.tasks.matching import MatchSettings
from mars_jax.tasks.registration import (
    FINE_TUNED,
    ZERO_SHOT,
    Registered,
    encoder_descriptors,
    model_descriptors,
    register_descriptors,
)
from mars_jax.tasks.registration_pictures import (
    checkerboard,
    matches_picture,
    resample_onto,
    sar_to_display,
)


@dataclasses.dataclass(frozen=True)
class Image:
    """One image as the model takes it, and where it came from (for the GeoTIFF output)."""

    pixels: np.ndarray  # optical uint8 [H, W, 3] or SAR dB float32 [H, W, C]
    valid: np.ndarray  # [H, W] bool
    meta: io.RasterMeta | None = None


def read_pair(optical_path: str | Path, sar_path: str | Path) -> tuple[Image, Image]:
    """Reads and converts both images as the dataset loaders do (``data.datasets.base``)."""
    for role, path in (("--optical", optical_path), ("--sar", sar_path)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{role} {path}: no such file")
    raw, meta = io.read_raster(optical_path)
    rgb, rgb_valid = to_optical(raw, meta, Path(optical_path).stem)
    raw_sar, sar_meta = io.read_raster(sar_path)
    options = SarOptions()
    db, sar_valid, uncalibrated = to_sar_db(raw_sar, sar_meta, options, Path(sar_path).stem)
    db = normalise_sar(db, sar_valid, uncalibrated, options)
    return Image(rgb, rgb_valid, meta), Image(db.astype(np.float32), sar_valid, sar_meta)


def pad_to(image: np.ndarray, valid: np.ndarray, multiple: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Pads bottom / right to a multiple of ``multiple``; the padding is no-data."""
    h, w = valid.shape
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return image, valid
    return (np.pad(image, ((0, ph), (0, pw), (0, 0))),
            np.pad(valid, ((0, ph), (0, pw)), constant_values=False))


@dataclasses.dataclass
class Registrar:
    """Describes images with ``describe(pixels [1, H, W, C], modality, valid [1, H, W])`` ->
    [1, h, w, D] and registers pairs (``register``)."""

    describe_fn: Callable[..., jax.Array]
    stride: float
    patch_size: int
    settings: MatchSettings
    source: str  # what the descriptors are, for transform.json

    def descriptors(self, image: Image, modality: str) -> tuple[np.ndarray, np.ndarray]:
        pixels, valid = pad_to(image.pixels, image.valid, self.patch_size)
        desc = self.describe_fn(jnp.asarray(pixels[None]), modality, jnp.asarray(valid[None]))
        return np.asarray(desc[0]), valid

    def register(self, optical: Image, sar: Image, *, model: str = "affine",
                 threshold: float = 5.0, truth: np.ndarray | None = None) -> Registered:
        desc_o, valid_o = self.descriptors(optical, "optical")
        desc_s, valid_s = self.descriptors(sar, "sar")
        return register_descriptors(desc_o, desc_s, self.stride, settings=self.settings,
                                    model=model, threshold=threshold, valid_optical=valid_o,
                                    valid_sar=valid_s, truth=truth,
                                    image_size=optical.valid.shape)

    def describe(self) -> dict[str, Any]:
        return {"descriptors": self.source, "stride": self.stride,
                "pool": self.settings.pool, "radius": self.settings.radius}


def _jitted(fn: Callable, graphdef: nnx.GraphDef, state: nnx.State) -> Callable:
    """(pixels, modality, valid) -> descriptors, one compile per modality and size."""

    @jax.jit
    def optical(state, pixels, valid):
        return fn(nnx.merge(graphdef, state), pixels, "optical", valid)

    @jax.jit
    def sar(state, pixels, valid):
        return fn(nnx.merge(graphdef, state), pixels, "sar", valid)

    return lambda pixels, modality, valid: (optical if modality == "optical" else sar)(
        state, pixels, valid)


def fine_tuned_registrar(model) -> Registrar:
    """A registration ``TaskModel`` (eval mode): its descriptor head, matched coarse-to-fine."""
    model.eval()
    graphdef, state = nnx.split(model)
    return Registrar(_jitted(model_descriptors, graphdef, state), model.patch_size / 4,
                     model.patch_size, FINE_TUNED, "fine-tuned descriptor head")


def zero_shot_registrar(encoder) -> Registrar:
    """Pretrained encoders: the CGCL embeddings of each patch, matched at the patch level."""
    graphdef, state = nnx.split(encoder)
    patch = encoder.config.patch_size
    return Registrar(_jitted(encoder_descriptors, graphdef, state), patch, patch, ZERO_SHOT,
                     "pretrained CGCL patch embeddings (zero-shot)")


def load_registrar(*, workdir: str | None = None, checkpoint: str | None = None,
                   bundle: str | None = None, config: str | None = None) -> Registrar:
    """The registrar of a registration fine-tuning workdir or task bundle (the fine-tuned
    head), or, zero shot, of a pretraining checkpoint or an encoders / model bundle.
    ``config``: the run's config file, for workdirs without W/config.json (a pretraining
    checkpoint's default: configs/pretrain.py:tiny)."""
    from mars_jax.config_files import load_config

    if bundle is not None:
        from mars_jax.export.bundle import read_bundle

        loaded = read_bundle(bundle)
        if loaded.what != "task":
            return zero_shot_registrar(loaded.encoder)
        if loaded.model.task.name != "registration":
            raise ValueError(f"--bundle {bundle} holds a {loaded.model.task.name!r} head, not "
                             "registration; export a registration workdir, or an encoders "
                             "bundle for zero-shot matching")
        return fine_tuned_registrar(loaded.model)
    if workdir is not None:
        from mars_jax.train.workdir import load_workdir_model

        loaded = load_workdir_model(workdir, config=load_config(config) if config else None)
        task = loaded.task
        if task is None or task.name != "registration":
            raise ValueError(f"--workdir {workdir} was "
                             + (f"fine-tuned for {task.name!r}" if task else "pretrained")
                             + ", not fine-tuned for registration (zero-shot: --checkpoint)")
        return fine_tuned_registrar(loaded.model)
    from mars_jax.models.encoder import MaRSEncoder
    from mars_jax.train.config import Experiment
    from mars_jax.train.pretrained import load_encoder

    exp = Experiment.from_config(load_config(config or "configs/pretrain.py:tiny"))
    encoder = MaRSEncoder(exp.model, rngs=nnx.Rngs(0))
    load_encoder(encoder, checkpoint)
    return zero_shot_registrar(encoder)


# ------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------
def write_outputs(out: Path, optical: Image, sar: Image, result: Registered,
                  about: dict[str, Any]) -> dict[str, Any]:
    """transform.json, sar_registered.png (+ .tif for a georeferenced optical image),
    checkerboard.png (and checkerboard_unregistered.png, the SAR as it came) and matches.png
    in ``out``; returns the JSON record."""
    from mars_jax.train.images import save_png

    out.mkdir(parents=True, exist_ok=True)
    size = optical.valid.shape
    transform = result.transform
    record: dict[str, Any] = {
        "transform": None if transform is None else as_matrix(transform).tolist(),
        "inverse": None if transform is None else np.linalg.inv(as_matrix(transform)).tolist(),
        "convention": "optical pixel (x, y, 1) -> SAR pixel; pixel centres at integers",
        "matches": len(result.src), "inliers": int(result.fit.inliers.sum()),
        "scores": None if result.score is None else _json_scores(
            dataclasses.asdict(result.score)),
        "optical_size": list(size), "sar_size": list(sar.valid.shape), **about,
    }
    grey = sar_to_display(sar.pixels, sar.valid)
    save_png(out / "matches.png", matches_picture(optical.pixels, grey, result))
    unregistered = resample_onto(np.eye(3), grey, size)  # the SAR as it came: the misfit
    save_png(out / "checkerboard_unregistered.png", checkerboard(optical.pixels, unregistered))
    if transform is not None:
        registered = resample_onto(transform, grey, size)
        save_png(out / "sar_registered.png", registered)
        save_png(out / "checkerboard.png", checkerboard(optical.pixels, registered))
        if optical.meta is not None and optical.meta.crs:
            db = resample_onto(transform, sar.pixels[..., 0], size)
            inside = resample_onto(transform, sar.valid.astype(np.uint8), size, nearest=True)
            write_geotiff(out / "sar_registered.tif", np.where(inside > 0, db, np.nan),
                          optical.meta)
        corners = apply_transform(transform, [[0, 0], [size[1] - 1, size[0] - 1]])
        record["corners_in_sar"] = corners.tolist()
    (out / "transform.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _json_scores(scores: dict[str, Any]) -> dict[str, Any]:
    """Scores for JSON: an infinite or NaN value (no transform, no match) as null."""
    return {k: (v if np.isfinite(v) else None) for k, v in scores.items()}


def write_geotiff(path: Path, values: np.ndarray, meta: io.RasterMeta) -> None:
    """One float32 band on the optical image's grid (its CRS and geotransform), NaN no-data."""
    import rasterio
    from rasterio.transform import Affine

    height, width = values.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="float32", crs=meta.crs, transform=Affine(*meta.transform[:6]),
                       nodata=float("nan"), compress="deflate") as dst:
        dst.write(values.astype(np.float32), 1)
        dst.set_band_description(1, "SAR dB, registered onto the optical grid")


def load_truth(path: str | Path) -> np.ndarray:
    """A 2x3 or 3x3 transform (optical px -> SAR px) from a text file (whitespace or commas)
    or a .npy file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ground-truth transform {path}: no such file")
    matrix = np.load(file) if file.suffix == ".npy" else np.loadtxt(
        file, delimiter="," if "," in file.read_text() else None)
    matrix = np.asarray(matrix, np.float64)
    if matrix.shape not in ((2, 3), (3, 3)):
        raise ValueError(f"ground-truth transform {path}: a 2x3 or 3x3 matrix, got shape "
                         f"{matrix.shape}")
    return matrix


# ------------------------------------------------------------------------------------------
# GUSO-layout folders
# ------------------------------------------------------------------------------------------
OPTICAL_SUFFIX, SAR_SUFFIX = "_opt", "_sar"
TRUTH_SUFFIXES = ("_H.txt", "_H.npy")  # a 3x3 (or 2x3) optical px -> SAR px transform
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class PairFiles:
    """One pair of a GUSO-layout folder: ``{id}_opt.*``, ``{id}_sar.*`` and, when given, the
    ground-truth transform ``{id}_H.txt`` / ``{id}_H.npy``."""

    id: str
    optical: Path
    sar: Path
    truth: Path | None


def folder_pairs(folder: str | Path) -> list[PairFiles]:
    """The pairs of a GUSO-layout folder in id order; an id with only one of its two images,
    or a folder with no pair, is an error naming the files."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--folder {folder}: no such folder")
    images: dict[str, dict[str, Path]] = {}
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        for role, suffix in (("optical", OPTICAL_SUFFIX), ("sar", SAR_SUFFIX)):
            if path.stem.endswith(suffix):
                found = images.setdefault(path.stem[:-len(suffix)], {})
                if role in found:
                    raise ValueError(f"--folder {folder}: two {role} images for id "
                                     f"{path.stem[:-len(suffix)]!r}: {found[role].name}, "
                                     f"{path.name}")
                found[role] = path
    alone = {i: sorted(p.name for p in f.values()) for i, f in images.items() if len(f) != 2}
    if alone:
        raise ValueError(f"--folder {folder}: ids without both {OPTICAL_SUFFIX} and "
                         f"{SAR_SUFFIX} images: {alone}")
    if not images:
        raise ValueError(f"--folder {folder}: no {{id}}{OPTICAL_SUFFIX}.png / "
                         f"{{id}}{SAR_SUFFIX}.png pairs")
    pairs = []
    for pair_id, found in sorted(images.items()):
        truths = [root / f"{pair_id}{s}" for s in TRUTH_SUFFIXES if (root / f"{pair_id}{s}"
                                                                     ).is_file()]
        pairs.append(PairFiles(pair_id, found["optical"], found["sar"],
                               truths[0] if truths else None))
    return pairs


def register_folder(registrar: Registrar, pairs: Sequence[PairFiles], out: Path, *,
                    model: str = "affine",
                    threshold: float = 5.0, progress: bool = True) -> dict[str, Any]:
    """Registers every pair into ``out/{id}/`` (as ``write_outputs``) and writes
    ``out/scores.json``: GUSO's scores over the pairs with a ground truth (none: no scores),
    and each pair's record. A pair that fails to read is recorded with its error and the
    others go on."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    scores = RegistrationScores()
    records: dict[str, Any] = {}
    for pair in tqdm(pairs, desc="register", unit="pair", disable=not progress):
        try:
            optical, sar = read_pair(pair.optical, pair.sar)
            truth = load_truth(pair.truth) if pair.truth else None
        except (FileNotFoundError, ValueError) as error:
            records[pair.id] = {"error": str(error)}
            continue
        result = registrar.register(optical, sar, model=model, threshold=threshold,
                                    truth=truth)
        record = write_outputs(out / pair.id, optical, sar, result, {})
        records[pair.id] = {k: record[k] for k in ("transform", "matches", "inliers", "scores")}
        if result.score is not None:
            scores.update(result.score)
    scored = len(scores.pairs)
    summary = {"pairs": len(pairs), "scored": scored,
               "failed_to_read": sum("error" in r for r in records.values()),
               "scores": _json_scores(scores.compute()) if scored else None,
               **registrar.describe(), "records": records}
    (out / "scores.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
