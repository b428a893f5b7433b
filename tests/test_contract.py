"""The data contract (mars_jax.data.contract): keys, dtypes and shapes of examples and batches,
the random and abstract batches, and the constants every data module shares."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.data import contract, io, pipeline, synth
from mars_jax.data.contract import (
    DB_FLOOR,
    PRETRAIN_DTYPES,
    PRETRAIN_KEYS,
    PRETRAIN_SHAPES,
    SCENE_PARAMETERS,
    batch_spec,
    check_pretraining_example,
    pretraining_shapes,
    random_batch,
)
from mars_jax.data.tfds_builders import synth_vhr


def reference_random_batch(key, batch, size, sar_channels):
    """random_batch as it was in mars_jax/train/forward.py before it moved here."""
    k_rgb, k_sar = jax.random.split(key)
    optical = jax.random.randint(k_rgb, (batch, size, size, 3), 0, 256).astype(jnp.uint8)
    intensity = jax.random.exponential(k_sar, (batch, size, size, sar_channels)) * 10 ** -1.2
    sar = 10.0 * jnp.log10(jnp.maximum(intensity, 1e-6))
    return {"optical": optical, "sar": sar, "valid": jnp.ones((batch, size, size), bool)}


def test_random_batch_is_unchanged_and_follows_the_contract():
    key = jax.random.key(3)
    batch = jax.device_get(random_batch(key, 2, 16, 2))
    expected = jax.device_get(reference_random_batch(key, 2, 16, 2))
    assert set(batch) == set(PRETRAIN_KEYS)
    for name in PRETRAIN_KEYS:
        np.testing.assert_array_equal(batch[name], expected[name], err_msg=name)
        assert batch[name].dtype == PRETRAIN_DTYPES[name]
    for row in range(2):
        check_pretraining_example({k: v[row] for k, v in batch.items()})
    assert -25.0 < float(batch["sar"].mean()) < -10.0 and batch["valid"].all()


def test_batch_spec_is_the_abstract_random_batch():
    spec = batch_spec(4, 32, 3)
    abstract = jax.eval_shape(lambda: random_batch(jax.random.key(0), 4, 32, 3))
    assert spec.keys() == abstract.keys()
    for name in PRETRAIN_KEYS:
        assert isinstance(spec[name], jax.ShapeDtypeStruct)
        assert (spec[name].shape, spec[name].dtype) == (abstract[name].shape,
                                                         abstract[name].dtype), name
    assert spec["sar"].shape == (4, 32, 32, 3) and spec["valid"].dtype == np.bool_
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    assert all(s.sharding == sharding for s in batch_spec(2, 8, 1, sharding=sharding).values())


def test_shape_rules():
    assert pretraining_shapes(5, 7, 2) == {"optical": (5, 7, 3), "sar": (5, 7, 2),
                                           "valid": (5, 7)}
    assert set(PRETRAIN_SHAPES) == set(PRETRAIN_DTYPES) == set(PRETRAIN_KEYS)


def example(height=8, width=8, channels=1):
    return {"optical": np.zeros((height, width, 3), np.uint8),
            "sar": np.full((height, width, channels), DB_FLOOR, np.float32),
            "valid": np.ones((height, width), bool)}


def test_check_pretraining_example_names_the_problem():
    check_pretraining_example(example(8, 12, 2))
    check_pretraining_example(synth.render_pair(0, 0, 48, with_t2=False))
    cases = [
        ("optical", np.zeros((8, 8, 4), np.uint8), r"'optical' must be uint8 \[H, W, 3\]"),
        ("optical", np.zeros((8, 8, 3), np.float32), "'optical' must be uint8.*got float32"),
        ("sar", np.zeros((8, 8), np.float32), r"'sar' must be float32 \[H, W, C\] in dB"),
        ("valid", np.ones((8, 8), np.uint8), r"'valid' must be bool \[H, W\], got uint8"),
        ("sar", np.zeros((8, 6, 1), np.float32), r"'optical' \(8, 8, 3\) and 'sar' \(8, 6, 1\) "
                                                 "differ in size"),
        ("valid", np.ones((4, 8), bool), "'optical' .* and 'valid' .* differ in size"),
    ]
    for key, value, message in cases:
        with pytest.raises(ValueError, match=message):
            check_pretraining_example({**example(), key: value})
    with pytest.raises(KeyError, match=r"lacks keys \['sar'\]"):
        check_pretraining_example({"optical": example()["optical"], "valid": example()["valid"]})


def test_constants_are_defined_once():
    assert synth.DB_FLOOR is io.DB_FLOOR is DB_FLOOR == -50.0
    assert synth_vhr.SCENE_PARAMETERS is SCENE_PARAMETERS
    assert pipeline.PRETRAIN_KEYS is PRETRAIN_KEYS
    assert pipeline.check_pretraining_example is check_pretraining_example
    assert pipeline.SynthSource is synth.SynthSource
    assert contract.random_batch is random_batch
    scene = synth.render_pair(0, 1, 40, with_t2=False, with_registration=False)
    for name in SCENE_PARAMETERS:
        assert scene[name].shape == () and scene[name].dtype == np.float32
    assert scene["sar"].min() >= DB_FLOOR


def test_contract_and_synth_import_without_jax():
    code = ("import sys, mars_jax.data.contract, mars_jax.data.synth; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
