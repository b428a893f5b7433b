"""Downstream heads (models/heads.py): shapes, adaptive pooling against a loop, the ViT neck's
strides, live gradients, change fusion symmetry, sharded == single device, bfloat16, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mars_jax import parallel
from mars_jax.models import heads
from mars_jax.typed_config import ConfigError

B, H, W, P, D, C = 2, 32, 32, 8, 16, 16
SIZE = (H, W)
SMALL = dict(channels=C, pool_scales=(1, 3))  # fewer branches: quicker compiles


def vit_out(seed=0, levels=4, batch=B, dim=D):
    rng = np.random.default_rng(seed)
    feats = tuple(jnp.asarray(rng.normal(size=(batch, H // P, W // P, dim)), jnp.float32)
                  for _ in range(levels))
    return {"features": feats, "stride": P}


def swin_out(seed=0, dims=(8, 16, 24, 32), strides=(4, 8, 16, 32)):
    rng = np.random.default_rng(seed)
    feats = tuple(jnp.asarray(rng.normal(size=(B, H // s, W // s, d)), jnp.float32)
                  for d, s in zip(dims, strides, strict=True))
    return {"features": feats, "stride": strides[0], "strides": strides}


def _dicts(feats, metas):
    return [{"features": f, **dict(m)} for f, m in zip(feats, metas, strict=True)]


@functools.partial(nnx.jit, static_argnames="metas")
def _forward(head, feats, metas):
    return head(*_dicts(feats, metas), image_size=SIZE)


@functools.partial(nnx.jit, static_argnames="metas")
def _grads(head, weights, feats, metas):
    loss = lambda m: jnp.sum(m(*_dicts(feats, metas), image_size=SIZE) * weights)
    return nnx.grad(loss)(head)


@functools.partial(nnx.jit, static_argnames="metas")
def _train_forward(head, seed, feats, metas):
    return head(*_dicts(feats, metas), image_size=SIZE, rngs=nnx.Rngs(dropout=seed))


def jitted(fn, head, *outs, args=()):
    """``fn(head, *args, features, metas)``: the features are traced arguments, the strides
    static Python ints (as inside a jitted model); compiled once per head structure."""
    metas = tuple(tuple((k, v) for k, v in o.items() if k != "features") for o in outs)
    return fn(head, *args, tuple(o["features"] for o in outs), metas)


def run(head, *outs):
    head.eval()
    return jitted(_forward, head, *outs)


# -- adaptive average pooling --------------------------------------------------------------
def pool_loop(x, s):
    """PyTorch AdaptiveAvgPool2d, spelled out."""
    b, h, w, c = x.shape
    out = np.zeros((b, s, s, c))
    for i in range(s):
        h0, h1 = int(np.floor(i * h / s)), int(np.ceil((i + 1) * h / s))
        for j in range(s):
            w0, w1 = int(np.floor(j * w / s)), int(np.ceil((j + 1) * w / s))
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("h,w,s", [(5, 7, 3), (4, 4, 6), (6, 6, 2), (2, 3, 1), (7, 5, 4)])
def test_adaptive_avg_pool_matches_a_loop(h, w, s):
    x = np.random.default_rng(h * w + s).normal(size=(2, h, w, 3))
    got = heads.adaptive_avg_pool(jnp.asarray(x, jnp.float32), s)
    assert got.shape == (2, s, s, 3)
    np.testing.assert_allclose(got, pool_loop(x, s), rtol=1e-5, atol=1e-6)


def test_group_count():
    assert heads.group_count(256) == 32
    assert heads.group_count(16) == 8  # at least 2 channels per group
    assert heads.group_count(24, 32) == 12
    assert heads.group_count(3) == 1 and heads.group_count(1) == 1


# -- shapes (abstract evaluation: traced, never compiled) ------------------------------
def shape_of(head, *outs):
    """The output's shape and dtype, traced only; ``head`` a module, or a functools.partial
    that builds one given ``rngs`` (then built abstractly too: no parameter is drawn)."""
    if not isinstance(head, functools.partial):
        head.eval()
        return jax.eval_shape(lambda: head(*outs, image_size=SIZE))

    def build_and_run():
        h = head(rngs=nnx.Rngs(0))
        h.eval()
        return h(*outs, image_size=SIZE)

    return nnx.eval_shape(build_and_run)


@pytest.fixture(scope="module")
def upernet():
    """A UPerNet with PANGAEA's pool scales, eval mode, and its compiled output on vit_out()."""
    head = heads.UPerNetHead((D,) * 4, 3, channels=C, rngs=nnx.Rngs(0))
    return head, np.asarray(run(head, vit_out()))


@pytest.fixture(scope="module")
def change():
    head = heads.ChangeHead((D,) * 4, **SMALL, rngs=nnx.Rngs(0))
    head.eval()
    return head


def test_linear_head_shapes():
    for k in (1, 5):
        one = functools.partial(heads.LinearHead, D, k)
        assert shape_of(one, vit_out()) == jax.ShapeDtypeStruct((B, H, W, k), jnp.float32)
        two = functools.partial(heads.LinearHead, 2 * D, k, levels=(0, -1))
        assert shape_of(two, vit_out()).shape == (B, H, W, k)
        # Mixed strides: resized to the finest chosen level.
        mixed = functools.partial(heads.LinearHead, 8 + 32, k, levels=(0, 3))
        assert shape_of(mixed, swin_out()).shape == (B, H, W, k)


