"""Config files as ``--config`` names them: ``path.py[:arg]`` -> ``get_config(arg)``.

Apart from ``main`` (which defines absl flags), so scripts and tests load configs without
defining flags twice.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``path.py[:arg]`` -> ``get_config(arg)`` of that file (as ``--config`` loads it)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_mars_config", path)
    if module_spec is None or not os.path.isfile(path):
        raise SystemExit(f"--config: no config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
