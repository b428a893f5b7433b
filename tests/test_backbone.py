"""The encoder as a backbone: multi-level features, either modality missing, per-example
modality presence (modality dropout)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import pretrain
from mars_jax.data.contract import random_batch
from mars_jax.models import MaRSConfig
from mars_jax.models.encoder import MaRSEncoder
from tests.helpers import perturb_params

LAYOUTS = pytest.mark.parametrize("scan_layers", [False, True], ids=["unscanned", "scanned"])


def encoder(scan_layers=False, mma_layers=2, depth=3) -> MaRSEncoder:
    config = pretrain.get_config("tiny")
    config.model.update(scan_layers=scan_layers, mma_layers=mma_layers)
    config.model.encoder.depth = depth
    module = MaRSEncoder(MaRSConfig.from_dict(config.model.to_dict()), rngs=nnx.Rngs(0))
    perturb_params(module, seed=1)  # LayerNorms away from identity: nothing passes by chance
    return module


@pytest.fixture(scope="module")
def batch():
    return random_batch(jax.random.key(0), batch=3, size=32, sar_channels=1)


@LAYOUTS
def test_levels_are_the_blocks_outputs_through_the_final_norm(batch, scan_layers):
    enc = encoder(scan_layers)
    out = enc.encode(batch["optical"], batch["sar"], layers=(0, -1))
    assert out.grid == (4, 4) and len(out.levels_rgb) == len(out.levels_sar) == 2
    assert all(level.shape == (3, 16, 64) for level in out.levels_rgb + out.levels_sar)
    np.testing.assert_allclose(out.levels_rgb[1], out.z_rgb, atol=1e-6)  # the last block
    x = enc.prepare(batch["optical"], batch["sar"])
    vit = enc.optical_vit
    from mars_jax.models.patches import patchify
    from mars_jax.models.vit import sincos_2d_position_embedding
    tokens = vit.patch_embed(patchify(x.x_rgb, 8)) + sincos_2d_position_embedding(4, 4, 64)
    first = (vit.blocks.layers[0](tokens) if not scan_layers else
             vit.blocks(tokens, collect=(0,))[1][0])
    np.testing.assert_allclose(out.levels_rgb[0], vit.norm(first), atol=1e-5)


def test_scanned_levels_equal_unscanned(batch):
    plain, scanned = encoder(False), encoder(True)
    state = nnx.state(scanned)
    from mars_jax.models import convert_layers
    nnx.replace_by_pure_dict(state, convert_layers(nnx.to_pure_dict(nnx.state(plain)),
                                                   nnx.to_pure_dict(state)))
    nnx.update(scanned, state)
    a = plain.encode(batch["optical"], batch["sar"], layers=(0, 1, 2))
    b = scanned.encode(batch["optical"], batch["sar"], layers=(0, 1, 2))
    for x, y in zip((*a.levels_sar, a.f_sar), (*b.levels_sar, b.f_sar), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("given", ["optical", "sar", "both"])
def test_either_modality_may_be_missing(batch, given):
    enc = encoder()
    inputs = {"optical": batch["optical"] if given != "sar" else None,
              "sar": batch["sar"] if given != "optical" else None}
    out = enc.encode(**inputs, layers=(1,))
    for modality, z, f, levels in (("optical", out.z_rgb, out.f_rgb, out.levels_rgb),
                                   ("sar", out.z_sar, out.f_sar, out.levels_sar)):
        present = inputs[modality] is not None
        assert (z is not None, f is not None, levels is not None) == (present,) * 3
        if present:
            assert f.shape == (3, 16, 64) and levels[0].shape == (3, 16, 64)


def test_a_missing_modality_changes_nothing_of_the_present_ones_intra_layers(batch):
    enc = encoder(mma_layers=1)  # one intra layer: no exchange between modalities at all
    both = enc.encode(batch["optical"], batch["sar"])
    alone = enc.encode(optical=batch["optical"])
    np.testing.assert_allclose(both.f_rgb, alone.f_rgb, atol=1e-5)
    np.testing.assert_allclose(enc.encode(sar=batch["sar"]).f_sar, both.f_sar, atol=1e-5)
    # With a meta layer the other modality does reach it.
    enc2 = encoder(mma_layers=2)
    assert np.abs(enc2.encode(batch["optical"], batch["sar"]).f_rgb
                  - enc2.encode(optical=batch["optical"]).f_rgb).max() > 1e-3


@LAYOUTS
def test_per_example_presence_equals_encoding_the_present_modality_alone(batch, scan_layers):
    enc = encoder(scan_layers)
    present = jnp.array([[True, True], [True, False], [False, True]])
    out = enc.encode(batch["optical"], batch["sar"], present=present)
    full = enc.encode(batch["optical"], batch["sar"])
    np.testing.assert_allclose(out.f_rgb[0], full.f_rgb[0], atol=1e-6)
    np.testing.assert_allclose(out.f_sar[0], full.f_sar[0], atol=1e-6)
    np.testing.assert_allclose(out.f_rgb[1], enc.encode(optical=batch["optical"]).f_rgb[1],
                               atol=1e-5)
    np.testing.assert_allclose(out.f_sar[2], enc.encode(sar=batch["sar"]).f_sar[2], atol=1e-5)


def test_bad_backbone_arguments_are_named(batch):
    enc = encoder()
    with pytest.raises(ValueError, match=r"layers \[5\] out of range for a stack of 3"):
        enc.encode(batch["optical"], layers=(5,))
    with pytest.raises(ValueError, match=r"present .* needs both optical and sar"):
        enc.encode(optical=batch["optical"], present=jnp.ones((3, 2), bool))
    with pytest.raises(ValueError, match=r"present must be \[batch, 2\]"):
        enc.encode(batch["optical"], batch["sar"], present=jnp.ones((3, 3), bool))
    scanned_mma = encoder(True).mma.blocks
    with pytest.raises(ValueError, match="period 2 yields the output of every 2-th layer"):
        scanned_mma.check_collect((0,))
