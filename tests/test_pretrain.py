"""The pretraining trainer: sharded steps equal across meshes, config checks, non-finite stop."""

import json

import jax
import numpy as np
import pytest

from configs import pretrain
from mars_jax.train.pretrain import (
    NonFiniteError,
    initial_state,
    make_plan,
    model_and_optimizer,
    train,
)

MESHES = [dict(data=1, fsdp=1, tensor=1), dict(data=8, fsdp=1, tensor=1),
          dict(data=2, fsdp=4, tensor=1), dict(data=2, fsdp=2, tensor=2)]


def small_config(steps=5, **mesh):
    config = pretrain.get_config("tiny")
    config.input.image_size = 32
    config.model.encoder.depth = 1  # the smallest model with every part (compile time)
    config.data.synth_size = 64
    config.total_steps = steps
    config.optim.warmup_steps = 2
    config.checkpoint.every_steps = steps
    config.checkpoint.async_save = False
    config.log.every_steps = 1
    config.log.images_every_steps = 0
    config.log.progress = False
    config.log.tensorboard = False
    config.mesh.update(mesh or dict(data=1, fsdp=1, tensor=1))
    return config


def losses(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in lines}


def devices_for(mesh):
    return jax.devices()[: int(np.prod(list(mesh.values())))]


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    runs = {}
    for mesh in MESHES:
        workdir = tmp_path_factory.mktemp("mesh")
        config = small_config(**mesh)
        config.checkpoint.every_steps = 0  # orbax's first save compiles per array: not tested here
        if mesh["data"] == 1:  # the reference: the dense loss of the definition on one device
            config.loss.cgcl_impl = "dense"
        if mesh["tensor"] == 2:  # ring-passed keys, 48 patches in blocks of 5
            config.loss.cgcl_keys, config.loss.cgcl_chunk_size = "ring", 5
        train(config, workdir, log=lambda *_: None, devices=devices_for(mesh))
        runs[tuple(mesh.values())] = losses(workdir)
    return runs


@pytest.mark.slow  # every mesh trained in turn: ~3 min of compiles on 2 cores
def test_meshes_give_the_same_losses(mesh_runs):
    reference = mesh_runs[(1, 1, 1)]
    assert sorted(reference) == [1, 2, 3, 4, 5]
    for shape, run in mesh_runs.items():
        for step, row in reference.items():
            for key in ("loss", "mim_rgb", "mim_sar", "cgcl_patch", "cgcl_global", "cgcl_cross",
                        "grad_norm"):
                np.testing.assert_allclose(run[step][key], row[key], rtol=1e-4,
                                           err_msg=f"mesh {shape} step {step} {key}")
    assert reference[5]["loss"] != reference[1]["loss"]  # it trained


def test_parameters_are_sharded_by_the_rules():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    config = small_config(data=2, fsdp=2, tensor=2)
    plan = make_plan(config)
    _, _, shardings, create = model_and_optimizer(plan, 0, 5)
    state = initial_state(plan, shardings, create)
    model_state, optimizer_state = state[0], state[1]
    encoder = model_state["encoder"]
    qkv = encoder["optical_vit"]["blocks"]["layers"][0]["attn"]["qkv"]["kernel"][...]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
    assert len({s.data.tobytes() for s in qkv.addressable_shards}) > 1  # really split
    fc1 = encoder["mma"]["blocks"]["layers"][1]["mlp"]["fc1"]["kernel"][...]
    assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert fc1.addressable_shards[0].data.shape == (fc1.shape[0] // 2, fc1.shape[1] // 2)
    mu = jax.tree.leaves(optimizer_state)  # Adam moments follow their parameters
    assert any(getattr(x, "sharding", None) is not None and
               x.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
               for x in mu)


class TestConfigErrors:
    def test_mesh_must_use_the_devices(self):
        config = small_config(data=3, fsdp=1, tensor=1)
        with pytest.raises(ValueError, match=r"needs 3 devices, but 8 are available|"
                                             r"needs 3 devices, but \d+ are available"):
            make_plan(config)

    def test_batch_must_divide_across_data_axes(self):
        config = small_config(data=-1, fsdp=1, tensor=1)
        config.input.batch_size = 6
        if jax.device_count() < 4:
            pytest.skip("needs several devices")
        with pytest.raises(ValueError, match=r"global batch 6 .* does not divide across"):
            make_plan(config)

    def test_image_size_must_divide_by_patch(self):
        config = small_config()
        config.input.image_size = 36
        with pytest.raises(ValueError, match="image_size 36 is not divisible by the patch size 8"):
            make_plan(config, devices=jax.devices()[:1])

    def test_unknown_keys(self):
        config = small_config()
        config.data.shard_dir = "/tmp/x"
        with pytest.raises(ValueError, match=r"data config: unknown keys \['shard_dir'\]"):
            make_plan(config, devices=jax.devices()[:1])
        config = small_config()
        config.optim.lr = 1.0
        with pytest.raises(ValueError, match=r"optim config: unknown keys \['lr'\]"):
            make_plan(config, devices=jax.devices()[:1])


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    config = small_config(steps=6)
    config.optim.learning_rate = 1e30  # the first update sends the parameters to infinity
    config.optim.warmup_steps = 0
    config.optim.clip_norm = None
    config.checkpoint.every_steps = 1
    with pytest.raises(NonFiniteError, match=r"non-finite .*loss=nan.* at step (\d+)") as err:
        train(config, tmp_path, log=lambda *_: None, devices=jax.devices()[:1])
    bad_step = int(str(err.value).split(" at step ")[1].split(";")[0])
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < bad_step  # the bad state was never saved
    assert f"Last good checkpoint: step {max(saved)}" in str(err.value)


def test_summary_mode_reports_parameters_flops_and_memory():
    from mars_jax.train.forward import build_model, count_parameters
    from mars_jax.train.summary import print_summary

    config = small_config()
    lines = []
    result = print_summary(config, log=lines.append, devices=jax.devices()[:1])
    assert result["parameters"] == count_parameters(build_model(config))["total"]
    assert result["train_flops_per_step"] > 0 and result["temp_bytes_per_device"] > 0
    # parameters + two Adam moments (+ a few scalars)
    assert 3 * 4 * result["parameters"] <= result["state_bytes"] < 3 * 4 * result["parameters"] + 64
    assert any("train FLOPs per step" in line for line in lines)
