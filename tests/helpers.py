"""Test helpers: perturbing parameters and reading them out for the NumPy references."""

import jax
import numpy as np
from flax import nnx

from mars_jax.models.layers import TransformerBlock


def perturb_params(module: nnx.Module, seed: int, scale: float = 0.2) -> None:
    """Adds noise to every parameter, so zero biases and unit norms cannot hide a bug."""
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    noisy = [leaf + scale * rng.normal(size=leaf.shape).astype(leaf.dtype) for leaf in leaves]
    nnx.update(module, jax.tree.unflatten(treedef, noisy))


def block_params(block: TransformerBlock) -> dict[str, np.ndarray]:
    f64 = lambda v: np.asarray(v[...], np.float64)
    return {
        "ln1_scale": f64(block.ln1.scale), "ln1_bias": f64(block.ln1.bias),
        "ln2_scale": f64(block.ln2.scale), "ln2_bias": f64(block.ln2.bias),
        "qkv_kernel": f64(block.attn.qkv.kernel), "qkv_bias": f64(block.attn.qkv.bias),
        "out_kernel": f64(block.attn.out.kernel), "out_bias": f64(block.attn.out.bias),
        "fc1_kernel": f64(block.mlp.fc1.kernel), "fc1_bias": f64(block.mlp.fc1.bias),
        "fc2_kernel": f64(block.mlp.fc2.kernel), "fc2_bias": f64(block.mlp.fc2.bias),
    }
