"""What every dataset loader shares: scanning a folder once, naming bad files, reading samples.

A loader is a random-access source (``__len__`` / ``__getitem__``, grain's protocol, like
``records.ShardSource``) over one split of a dataset folder in the dataset's published layout.
Each example is a dict of numpy arrays in the data contract's keys and dtypes
(docs/architecture.md, the names SynthVHR uses) plus ``id``, a 0-d str naming the sample.

Construction scans the folder once:

1. ``_find`` pairs files by the dataset's naming convention into samples (an id and a file per
   role) and notes every file whose partner is missing and every listed id without files.
   A layout that is not there at all (a missing folder, split list or annotation file) raises
   ``DatasetError`` at once, describing the layout expected.
2. Every file's header is read (rasterio for GeoTIFF, pillow for PNG / JPEG: size, bands,
   dtype; no pixels, threaded): unreadable files, and files whose size differs from their
   partners' (or from what an annotation file says), are noted.
3. With ``scan="full"`` every remaining sample is also decoded and converted once, exactly as
   ``__getitem__`` does: truncated pixel data, label values outside the documented set and SAR
   values that cannot be in their unit are noted too. This reads the whole split (slow); the
   default ``scan="header"`` leaves those checks to ``__getitem__``.

Every problem found is reported together in one ``DatasetError`` naming each bad file and
what is wrong with it. With ``skip_bad=True`` the samples they spoil are left out instead and a
``DatasetWarning`` lists them (``source.problems`` keeps them). Later, a file that fails to
decode or convert in ``__getitem__`` raises ``SampleError`` naming the file, the sample id, the
index and the problem; so do label values outside the documented set (naming the values).

Conversions (the data contract):

- Optical: the first three data bands (alpha dropped; one band is repeated into grey) through
  ``io.optical_to_uint8``: uint8 kept, other dtypes stretched per image; the file's nodata value
  and alpha / mask band mark invalid pixels (set to 0). No black-border guessing.
- SAR: every data band, identical copies stored once (a grey image saved as RGB is one
  polarisation), converted by ``io.sar_to_db`` in the unit ``sar_kind`` says. ``"auto"`` (the
  default) decides like ``python -m mars_jax.data.ingest --sar-kind auto``
  (``io.decide_sar_kind``): integer data without calibration metadata is amplitude DN
  (``20 log10 DN``), so the 8-bit display SAR these datasets publish is taken as amplitude DN;
  zeros are no-data. ``sar_normalise`` then gives uncalibrated DN a dB scale the way ingestion
  does (``"auto"``: an affine map per image onto ``contract.SAR_DB_MEAN`` / ``SAR_DB_STD`` over
  the pixels valid in both modalities, ``io.match_db_statistics``; ``"none"``: plain
  ``20 log10 DN``; ``"percentile"``: map every image), so fine-tuning sees SAR on the scale
  pretraining shards carry.
- Labels: one band (or identical copies), integer ids, mapped through the loader's table of
  documented values; ``IGNORE`` (255) is "no label".
"""

from __future__ import annotations

import concurrent.futures
import json
import operator
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from mars_jax.data import io
from mars_jax.data.contract import SAR_DB_MEAN, SAR_DB_STD

IGNORE = 255  # label value of "no label" in every task key of class ids
SCANS = ("header", "full")
SAR_NORMALISE = ("auto", "none", "percentile")
_HEADER_THREADS = 16


# ---------------------------------------------------------------------------------------------
# Problems and errors


@dataclass(frozen=True)
class Problem:
    """One bad file: its path, a short reason (``missing_partner``, ``unreadable``,
    ``size_mismatch``, ``bad_labels``, ...), the details, and the id of the sample it spoils
    (None for a file no sample uses, e.g. an orphan partner)."""

    path: Path
    reason: str
    detail: str
    sample: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}: {self.detail}"


_SKIP_HINT = ("Fix or remove these files, or pass skip_bad=True to leave the samples they "
              "belong to out (with a warning).")


class DatasetError(ValueError):
    """A dataset folder that cannot be loaded as asked: every problem found, each naming a file.

    ``problems`` lists them; ``hint`` says what to do (by default: fix the files or pass
    ``skip_bad=True``; for a layout problem: the layout expected).
    """

    def __init__(self, dataset: str, root: str | os.PathLike, problems: Sequence[Problem],
                 hint: str | None = None):
        super().__init__(dataset, str(root), tuple(problems), hint)  # picklable
        self.dataset, self.root, self.problems = dataset, Path(root), tuple(problems)
        self.hint = hint or _SKIP_HINT

    def __str__(self) -> str:
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        return (f"{self.dataset} at {self.root}: {len(self.problems)} problem(s):\n{lines}\n"
                f"{self.hint}")