def test_linear_head_is_a_projection_then_upsampling():
    head = heads.LinearHead(D, 3, rngs=nnx.Rngs(0))
    out = vit_out()
    got = run(head, out)
    kernel, bias = np.asarray(head.proj.kernel[...]), np.asarray(head.proj.bias[...])
    low = np.asarray(out["features"][-1]) @ kernel + bias
    want = jax.image.resize(low, (B, H, W, 3), "bilinear", antialias=False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_upernet_shapes(upernet):
    _, logits = upernet
    assert logits.shape == (B, H, W, 3) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    for k in (1, 7):
        head = functools.partial(heads.UPerNetHead, (D,) * 4, k, **SMALL)
        assert shape_of(head, vit_out()) == jax.ShapeDtypeStruct((B, H, W, k), jnp.float32)
    single = functools.partial(heads.UPerNetHead, (D,), 3, **SMALL)  # repeated to 4 levels
    assert shape_of(single, vit_out(levels=1)).shape == (B, H, W, 3)
    swin = functools.partial(heads.UPerNetHead, (8, 16, 24, 32), 4, neck=None, **SMALL)
    assert shape_of(swin, swin_out()).shape == (B, H, W, 4)


def test_vit_neck_strides(upernet):
    head, _ = upernet
    static = {}

    def levels_only():
        levels, static["strides"] = head.pyramid(vit_out())
        return levels

    levels, strides = jax.eval_shape(levels_only), static["strides"]
    assert strides == (P // 4, P // 2, P, 2 * P)
    assert [tuple(x.shape) for x in levels] == [(B, H // s, W // s, D) for s in strides]


def test_regression_head():
    for activation in (None, "relu"):
        head = functools.partial(heads.RegressionHead, (D,) * 4, activation=activation, **SMALL)
        assert shape_of(head, vit_out()) == jax.ShapeDtypeStruct((B, H, W, 1), jnp.float32)
    head = heads.RegressionHead((D,) * 4, activation="softplus", **SMALL, rngs=nnx.Rngs(0))
    out = np.asarray(run(head, vit_out()))
    assert out.shape == (B, H, W, 1) and out.min() > 0.0


def test_change_head_shapes(change):
    assert shape_of(change, vit_out(0), vit_out(1)) == jax.ShapeDtypeStruct((B, H, W, 2),
                                                                            jnp.float32)
    for fusion in ("diff", "concat"):
        head = functools.partial(heads.ChangeHead, (D,) * 4, 3, fusion=fusion, **SMALL)
        assert shape_of(head, vit_out(0), vit_out(1)).shape == (B, H, W, 3)


# -- change fusion symmetry ---------------------------------------------------------------
@pytest.mark.parametrize("fusion,symmetric", [("diff", False), ("diff_concat", True)])
def test_symmetric_change_fusion_ignores_the_date_order(fusion, symmetric):
    head = heads.ChangeHead((D,) * 4, fusion=fusion, symmetric=symmetric, **SMALL,
                            rngs=nnx.Rngs(0))
    a, b = vit_out(0), vit_out(1)
    np.testing.assert_allclose(run(head, a, b), run(head, b, a), rtol=1e-5, atol=1e-6)
    if fusion == "diff":  # identical dates: no change, whatever the scene
        np.testing.assert_allclose(run(head, a, a), run(head, b, b), rtol=1e-5, atol=1e-6)


def test_ordered_change_fusion_sees_the_date_order(change):
    a, b = vit_out(0), vit_out(1)
    assert not np.allclose(run(change, a, b), run(change, b, a), atol=1e-6)


# -- gradients ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["linear", "change"])
def test_every_parameter_gets_a_gradient(name, change):
    """The change head holds every kind of parameter: fusion convs, the ViT neck, PPM, FPN."""
    if name == "linear":
        head, outs = heads.LinearHead(2 * D, 3, levels=(1, 3), rngs=nnx.Rngs(0)), (vit_out(),)
    else:
        head, outs = change, (vit_out(0), vit_out(1))
    head.eval()
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(B, H, W, head.num_outputs)),
                          jnp.float32)

    g = jitted(_grads, head, *outs, args=(weights,))
    flat = jax.tree_util.tree_flatten_with_path(g)[0]
    assert len(flat) == len(jax.tree.leaves(nnx.state(head, nnx.Param)))
    dead = [jax.tree_util.keystr(path) for path, leaf in flat
            if not np.any(np.asarray(leaf) != 0)]
    assert not dead, f"parameters without gradient: {dead}"


# -- train / eval -------------------------------------------------------------------------
def test_dropout_only_in_train_mode(upernet):
    head, logits = upernet
    assert head.dropout.deterministic
    noisy = nnx.clone(head)
    noisy.dropout.rate = 0.5
    noisy.train()
    a, b = (np.asarray(jitted(_train_forward, noisy, vit_out(), args=(jax.random.key(seed),)))
            for seed in (1, 2))
    assert not np.allclose(a, logits, atol=1e-4) and not np.allclose(a, b, atol=1e-4)


# -- sharding and dtypes ------------------------------------------------------------------
def test_sharded_forward_equals_one_device(change):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    from configs.pretrain import get_config

    rules = tuple(get_config("tiny").sharding_rules)
    mesh = parallel.create_mesh(dict(data=2, fsdp=2, tensor=2))
    a, b = vit_out(0), vit_out(1)
    want = run(change, a, b)

    graphdef, state = nnx.split(change)
    shardings = parallel.state_shardings(state, mesh, rules)
    lateral = shardings["decoder"]["lateral"][0]["conv"]["kernel"]
    assert lateral.spec == jax.sharding.PartitionSpec(None, None, "fsdp", "tensor")
    state = jax.device_put(state, shardings)
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    fa, fb = jax.device_put((a["features"], b["features"]), batch)

    @jax.jit
    def forward(s, x, y):
        return nnx.merge(graphdef, s)({"features": x, "stride": P},
                                      {"features": y, "stride": P}, image_size=SIZE)

    got = forward(state, fa, fb)
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_returns_float32(upernet):
    _, want = upernet
    kw = dict(dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    bf16 = heads.UPerNetHead((D,) * 4, 3, channels=C, **kw)  # same draws as the fixture
    got = np.asarray(run(bf16, vit_out()))
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    linear = functools.partial(heads.LinearHead, D, 3, dtype=jnp.bfloat16)
    assert shape_of(linear, vit_out()).dtype == jnp.float32


# -- errors -------------------------------------------------------------------------------
def abstract(cls, *args, **kwargs):
    """A head with abstract parameters: enough for checks that fail before computing."""
    return nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kwargs))


def test_bad_inputs_raise_naming_the_problem(upernet):
    with pytest.raises(ValueError, match="ViT neck needs 4 feature levels"):
        abstract(heads.UPerNetHead, (D,) * 3, 3)
    head = abstract(heads.UPerNetHead, (D,) * 4, 3, **SMALL)
    with pytest.raises(ValueError, match="has 3 feature levels, the head was built for 4"):
        head(vit_out(levels=3), image_size=SIZE)
    with pytest.raises(ValueError, match=r"level 0 has 8 channels .* level_dims\[0\] = 16"):
        head(vit_out(dim=8), image_size=SIZE)
    with pytest.raises(ValueError, match=r"one stride.*neck=None"):
        abstract(heads.UPerNetHead, (8, 16, 24, 32), 3, **SMALL)(swin_out(), image_size=SIZE)
    with pytest.raises(ValueError, match="image_size"):
        head(vit_out(), image_size=(32,))
    with pytest.raises(ValueError, match="'features'"):
        head({"feats": ()}, image_size=SIZE)
    with pytest.raises(ValueError, match="static Python ints"):
        nnx.jit(lambda h, o: h(o, image_size=SIZE))(upernet[0], vit_out())
    with pytest.raises(ValueError, match="in_features is 32"):
        abstract(heads.LinearHead, 2 * D, 3)(vit_out(), image_size=SIZE)
    with pytest.raises(ValueError, match="out of range"):
        abstract(heads.LinearHead, D, 3, levels=(4,))(vit_out(), image_size=SIZE)
    with pytest.raises(ValueError, match="fusion must be one of"):
        abstract(heads.ChangeHead, (D,) * 4, fusion="ratio")
    with pytest.raises(ValueError, match="no symmetric form"):
        abstract(heads.ChangeHead, (D,) * 4, fusion="concat", symmetric=True)
    change = abstract(heads.ChangeHead, (D,) * 4, **SMALL)
    with pytest.raises(ValueError, match="two dates' features differ"):
        change(vit_out(), vit_out(batch=3), image_size=SIZE)
    with pytest.raises(ValueError, match="activation must be one of"):
        abstract(heads.RegressionHead, (D,) * 4, activation="exp")


# -- config -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,cls", [("linear", heads.LinearHead),
                                      ("upernet", heads.UPerNetHead),
                                      ("regression", heads.RegressionHead),
                                      ("change", heads.ChangeHead)])
def test_head_config_builds_each_kind(kind, cls):
    config = heads.HeadConfig.from_dict(dict(kind=kind, channels=C, pool_scales=[1, 3],
                                             levels=[0, -1]))
    build = functools.partial(heads.build_head, config, (D,) * 4, 3)
    head = nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0)))
    assert type(head) is cls and head.num_outputs == 3
    outs = (vit_out(0), vit_out(1)) if kind == "change" else (vit_out(),)
    assert shape_of(build, *outs).shape == (B, H, W, 3)


def test_head_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="kind must be one of"):
        heads.HeadConfig(kind="fcn")
    with pytest.raises(ConfigError, match="dropout must be in"):
        heads.HeadConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="symmetric must be False"):
        heads.HeadConfig(kind="change", fusion="concat", symmetric=True)
    with pytest.raises(ConfigError, match="unknown keys"):
        heads.HeadConfig.from_dict({"chanels": 8})
