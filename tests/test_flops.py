"""Analytic FLOPs against what JAX traces and XLA compiles; peaks and MFU arithmetic."""

import dataclasses
import types

import jax
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jex_core

from configs import pretrain
from mars_jax.data.contract import random_batch
from mars_jax.losses import cgcl_loss
from mars_jax.models import MaRSConfig
from mars_jax.train import flops
from mars_jax.train.forward import build_model
from mars_jax.train.objective import LossConfig, pretraining_loss

BATCH = 4


def small_config(*, mma_layers: int = 2, projection_dim: int = 0, scan_layers: bool = False):
    """tiny, widened so that matmuls dominate as they do at scale (64x64 pairs, patch 8)."""
    config = pretrain.get_config("tiny")
    config.model.encoder.update(dict(width=128, num_heads=4, mlp_dim=512))
    config.model.decoder.update(dict(width=64, num_heads=2, mlp_dim=256))
    config.model.update(dict(patch_size=8, mask_ratio=0.6, mma_layers=mma_layers,
                             projection_dim=projection_dim, scan_layers=scan_layers))
    return config


def model_config(config) -> MaRSConfig:
    return MaRSConfig.from_dict(config.model.to_dict())


def loss_fn(config, objective):
    """(state, batch, key) -> scalar: the model forward followed by ``objective(out)``.

    The state is abstract (shapes only): tracing and compiling need no initialised weights.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(config)))

    def loss(state, batch, key):
        out = nnx.merge(graphdef, state)(batch["optical"], batch["sar"], key=key,
                                        valid=batch["valid"])
        return objective(out)

    return loss, state


def full_objective(out):
    return pretraining_loss(out, LossConfig(cgcl_impl="dense"))[0]  # the analytic count's math


def cgcl_objective(out):
    return cgcl_loss(out.e_rgb, out.e_sar)[0]


def matmul_flops(jaxpr: jex_core.Jaxpr) -> int:
    """2 x multiply-adds of every dot_general in a jaxpr, nested jaxprs included (a scan's
    body once per iteration: scanned layers)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            contracted = int(np.prod([lhs_shape[d] for d in lhs_contracting]))
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * contracted
        repeats = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for sub in jex_core.jaxprs_in_params(eqn.params):
            total += repeats * matmul_flops(sub)
    return total


def inputs(image_hw=(64, 64)):
    batch = random_batch(jax.random.key(0), BATCH, max(image_hw), 1)
    h, w = image_hw
    batch = {k: v[:, :h, :w] for k, v in batch.items()}
    return batch, jax.random.key(1)


@pytest.mark.parametrize("mma_layers, projection_dim, image_hw, scan_layers", [
    (2, 0, (64, 64), False),
    (3, 48, (64, 32), False),  # two intra + one meta layer, CGCL projections, non-square grid
    (4, 0, (64, 64), True),  # scanned stacks: MMA as two groups of (intra, meta)
])
def test_forward_flops_equal_the_traced_matmuls(mma_layers, projection_dim, image_hw,
                                                scan_layers):
    # Model forward + CGCL loss: every matmul of it is in the analytic count and nothing else,
    # so the two must agree exactly (XLA's figure adds elementwise ops: next test).
    config = small_config(mma_layers=mma_layers, projection_dim=projection_dim,
                          scan_layers=scan_layers)
    loss, state = loss_fn(config, cgcl_objective)
    batch, key = inputs(image_hw)
    traced = matmul_flops(jax.make_jaxpr(loss)(state, batch, key).jaxpr)
    analytic = flops.forward_flops(model_config(config), image_size=image_hw,
                                   batch_size=BATCH)
    assert analytic["total"] == traced
    assert analytic["total"] == sum(v for k, v in analytic.items() if k != "total")
    assert (analytic["projection"] > 0) == (projection_dim > 0)


def test_forward_flops_against_xla_cost_analysis():
    # The real forward + pretraining_loss, as the train step runs it. XLA counts every op
    # (layer norms, exact GELU, softmax, masking noise, MIM and CGCL elementwise work), the
    # analytic count only matmuls: analytic <= XLA, and with 128-wide encoders the matmuls
    # are ~90% of XLA's figure (measured 0.904); 15% leaves room for XLA's op accounting.
    config = small_config()
    loss, state = loss_fn(config, full_objective)
    batch, key = inputs()
    xla = jax.jit(loss).lower(state, batch, key).compile().cost_analysis()["flops"]
    analytic = flops.forward_flops(model_config(config), image_size=64, batch_size=BATCH)
    assert 0.85 <= analytic["total"] / xla <= 1.0


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unscanned", "scanned"])
def test_train_flops_are_three_forwards_of_the_traced_gradient(scan_layers):
    config = small_config(scan_layers=scan_layers)
    loss, state = loss_fn(config, full_objective)
    batch, key = inputs()
    traced = matmul_flops(jax.make_jaxpr(jax.grad(loss))(state, batch, key).jaxpr)
    train = flops.train_flops(model_config(config), image_size=64, batch_size=BATCH)
    assert train == pytest.approx(traced, rel=0.01)