class SampleError(ValueError):
    """A file of one sample that fails to decode or convert when the sample is read."""

    def __init__(self, problem: Problem, index: int | None = None):
        super().__init__(problem, index)  # picklable across grain worker processes
        self.problem, self.index = problem, index
        self.path, self.reason, self.detail = problem.path, problem.reason, problem.detail

    def __str__(self) -> str:
        where = f" (index {self.index})" if self.index is not None else ""
        return f"sample {self.problem.sample!r}{where}: {self.problem}"


class DatasetWarning(UserWarning):
    """Samples left out of a dataset because of bad files (``skip_bad=True``)."""


# ---------------------------------------------------------------------------------------------
# Files: headers, roles, pairing


@dataclass(frozen=True)
class Header:
    """What a raster's header says, without reading its pixels."""

    path: Path
    height: int
    width: int
    count: int
    dtype: str


_PILLOW_DTYPES = {"1": "bool", "I;16": "uint16", "I;16B": "uint16", "I": "int32",
                  "F": "float32"}


def read_header(path: str | os.PathLike) -> Header:
    """Size, band count and dtype of a raster; raises ``io.RasterReadError`` naming it."""
    path = Path(path)
    try:
        if path.suffix.lower() in io.PILLOW_SUFFIXES:
            with Image.open(path) as image:  # lazy: reads the header only
                width, height = image.size
                return Header(path, height, width, len(image.getbands()),
                              _PILLOW_DTYPES.get(image.mode, "uint8"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                return Header(path, dataset.height, dataset.width, dataset.count,
                              dataset.dtypes[0])
    except Exception as error:  # any failure to open means the file is unusable
        raise io.RasterReadError(path, str(error) or type(error).__name__) from error


@dataclass(frozen=True)
class Role:
    """One kind of file of a sample: its folder and name ``{prefix}{id}{suffix}.{ext}``."""

    name: str
    folder: Path
    suffix: str = ""
    prefix: str = ""
    extensions: frozenset[str] = io.RASTER_SUFFIXES

    def expected(self, sample_id: str) -> str:
        """The file name the convention expects for ``sample_id`` (any of the extensions)."""
        extensions = ",".join(sorted(self.extensions))
        return str(self.folder / f"{self.prefix}{sample_id}{self.suffix}") + f"{{{extensions}}}"

    def scan(self) -> tuple[dict[str, Path], list[Problem]]:
        """id -> file of the folder's files that follow the convention; duplicates are
        problems (the same id with two extensions)."""
        found: dict[str, Path] = {}
        problems: list[Problem] = []
        for path in sorted(self.folder.iterdir()):
            stem = path.stem
            if (path.suffix.lower() not in self.extensions or not path.is_file()
                    or not stem.startswith(self.prefix) or not stem.endswith(self.suffix)
                    or len(stem) <= len(self.prefix) + len(self.suffix)):
                continue
            sample_id = stem[len(self.prefix):len(stem) - len(self.suffix)]
            if sample_id in found:
                problems.append(Problem(path, "duplicate_id", f"{self.name} file for id "
                                        f"{sample_id!r} twice: {found[sample_id].name} and "
                                        f"{path.name}", sample_id))
                continue
            found[sample_id] = path
        return found, problems


@dataclass(frozen=True)
class Sample:
    """One sample: its id, a raster per role, and what else its loader needs (``extra``)."""

    id: str
    files: Mapping[str, Path]
    extra: Any = field(default=None, compare=False)


def pair(roles: Sequence[Role], found: Mapping[str, Mapping[str, Path]],
         ids: Iterable[str] | None = None, prefix: str = ""
         ) -> tuple[list[Sample], list[Problem]]:
    """Samples of ``ids`` (default: every id seen in any role), a file per role each.

    A missing file is a problem naming the partner that is there (``missing_partner``), or the
    file expected when none is (``missing_file``: an id listed without files). Sample ids get
    ``prefix`` (e.g. the city folder).
    """
    names = [role.name for role in roles]
    all_ids = sorted(set().union(*(found[name] for name in names))) if ids is None else ids
    samples, problems = [], []
    for sample_id in all_ids:
        files = {name: found[name][sample_id] for name in names if sample_id in found[name]}
        full_id = prefix + sample_id
        witness = next(iter(files.values()), None)
        if witness is None:
            problems.append(Problem(Path(roles[0].expected(sample_id)), "missing_file",
                                    f"listed id {sample_id!r} has none of its files",
                                    full_id))
        else:
            problems += [Problem(witness, "missing_partner",
                                 f"no {role.name} file {role.expected(sample_id)}", full_id)
                         for role in roles if role.name not in files]
        samples.append(Sample(full_id, files))
    return samples, problems


def scan_roles(roles: Sequence[Role]) -> tuple[dict[str, dict[str, Path]], list[Problem]]:
    """Each role's id -> file map, and the duplicate problems of all of them."""
    found, problems = {}, []
    for role in roles:
        found[role.name], duplicates = role.scan()
        problems += duplicates
    return found, problems


def scan_and_pair(roles: Sequence[Role], ids: Sequence[str] | None = None
                  ) -> tuple[list[Sample], list[Problem]]:
    """``scan_roles`` then ``pair`` for the split's ``ids``: duplicates among files of other
    splits are not this split's problems."""
    found, duplicates = scan_roles(roles)
    if ids is not None:
        listed = set(ids)
        duplicates = [problem for problem in duplicates if problem.sample in listed]
    samples, missing = pair(roles, found, ids)
    return samples, duplicates + missing


def read_id_list(path: Path) -> list[str]:
    """Non-empty lines of a split list, stripped (the first column if several)."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def load_json(path: Path) -> Any:
    with path.open() as file:
        return json.load(file)


# ---------------------------------------------------------------------------------------------
# Conversions


@dataclass(frozen=True)
class SarOptions:
    """How SAR files become dB (module docstring): the unit and the normalisation."""

    kind: str = "auto"
    normalise: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in io.SAR_KIND_CHOICES:
            raise ValueError(f"sar_kind must be one of {io.SAR_KIND_CHOICES}, got {self.kind!r}")
        if self.normalise not in SAR_NORMALISE:
            raise ValueError(f"sar_normalise must be one of {SAR_NORMALISE}, got "
                             f"{self.normalise!r}")


def _bad(meta: io.RasterMeta, reason: str, detail: str, sample_id: str) -> SampleError:
    return SampleError(Problem(meta.path, reason, detail, sample_id))


def to_optical(raw: np.ndarray, meta: io.RasterMeta, sample_id: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """Optical file -> (uint8 RGB [H, W, 3], valid [H, W]) (module docstring)."""
    bands = [band - 1 for band in meta.data_bands]
    bands = bands[:3] if len(bands) >= 3 else bands[:1]
    try:
        rgb, valid = io.optical_to_uint8(raw[..., bands], nodata=meta.nodata)
    except ValueError as error:
        raise _bad(meta, "bad_optical", str(error), sample_id) from error
    if meta.mask is not None:
        valid &= meta.mask
        rgb[~valid] = 0
    return rgb, valid


def to_sar_db(raw: np.ndarray, meta: io.RasterMeta, options: SarOptions, sample_id: str
              ) -> tuple[np.ndarray, np.ndarray, bool]:
    """SAR file -> (dB float32 [H, W, C], valid [H, W], uncalibrated display DN or not)."""
    selected = raw[..., [band - 1 for band in meta.data_bands]]
    if selected.shape[-1] > 1 and all(np.array_equal(selected[..., 0], selected[..., b])
                                      for b in range(1, selected.shape[-1])):
        selected = selected[..., :1]
    scale, offset = io.sar_calibration(meta)
    try:
        kind = io.decide_sar_kind(selected, meta, options.kind, scale=scale, offset=offset)
    except io.SarKindError as error:
        raise _bad(meta, "sar_kind", str(error).removeprefix(f"{meta.path}: "),
                   sample_id) from error
    db, valid = io.sar_to_db(selected, kind.kind, scale=scale, offset=offset, nodata=meta.nodata)
    if meta.mask is not None:
        valid &= meta.mask
    return db, valid, io.sar_uncalibrated(kind, selected.dtype, meta)


def normalise_sar(db: np.ndarray, valid: np.ndarray, uncalibrated: bool,
                  options: SarOptions) -> np.ndarray:
    """``sar_normalise``: uncalibrated DN onto the contract's reference dB statistics."""
    mode = options.normalise
    if mode == "auto":
        mode = "percentile" if uncalibrated else "none"
    if mode == "none":
        return db
    return io.match_db_statistics(db, valid, (SAR_DB_MEAN,), (SAR_DB_STD,))[0]


def label_band(raw: np.ndarray, meta: io.RasterMeta, sample_id: str) -> np.ndarray:
    """Label file -> integer ids [H, W]: one band, or identical copies of one (RGB masks)."""
    bands = raw[..., [band - 1 for band in meta.data_bands]]
    if bands.shape[-1] > 1 and not all(np.array_equal(bands[..., 0], bands[..., b])
                                       for b in range(1, bands.shape[-1])):
        raise _bad(meta, "bad_labels", f"labels need one band, the file has "
                   f"{bands.shape[-1]} different bands", sample_id)
    labels = bands[..., 0]
    if labels.dtype.kind == "f":
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise _bad(meta, "bad_labels", "labels must be integer class ids, the file has "
                       "fractional or non-finite values", sample_id)
        labels = labels.astype(np.int64)
    elif labels.dtype.kind == "b":
        labels = labels.astype(np.uint8)
    return labels


def present_values(labels: np.ndarray) -> np.ndarray:
    """The distinct values of an integer array, ascending (fast for 8 / 16-bit labels)."""
    if labels.dtype.kind == "u" and labels.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(labels.ravel(), minlength=1))
    return np.unique(labels)


def map_labels(labels: np.ndarray, table: Mapping[int, int], path: Path, sample_id: str,
               dtype: Any = np.uint8) -> np.ndarray:
    """``table[value]`` per pixel; values outside the table raise naming file and values."""
    values = present_values(labels)
    unknown = [int(v) for v in values if int(v) not in table]
    if unknown:
        raise SampleError(Problem(path, "bad_labels", f"label values {unknown} are outside "
                                  f"the documented set {sorted(table)}", sample_id))
    lut = np.zeros(max(table) + 1, dtype)
    for value, mapped in table.items():
        lut[value] = mapped
    return lut[labels]


# ---------------------------------------------------------------------------------------------
# The source


class FolderSource:
    """A random-access source over one split of a dataset folder (module docstring).

    Subclasses set ``name``, ``task``, ``keys`` (the keys of a labelled example, besides
    ``id``), ``splits``, ``layout`` and, for class labels, ``classes``, and implement
    ``_find`` (pairing; it sets ``self.labelled``) and ``_load`` (one sample's arrays);
    ``_check_sample`` adds checks of a sample's headers.
    """

    name: ClassVar[str] = ""
    task: ClassVar[str] = ""
    keys: ClassVar[tuple[str, ...]] = ()
    splits: ClassVar[tuple[str, ...]] = ()
    layout: ClassVar[str] = ""
    classes: ClassVar[tuple[str, ...]] = ()  # class names of a segmentation label, by id

    def __init__(self, root: str | os.PathLike, split: str, *, skip_bad: bool = False,
                 scan: str = "header"):
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
        self.root, self.split, self.skip_bad, self.scan = Path(root), split, skip_bad, scan
        self._check_split()
        self.labelled = True
        if not self.root.is_dir():
            raise self._layout_error(self.root, "missing_folder", "no such folder")
        candidates, problems = self._find()
        problems += self._check_headers(candidates)  # all of them: report every bad file
        if scan == "full":
            spoiled = {p.sample for p in problems}
            problems += self._decode_all([s for s in candidates if s.id not in spoiled])
        self.problems: tuple[Problem, ...] = tuple(problems)
        if problems and not skip_bad:
            raise DatasetError(self.name, self.root, problems)
        spoiled = {p.sample for p in problems}
        self.samples: list[Sample] = [s for s in candidates if s.id not in spoiled]
        if problems:
            lines = "\n".join(f"  {problem}" for problem in problems)
            warnings.warn(DatasetWarning(
                f"{self.name} at {self.root}: {len(candidates) - len(self.samples)} of "
                f"{len(candidates)} samples of split {split!r} left out, {len(problems)} "
                f"problem(s):\n{lines}"), stacklevel=3)
        if not self.samples:
            raise DatasetError(self.name, self.root, [Problem(
                self.root, "no_samples", f"no usable sample in split {split!r}")],
                hint=f"Expected layout:\n{self.layout}")

    # -- to implement -------------------------------------------------------------------------

    def _find(self) -> tuple[list[Sample], list[Problem]]:
        raise NotImplementedError

    def _load(self, sample: Sample) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _check_sample(self, sample: Sample, headers: Mapping[str, Header]) -> list[Problem]:
        return []

    # -- helpers ------------------------------------------------------------------------------

    def _layout_error(self, path: Path, reason: str, detail: str,
                      hint: str | None = None) -> DatasetError:
        return DatasetError(self.name, self.root, [Problem(path, reason, detail)],
                            hint=hint or f"Expected layout:\n{self.layout}")

    def _folder(self, path: Path, what: str) -> Path:
        if not path.is_dir():
            raise self._layout_error(path, "missing_folder", f"no {what} folder")
        return path

    def _check_split(self) -> None:
        if self.splits and self.split not in self.splits:
            raise ValueError(f"{self.name} has splits {self.splits}, got {self.split!r}")

    def _check_headers(self, samples: Sequence[Sample]) -> list[Problem]:
        if not samples:
            return []
        with concurrent.futures.ThreadPoolExecutor(min(_HEADER_THREADS, len(samples))) as pool:
            return [problem for problems in pool.map(self._check_one, samples)
                    for problem in problems]

    def _decode_all(self, samples: Sequence[Sample]) -> list[Problem]:
        """``scan="full"``: the problem of each sample that fails to load (threaded)."""

        def decode(sample: Sample) -> Problem | None:
            try:
                self._load(sample)
            except SampleError as error:
                return error.problem
            return None

        if not samples:
            return []
        with concurrent.futures.ThreadPoolExecutor(min(_HEADER_THREADS, len(samples))) as pool:
            return [problem for problem in pool.map(decode, samples) if problem is not None]

    def _check_one(self, sample: Sample) -> list[Problem]:
        headers, problems = {}, []
        for role, path in sample.files.items():
            try:
                headers[role] = read_header(path)
            except io.RasterReadError as error:
                problems.append(Problem(path, "unreadable", error.detail, sample.id))
        if headers:
            reference = next(iter(headers.values()))
            for header in headers.values():
                if (header.height, header.width) != (reference.height, reference.width):
                    problems.append(Problem(
                        header.path, "size_mismatch", f"{header.height}x{header.width} "
                        f"pixels, but {reference.path} has {reference.height}x"
                        f"{reference.width}", sample.id))
        if not problems:
            problems += self._check_sample(sample, headers)
        return problems

    def _read(self, sample: Sample, role: str) -> tuple[np.ndarray, io.RasterMeta]:
        path = sample.files[role]
        try:
            return io.read_raster(path)
        except io.RasterReadError as error:
            raise SampleError(Problem(path, "unreadable", error.detail, sample.id)) from error

    def _read_all(self, sample: Sample) -> dict[str, tuple[np.ndarray, io.RasterMeta]]:
        """Every raster of the sample, checked to share one size."""
        rasters = {role: self._read(sample, role) for role in sample.files}
        shapes = {role: array.shape[:2] for role, (array, _) in rasters.items()}
        reference = next(iter(shapes))
        for role, shape in shapes.items():
            if shape != shapes[reference]:
                raise SampleError(Problem(
                    sample.files[role], "size_mismatch", f"{shape[0]}x{shape[1]} pixels, but "
                    f"{sample.files[reference]} has {shapes[reference][0]}x"
                    f"{shapes[reference][1]}", sample.id))
        return rasters

    # -- the source protocol ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        key = operator.index(index)
        if not 0 <= key < len(self.samples):
            raise IndexError(f"index {key} out of range for {len(self.samples)} samples")
        sample = self.samples[key]
        try:
            example = self._load(sample)
        except SampleError as error:
            raise SampleError(error.problem, key) from error
        example["id"] = np.asarray(sample.id)
        return example

    def __repr__(self) -> str:
        count = len(getattr(self, "samples", ()))
        return (f"{type(self).__name__}({count} samples of split {self.split!r} in "
                f"{self.root})")


def sar_example(sample: Sample, options: SarOptions,
                rasters: Mapping[str, tuple[np.ndarray, io.RasterMeta]], optical_role: str,
                sar_role: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(optical, SAR dB, valid) of a sample with one optical and one SAR raster."""
    optical, optical_valid = to_optical(*rasters[optical_role], sample.id)
    sar, sar_valid, uncalibrated = to_sar_db(*rasters[sar_role], options, sample.id)
    valid = optical_valid & sar_valid
    return optical, normalise_sar(sar, valid, uncalibrated, options), valid

