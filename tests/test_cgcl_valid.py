"""CGCL (and MAS) with a patch validity mask, in every impl, against the float64 loop references.

Invalid patches are neither queries nor keys, images without a valid patch drop out, empty means
are 0: tests/reference.py's ``cgcl(..., valid=)`` writes that out with explicit loops.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax import parallel
from mars_jax.losses import cgcl_loss, modality_alignment_score
from mars_jax.losses.cgcl import HardNegatives
from mars_jax.losses.cgcl.blockwise import blockwise_cgcl_terms
from mars_jax.losses.cgcl.sharded import sharded_cgcl_terms
from tests import reference

SHAPE = (8, 3, 4)  # B divides over 8 devices; M = 24, which chunks 5 and 7 do not divide
TAUS = (0.3, 0.4, 0.5)
WEIGHTS = dict(alpha=0.7, beta=1.3, gamma=0.9)
NAMES = ("patch", "global", "cross")
HARD = HardNegatives(radius=1.0, weight=3.0)
# id -> (impl, chunk_size, keys, mesh shape, hard negatives)
CONFIGS = {
    "dense": ("dense", 2048, "gather", None, False),
    "dense-hard": ("dense", 2048, "gather", None, True),
    "blockwise-chunk5": ("blockwise", 5, "gather", None, False),
    "blockwise-chunk7-hard": ("blockwise", 7, "gather", None, True),
    "blockwise-chunk2-hard": ("blockwise", 2, "gather", None, True),  # B keys in 4 blocks
    "blockwise-chunk64": ("blockwise", 64, "gather", None, False),
    "sharded-gather": ("sharded", 3, "gather", (8, 1, 1), False),
    "sharded-gather-hard": ("sharded", 2, "gather", (2, 4, 1), True),
    "sharded-ring": ("sharded", 3, "ring", (2, 4, 1), False),
    "sharded-ring-hard": ("sharded", 2, "ring", (8, 1, 1), True),
}
# A smaller set for the properties every impl shares by construction.
CORE = ["dense", "blockwise-chunk7-hard", "sharded-gather", "sharded-ring-hard"]


def pair(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    zr = rng.normal(size=shape)
    return zr, 0.3 * zr + rng.normal(size=shape)


def random_mask(b, n, seed=0):
    """Random validity with image 0 all invalid, image 1 all valid and image 2 partly valid."""
    mask = np.random.default_rng(seed).random((b, n)) < 0.5
    mask[0], mask[1] = False, True
    mask[2, :2] = [True, False]
    return mask


def grid_positions(b, n, width=3, seed=0):
    rng = np.random.default_rng(seed)
    cells = np.stack([rng.choice(width * width, n, replace=False) for _ in range(b)])
    return np.stack([cells // width, cells % width], -1).astype(np.int32)


def mesh_of(shape):
    size = int(np.prod(shape))
    if jax.device_count() < size:
        pytest.skip(f"needs {size} devices")
    return parallel.create_mesh(dict(zip(parallel.MESH_AXES, shape, strict=True)),
                                jax.devices()[:size])


@functools.cache
def step(config: str):
    """jit(value_and_grad) of (taus, z_rgb, z_sar, valid, positions) -> (total, terms), and a
    function that places arrays for the config (batch-sharded for the sharded impl)."""
    impl, chunk, keys, mesh_shape, hard = CONFIGS[config]
    options = dict(impl=impl, chunk_size=chunk, keys=keys,
                   hard_negatives=HARD if hard else None)
    place = lambda x: x
    if mesh_shape is not None:
        mesh = mesh_of(mesh_shape)
        options["mesh"] = mesh
        place = lambda x: jax.device_put(x, parallel.batch_sharding(mesh))

    def loss(t, a, b, valid, positions):
        return cgcl_loss(a, b, tau_patch=t[0], tau_global=t[1], tau_cross=t[2], valid=valid,
                         positions=positions if hard else None, **WEIGHTS, **options)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)), place


def run(config, zr, zs, valid, positions=None, dtype=jnp.float32):
    fn, place = step(config)
    arrays = [jnp.asarray(zr, dtype), jnp.asarray(zs, dtype)]
    arrays += [None if x is None else jnp.asarray(x) for x in (valid, positions)]
    return fn(jnp.asarray(TAUS, dtype), *(None if x is None else place(x) for x in arrays))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_masked_values_match_reference_and_gradients_match_dense(config):
    zr, zs = pair()
    valid = random_mask(*SHAPE[:2])
    positions = grid_positions(*SHAPE[:2])
    hard = CONFIGS[config][-1]
    with jax.enable_x64(True):
        (total, terms), grads = run(config, zr, zs, valid, positions, jnp.float64)
        _, dense_grads = run("dense-hard" if hard else "dense", zr, zs, valid, positions,
                             jnp.float64)
    want_total, want = reference.cgcl(zr, zs, *TAUS, **WEIGHTS, valid=valid)
    if hard:
        want["patch"] = reference.patch_term_hard(zr, zs, positions, TAUS[0], HARD.radius,
                                                  HARD.weight, valid=valid)
        plain = reference.cgcl(zr, zs, *TAUS, valid=valid)[1]["patch"]
        assert abs(want["patch"] - plain) > 1e-3  # the hard negatives matter here
        want_total = sum(WEIGHTS[w] * want[name] for w, name in zip(WEIGHTS, NAMES,
                                                                       strict=True))
    assert terms["patch"].dtype == jnp.float64
    for name in NAMES:
        np.testing.assert_allclose(terms[name], want[name], rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(total, want_total, rtol=1e-12)
    for which, (g, w) in enumerate(zip(grads, dense_grads, strict=True)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12 * float(np.max(np.abs(w))),
                                   err_msg=f"argument {which}")
    assert np.all(np.abs(np.asarray(grads[0])) > 1e-6)  # every temperature gets a gradient


def test_dense_gradients_match_finite_differences_of_the_reference():
    """The dense impl's autodiff gradients (what the other impls are held to) against central
    differences of the float64 loops, for the embeddings and the temperatures."""
    zr, zs = pair((3, 3, 3), seed=1)
    valid = random_mask(3, 3, seed=1)
    with jax.enable_x64(True):
        (_, _), grads = run("dense", zr, zs, valid, dtype=jnp.float64)

    def ref(taus, a, b):
        return reference.cgcl(a, b, *taus, **WEIGHTS, valid=valid)[0]

    h = 1e-6
    args = [np.asarray(TAUS), zr, zs]
    for which, grad in enumerate(grads):
        numeric = np.zeros_like(args[which])
        for idx in np.ndindex(numeric.shape):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[which][idx] += h
            minus[which][idx] -= h
            numeric[idx] = (ref(*plus) - ref(*minus)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=str(which))
        if which > 0:
            assert np.all(numeric[~valid] == 0)  # the reference ignores invalid patches too


@pytest.mark.parametrize("config", CORE)
def test_invalid_patches_have_no_influence_and_zero_gradient(config):
    zr, zs = pair(seed=2)
    valid = random_mask(*SHAPE[:2], seed=2)
    positions = grid_positions(*SHAPE[:2])
    (total, terms), grads = run(config, zr, zs, valid, positions)
    garbage_r, garbage_s = zr.copy(), zs.copy()
    garbage_r[~valid], garbage_s[~valid] = np.nan, 1e30  # e.g. no-data pixels' embeddings
    (total_g, terms_g), grads_g = run(config, garbage_r, garbage_s, valid, positions)
    np.testing.assert_array_equal(total_g, total)
    for name in NAMES:
        np.testing.assert_array_equal(terms_g[name], terms[name])
    for g, g_garbage in zip(grads, grads_g, strict=True):
        np.testing.assert_array_equal(g_garbage, g)
    for g in grads[1:]:
        g = np.asarray(g)
        assert np.all(g[~valid] == 0)
        assert np.all(np.abs(g[valid]).max(-1) > 0)


@pytest.mark.parametrize("config", CORE)
def test_all_invalid_batch_gives_zero_and_finite_gradients(config):
    zr, zs = pair(seed=3)
    valid = np.zeros(SHAPE[:2], bool)
    (total, terms), grads = run(config, zr, zs, valid, grid_positions(*SHAPE[:2]))
    assert float(total) == 0.0
    for name in NAMES:
        assert float(terms[name]) == 0.0, name
    for g in grads:
        assert np.all(np.asarray(g) == 0)  # finite, and exactly 0


@pytest.mark.parametrize("config", CORE)
def test_all_valid_mask_equals_no_mask(config):
    zr, zs = pair(seed=4)
    positions = grid_positions(*SHAPE[:2])
    (total, terms), grads = run(config, zr, zs, np.ones(SHAPE[:2], np.float32), positions)
    (want_total, want), want_grads = run(config, zr, zs, None, positions)
    np.testing.assert_allclose(total, want_total, rtol=1e-6)
    for name in NAMES:
        np.testing.assert_allclose(terms[name], want[name], rtol=1e-6, err_msg=name)
    for g, w in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(w))))


def test_one_valid_image_or_patch_leaves_the_empty_terms_zero():
    zr, zs = pair(seed=5)
    one_image = np.zeros(SHAPE[:2], bool)
    one_image[3] = True
    _, terms = cgcl_loss(jnp.asarray(zr, jnp.float32), jnp.asarray(zs, jnp.float32),
                         valid=one_image)
    assert float(terms["global"]) == 0.0 and float(terms["patch"]) > 0.1
    one_patch = np.zeros(SHAPE[:2], bool)
    one_patch[3, 1] = True
    _, terms = cgcl_loss(jnp.asarray(zr, jnp.float32), jnp.asarray(zs, jnp.float32),
                         valid=one_patch)
    for name in NAMES:  # one query and its positive as the only key: log-softmax 0
        assert float(terms[name]) == pytest.approx(0.0, abs=1e-6), name


def test_valid_shape_is_checked_by_every_entry_point():
    z = jnp.ones((2, 3, 8))
    message = r"valid must be \[B, N\] = \(2, 3\) .*got \(2, 4\)"
    for impl in ("dense", "blockwise", "sharded"):
        with pytest.raises(ValueError, match=message):
            cgcl_loss(z, z, impl=impl, valid=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match=message):
        blockwise_cgcl_terms(z, z, tau_patch=0.1, tau_global=0.1, tau_cross=0.1,
                             valid=jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"got \(6,\)"):
        sharded_cgcl_terms(z, z, valid=jnp.ones(6))
    with pytest.raises(ValueError, match=message):
        modality_alignment_score(z, z, valid=jnp.ones((2, 4)))


def test_mas_with_mask_matches_reference():
    zr, zs = pair(seed=6)
    valid = random_mask(*SHAPE[:2], seed=6)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    got = modality_alignment_score(f32(zr), f32(zs), valid=valid)
    want = reference.mas(np.asarray(f32(zr), np.float64), np.asarray(f32(zs), np.float64),
                         valid=valid)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(modality_alignment_score(f32(zr), f32(zs), valid=np.ones(SHAPE[:2])),
                               modality_alignment_score(f32(zr), f32(zs)), rtol=1e-6)
    one = np.zeros(SHAPE[:2], bool)
    one[2, 1] = True
    for mask in (one, np.zeros(SHAPE[:2], bool)):  # no non-matching pair: 0
        assert float(modality_alignment_score(f32(zr), f32(zs), valid=mask)) == 0.0
