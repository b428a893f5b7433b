"""Test helpers: perturbing parameters and reading them out for the NumPy references."""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from mars_jax.models.layers import TransformerBlock
from mars_jax.models.stack import TransformerStack


def _plain_path(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)


def perturb_params(module: nnx.Module, seed: int, scale: float = 0.2, *,
                   order: Callable[[tuple], Any] | None = None) -> None:
    """Adds noise to every parameter, so zero biases and unit norms cannot hide a bug.

    The noise is drawn leaf by leaf, in the state's flattening order, or sorted by
    ``order(path)`` (``path`` a tuple of plain keys) to draw the same noise per parameter
    whatever the module's current names.
    """
    state = nnx.state(module, nnx.Param)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    draw = list(range(len(paths_leaves)))
    if order is not None:
        draw.sort(key=lambda i: order(_plain_path(paths_leaves[i][0])))
    rng = np.random.default_rng(seed)
    noise = {}
    for i in draw:
        leaf = paths_leaves[i][1]
        noise[i] = scale * rng.normal(size=leaf.shape).astype(leaf.dtype)
    noisy = [leaf + noise[i] for i, (_, leaf) in enumerate(paths_leaves)]
    nnx.update(module, jax.tree.unflatten(treedef, noisy))


def block_params(block: TransformerBlock, index: int | None = None) -> dict[str, np.ndarray]:
    """A block's parameters as float64 arrays; ``index`` picks one layer of a scanned block
    (whose parameters carry a leading ``layers`` axis)."""
    def f64(v):
        value = np.asarray(v[...], np.float64)
        return value if index is None else value[index]

    return {
        "ln1_scale": f64(block.ln1.scale), "ln1_bias": f64(block.ln1.bias),
        "ln2_scale": f64(block.ln2.scale), "ln2_bias": f64(block.ln2.bias),
        "qkv_kernel": f64(block.attn.qkv.kernel), "qkv_bias": f64(block.attn.qkv.bias),
        "out_kernel": f64(block.attn.out.kernel), "out_bias": f64(block.attn.out.bias),
        "fc1_kernel": f64(block.mlp.fc1.kernel), "fc1_bias": f64(block.mlp.fc1.bias),
        "fc2_kernel": f64(block.mlp.fc2.kernel), "fc2_bias": f64(block.mlp.fc2.bias),
    }


def stack_params(stack: TransformerStack) -> list[dict[str, np.ndarray]]:
    """Every layer's ``block_params`` of a stack, in application order, in either layout
    (scanned: layer ``g p + j`` is slice ``g`` of group member ``j``)."""
    if stack.stacked is None:
        return [block_params(block) for block in stack.layers]
    period = len(stack.stacked)
    return [block_params(stack.stacked[i % period], i // period) for i in range(stack.depth)]


def bilinear(image, x, y):
    """Bilinear samples of ``image`` [H, W] at points (x, y) (pixel centres at integers)."""
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, image.shape[1] - 1), np.minimum(y0 + 1, image.shape[0] - 1)
    fx, fy = x - x0, y - y0
    return ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x1])
            + fy * ((1 - fx) * image[y1, x0] + fx * image[y1, x1]))


def tiny_run_config(steps: int, *, depth: int = 1, constant_lr: bool = False, **sections):
    """The tiny pretraining config shrunk for short test runs on one device: 32-px crops,
    a checkpoint every 2 steps, quiet logs. ``constant_lr`` makes the schedule independent of
    ``total_steps`` (runs of different lengths then share their steps). ``sections``:
    ``{"checkpoint": {"async_save": False}, ...}`` overrides."""
    from configs import pretrain

    config = pretrain.get_config("tiny")
    config.input.image_size = 32
    config.model.encoder.depth = depth
    config.data.synth_size = 32
    config.total_steps = steps
    if constant_lr:
        config.optim.warmup_steps, config.optim.end_learning_rate_fraction = 0, 1.0
    config.checkpoint.every_steps = 2
    config.log.every_steps = 1
    config.log.images_every_steps = 0
    config.log.progress = False
    config.log.tensorboard = False
    config.mesh.update(dict(data=1, fsdp=1, tensor=1))
    for section, values in sections.items():
        config[section].update(values)
    return config


def whole_finetune_config(spec: str, steps: int, learning_rate: float | None = None):
    """``configs/finetune.py:SPEC`` as the slow whole-run tests train it: ``steps`` steps
    (at ``learning_rate`` when given), quiet, one checkpoint at the end."""
    from configs import finetune

    config = finetune.get_config(spec)
    config.total_steps = steps
    if learning_rate is not None:
        config.optim.learning_rate = learning_rate
    config.eval.progress = False
    config.log.progress = False
    config.log.tensorboard = False
    config.checkpoint.every_steps = 0  # saved at the end all the same
    return config


def tiny_finetune_config(task: str, protocol: str = "full", *, steps: int = 2,
                         image_size: int = 32):
    """A fine-tuning config of a few steps at tiny shapes (32 px crops, an 8-channel head)."""
    from configs import finetune as finetune_configs

    config = finetune_configs.get_config(f"{task},tiny,{protocol}")
    config.total_steps = steps
    config.input.image_size = image_size
    config.data.synth_size = 2 * image_size
    config.data.synth_scenes = 64
    config.head.channels = 8
    config.head.norm_groups = 4
    config.eval.scenes = 2
    config.eval.synth_size = 2 * image_size
    config.eval.progress = False
    config.log.progress = False
    config.log.tensorboard = False
    return config


def save_finetuning(workdir, config, step=3, seed=5):
    """A fine-tuning workdir as ``finetune`` writes it (its plan, state, input and
    config.json), from perturbed initial parameters: no training step runs."""
    from mars_jax.train.checkpoint import Checkpointer
    from mars_jax.train.finetune import make_finetune_plan, make_input, model_and_optimizer
    from mars_jax.train.workdir import write_run_config

    plan = make_finetune_plan(config, jax.devices()[:1])
    _, _, _, create = model_and_optimizer(plan, config.total_steps)
    model, optimizer = create()
    perturb_params(model, seed=seed)
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    checkpointer.save(step, nnx.state((model, optimizer)), iter(make_input(plan)))
    checkpointer.close()
    write_run_config(workdir, config, plan.task)
