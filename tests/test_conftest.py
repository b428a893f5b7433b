"""The test session itself: 8 simulated CPU devices, whatever XLA_FLAGS the user set."""

import os

import jax
import pytest

from tests.conftest import TERRAMESH_DIR, with_test_xla_flags

COUNTS = [part.split("=", 1)[-1] for part in os.environ.get("XLA_FLAGS", "").split()
          if part.startswith("--xla_force_host_platform_device_count")]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="simulated devices are a CPU thing")
@pytest.mark.skipif(bool(COUNTS) and COUNTS[-1] != "8",
                    reason="the user's XLA_FLAGS set another device count")
def test_the_session_has_8_cpu_devices():
    assert jax.device_count() == 8, f"XLA_FLAGS did not take: {jax.devices()}"


def test_test_flags_are_appended_to_the_users_flags():
    flags = with_test_xla_flags("--xla_cpu_use_thunk_runtime=true")
    assert flags.split() == ["--xla_cpu_use_thunk_runtime=true",
                             "--xla_force_host_platform_device_count=8",
                             "--xla_backend_optimization_level=0"]
    assert with_test_xla_flags(flags) == flags  # idempotent


def test_a_device_count_the_user_set_is_kept():
    flags = with_test_xla_flags("--xla_force_host_platform_device_count=4")
    assert flags.split() == ["--xla_force_host_platform_device_count=4",
                             "--xla_backend_optimization_level=0"]


def test_the_terramesh_fixtures_are_in_the_repository(repo_root, terramesh_dir):
    assert terramesh_dir == TERRAMESH_DIR and terramesh_dir.is_relative_to(repo_root)
    for folder in ("S2RGB", "S1RTC", "LULC"):
        assert len(list((terramesh_dir / folder).glob("*.tif"))) == 5, folder
    assert (terramesh_dir / "LICENSE").is_file() and (terramesh_dir / "README.md").is_file()


@pytest.mark.skipif(not os.environ.get("JAX_COMPILATION_CACHE_DIR"),
                    reason="the user turned the compilation cache off")
def test_the_session_shares_one_persistent_compilation_cache(tmp_path):
    folder = os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert jax.config.jax_compilation_cache_dir == folder and os.path.isdir(folder)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    # A fresh program is compiled and then written there (so subprocesses reuse it).
    before = set(os.listdir(folder))
    jax.jit(lambda x: x * 3.25 + 0.125).lower(jax.numpy.ones((3, 7))).compile()
    assert set(os.listdir(folder)) - before
