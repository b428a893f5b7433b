import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# 8 simulated CPU devices for the sharding tests, and less LLVM optimisation: the tests'
# programs are tiny and compiling dominates (about 30% faster). Set before jax is imported.
# Appended to the user's XLA_FLAGS, not in place of them; a flag the user already set wins.
TEST_DEVICE_COUNT = 8
TEST_XLA_FLAGS = (f"--xla_force_host_platform_device_count={TEST_DEVICE_COUNT}",
                  "--xla_backend_optimization_level=0")


def with_test_xla_flags(flags: str) -> str:
    """``flags`` plus each of TEST_XLA_FLAGS whose name it does not already set."""
    names = {part.split("=", 1)[0] for part in flags.split()}
    extra = [flag for flag in TEST_XLA_FLAGS if flag.split("=", 1)[0] not in names]
    return " ".join([*flags.split(), *extra])


os.environ["XLA_FLAGS"] = with_test_xla_flags(os.environ.get("XLA_FLAGS", ""))

# One persistent compilation cache per test run, shared by the xdist workers and by the
# training subprocesses the slow tests start (they inherit the environment): many tests and
# resumed runs compile the very same tiny programs, and compiling is most of their time. A
# fresh folder each run, so nothing from an earlier checkout is reused; a user's own
# JAX_COMPILATION_CACHE_DIR is kept (and not deleted).
OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mars_jax_tests_xla_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ is a folder of files, not an installed package

# Real GeoTIFF fixtures (TerraMesh samples, Apache-2.0, see its README), inside the repo.
TERRAMESH_DIR = ROOT / "tests" / "data" / "terramesh-samples"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def terramesh_dir() -> Path:
    """The TerraMesh sample tiles: S2RGB/, S1RTC/, LULC/ GeoTIFFs, one per tile id each."""
    return TERRAMESH_DIR


@pytest.fixture(scope="session")
def damage_bundle(tmp_path_factory) -> Path:
    """A tiny damage bundle (``python -m mars_jax.export`` of a workdir written as fine-tuning
    writes it, from perturbed initial parameters: no training step), for the whole-scene and
    disaster-response tests (one xdist group, so one worker builds it once)."""
    from mars_jax.export.bundle import export_bundle
    from tests.helpers import save_finetuning, tiny_finetune_config

    root = tmp_path_factory.mktemp("damage")
    save_finetuning(root / "work", tiny_finetune_config("damage"))
    export_bundle(root / "work", root / "bundle", serving=False, log=lambda _: None)
    return root / "bundle"


def pytest_configure(config):
    # grain worker processes read absl flags; under pytest nobody parses them.
    from absl import flags

    flags.FLAGS.mark_as_parsed()


def pytest_unconfigure(config):
    if OWN_CACHE:  # the process that made the cache folder (xdist's controller) removes it
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
