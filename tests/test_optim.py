"""Weight decay by parameter path: kernels only, for every parameter of tiny and base."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import pretrain
from mars_jax.train.forward import build_model
from mars_jax.train.optim import OptimConfig, decay_mask, make_optimizer

# Every parameter path of a MaRS pretrainer falls in exactly one family; the flag is whether
# AdamW decays it. (Rank says nothing: the qkv bias is [3, heads, head_dim], a scanned
# LayerNorm scale is [layers, width].)
FAMILIES = [
    (r"(optical_vit|sar_vit)/patch_embed/kernel", True),
    (r"/(blocks/(layers/\d+|stacked/\d+))/attn/(qkv|out)/kernel", True),
    (r"/(blocks/(layers/\d+|stacked/\d+))/mlp/fc[12]/kernel", True),
    (r"(optical|sar)_decoder/(embed|head)/kernel", True),
    (r"(optical|sar)_projection/kernel", True),
    (r"/bias", False),
    (r"/(ln[12]|norm)/scale", False),
    (r"(optical|sar)_decoder/mask_token", False),
    (r"temperatures/log_tau", False),
]


def decay_table(variant: str, scan: bool) -> dict[str, bool]:
    config = pretrain.get_config(variant)
    config.model.scan_layers = scan
    config.model.projection_dim = 32
    config.loss.learnable_temperatures = True
    model = nnx.eval_shape(lambda: build_model(config))
    params = nnx.state(model, nnx.Param)
    flags = jax.tree_util.tree_leaves_with_path(decay_mask(params))
    return {"/".join(str(getattr(k, "key", k)) for k in path if getattr(k, "key", None)
                     not in (None, "value")): bool(flag) for path, flag in flags}


@pytest.mark.parametrize("variant", ["tiny", "base"])
@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_path_has_the_decay_flag_of_its_family(variant, scan):
    table = decay_table(variant, scan)
    assert len(table) > 30
    for path, flag in table.items():
        families = [(pattern, want) for pattern, want in FAMILIES if re.search(pattern, path)]
        assert len(families) == 1, (path, families)
        assert flag == families[0][1], (path, flag)
    qkv_biases = [p for p in table if p.endswith("attn/qkv/bias")]
    assert qkv_biases and not any(table[p] for p in qkv_biases)  # the old rank-based bug
    assert any(table.values()) and not all(table.values())
    assert all(("stacked" in p) == scan for p in table if "/blocks/" in p)


def test_adamw_decays_kernels_and_leaves_biases_alone():
    params = {"dense": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((3, 2, 2))},
              "norm": {"scale": jnp.ones((2, 4))}}
    tx = make_optimizer(OptimConfig(learning_rate=0.1, warmup_steps=0, weight_decay=0.5,
                                    clip_norm=None), total_steps=10)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.all(np.asarray(new["dense"]["kernel"]) < 1.0)  # decayed
    np.testing.assert_array_equal(new["dense"]["bias"], params["dense"]["bias"])
    np.testing.assert_array_equal(new["norm"]["scale"], params["norm"]["scale"])


def test_optim_config_names_the_bad_field():
    with pytest.raises(ValueError, match=r"optim config: learning_rate must be positive, "
                                         r"got -1"):
        OptimConfig(learning_rate=-1)
    with pytest.raises(ValueError, match=r"optim config: grad_accum_steps must be positive"):
        OptimConfig(grad_accum_steps=0)
    with pytest.raises(ValueError, match=r"optim config: b2 must be in \[0, 1\)"):
        OptimConfig(b2=1.5)
