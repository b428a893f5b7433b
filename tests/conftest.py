import os
import sys
from pathlib import Path

# 8 simulated CPU devices for the sharding tests; set before anything imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ is a folder of files, not an installed package


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def pytest_configure(config):
    # grain worker processes read absl flags; under pytest nobody parses them.
    from absl import flags

    flags.FLAGS.mark_as_parsed()
