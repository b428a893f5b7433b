"""Model parameters as per-module safetensors files, loadable without orbax or the optimiser.

Files (``weights/*.safetensors``): ``optical_encoder`` (input statistics, the optical ViT
and its CGCL projection), ``sar_encoder`` (the same for SAR), ``mma`` (Meta-Modality
Attention) and ``head``. Tensor names are dotted paths inside the module they come from
(``optical_vit.blocks.layers.0.attention.query.kernel``; the head's relative to the head),
always in the per-layer layout (``model.scan_layers=False``) whatever the layout trained.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS_DIR = "weights"
ENCODER_PARTS: dict[str, tuple[str, ...]] = {
    "optical_encoder": ("optical_mean", "optical_std", "optical_vit", "optical_projection"),
    "sar_encoder": ("sar_db_mean", "sar_db_std", "sar_vit", "sar_projection"),
    "mma": ("mma",),
}
HEAD_PART = "head"
SEPARATOR = "."


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """A nested pure dict -> {"a.b.0.kernel": array}."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, name + SEPARATOR)
        else:
            flat[name] = np.ascontiguousarray(np.asarray(value))
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    """{"a.b.0.kernel": array} -> a nested pure dict (digit keys as ints, as nnx indexes
    layer lists)."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = [int(k) if k.isdigit() else k for k in name.split(SEPARATOR)]
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def split_encoder(encoder_tree: Mapping[str, Any], parts: tuple[str, ...]
                  ) -> dict[str, dict[str, np.ndarray]]:
    """An encoder pure dict -> {part: flat tensors} for the parts asked (``ENCODER_PARTS``);
    a part with no parameters (MMA with 0 layers) is left out."""
    out = {}
    for part in parts:
        tensors = {}
        for top in ENCODER_PARTS[part]:
            if top in encoder_tree:
                value = encoder_tree[top]
                tensors |= flatten(value, top + SEPARATOR) if isinstance(value, Mapping) \
                    else {top: np.asarray(value)}
        if tensors:
            out[part] = tensors
    return out


def save_part(folder: str | os.PathLike, part: str, tensors: Mapping[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    path = Path(folder) / WEIGHTS_DIR / f"{part}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(path), metadata={"format": "mars_jax", "part": part})
    return path


def load_part(path: str | os.PathLike) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))
