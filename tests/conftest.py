import sys
from pathlib import Path

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