def test_breakdown_scales_with_batch_mask_and_layer_kind():
    cfg = model_config(small_config(mma_layers=2))
    one = flops.forward_flops(cfg, image_size=64, batch_size=8)
    two = flops.forward_flops(cfg, image_size=64, batch_size=16)
    for part, value in one.items():
        if part.startswith("cgcl/"):  # logits are quadratic in the batch: M x M, B x B, M x B
            assert two[part] == 4 * value, part
        elif part != "total":
            assert two[part] == 2 * value, part

    # One intra and one meta layer: same tokens through the same linear layers, but a meta
    # sequence is twice as long, so twice the attention.
    assert one["mma_meta/attention"] == 2 * one["mma_intra/attention"] > 0
    for part in ("qkv", "out_proj", "mlp"):
        assert one[f"mma_meta/{part}"] == one[f"mma_intra/{part}"] > 0

    # Encoders see the visible patches only; decoder blocks always run on the full grid.
    dense = flops.forward_flops(dataclasses.replace(cfg, mask_ratio=0.0), image_size=64,
                                batch_size=8)
    n, n_vis = 64, 26  # 8x8 grid, round(0.4 * 64)
    assert dense["encoder/mlp"] == pytest.approx(one["encoder/mlp"] * n / n_vis)
    assert dense["decoder/mlp"] == one["decoder/mlp"]
    assert dense["cgcl/patch"] == pytest.approx(one["cgcl/patch"] * (n / n_vis) ** 2)


def test_forward_flops_rejects_bad_shapes():
    cfg = model_config(small_config())
    with pytest.raises(ValueError, match="multiple of the patch"):
        flops.forward_flops(cfg, image_size=60, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        flops.forward_flops(cfg, image_size=64, batch_size=0)
    with pytest.raises(ValueError, match="projection_dim"):
        flops.forward_flops(cfg, image_size=64, batch_size=2, projection=True)


def test_projection_flag_only_drops_the_projection_matmuls():
    cfg = model_config(small_config(projection_dim=48))
    counted = flops.forward_flops(cfg, image_size=64, batch_size=2)
    dropped = flops.forward_flops(cfg, image_size=64, batch_size=2, projection=False)
    assert dropped["projection"] == 0 < counted["projection"]
    assert dropped["total"] == counted["total"] - counted["projection"]


def fake_device(kind: str, platform: str = "gpu"):
    return types.SimpleNamespace(device_kind=kind, platform=platform)


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-40GB", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("Some Future Accelerator", None),
])
def test_peak_flops_table(kind, peak, monkeypatch):
    monkeypatch.delenv(flops.PEAK_ENV_VAR, raising=False)
    assert flops.peak_flops_per_device(fake_device(kind, "tpu" if "TPU" in kind else "gpu")) \
        == peak


def test_peak_flops_cpu_and_env_override(monkeypatch):
    monkeypatch.delenv(flops.PEAK_ENV_VAR, raising=False)
    assert flops.peak_flops_per_device(jax.devices("cpu")[0]) is None
    monkeypatch.setenv(flops.PEAK_ENV_VAR, "780")  # a measured H100 bf16 matmul peak
    assert flops.peak_flops_per_device(fake_device("NVIDIA H100 80GB HBM3")) == 780e12
    assert flops.peak_flops_per_device(jax.devices("cpu")[0]) == 780e12
    monkeypatch.setenv(flops.PEAK_ENV_VAR, "fast")
    with pytest.raises(ValueError, match=flops.PEAK_ENV_VAR):
        flops.peak_flops_per_device(fake_device("NVIDIA H100 80GB HBM3"))


def test_mfu_arithmetic():
    # 4 devices at 1e15 FLOP/s peak, 2e15 FLOPs per step done in 1 s: 50%.
    assert flops.mfu(2e15, 1.0, 4, 1e15) == pytest.approx(0.5)
    assert flops.mfu(2e15, 0.5, 4, 1e15) == pytest.approx(1.0)
    assert flops.mfu(2e15, 1.0, 4, None) is None
    assert flops.mfu(2e15, 0.0, 4, 1e15) is None
