"""One forward pass of a configured MaRS on random inputs: the built-in smoke job."""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from mars_jax.data.contract import random_batch
from mars_jax.models import MaRSConfig, MaRSPretrainer
from mars_jax.train.config import Experiment
from mars_jax.train.objective import LossConfig, pretraining_loss


def new_pretrainer(model: MaRSConfig, loss: LossConfig, seed: int) -> MaRSPretrainer:
    """The pretrainer of ``model``, with learnable temperatures when ``loss`` asks for them
    (the loss config's temperatures are then their initial values)."""
    temperatures = loss.temperatures if loss.learnable_temperatures else None
    return MaRSPretrainer(model, temperatures=temperatures, rngs=nnx.Rngs(seed))


def build_model(config: ml_collections.ConfigDict, *,
                seed: int | None = None) -> MaRSPretrainer:
    """The pretrainer named by ``config.model`` and ``config.loss``, initialised from
    ``seed`` (default config.seed)."""
    return new_pretrainer(MaRSConfig.from_dict(config.model.to_dict()),
                          LossConfig.from_dict(config.loss.to_dict()),
                          config.seed if seed is None else seed)


def count_parameters(model: nnx.Module) -> dict[str, int]:
    """Trainable parameter counts per submodule (the encoder's parts one by one, e.g.
    ``encoder/optical_vit``), plus ``"total"``."""
    counts: dict[str, int] = {}
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = "/".join(map(str, path[:2])) if path[0] == "encoder" else str(path[0])
        counts[name] = counts.get(name, 0) + int(np.prod(leaf.shape))
    counts["total"] = sum(counts.values())
    return counts


def run_forward(config: ml_collections.ConfigDict, *, log=print) -> dict[str, Any]:
    """Builds the model, runs one jitted forward + loss on random data, reports the losses."""
    exp = Experiment.from_config(config)  # every section checked, as for training
    loss_config = exp.loss
    model = new_pretrainer(exp.model, exp.loss, exp.seed)
    params = count_parameters(model)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, batch, key):
        out = nnx.merge(graphdef, state)(batch["optical"], batch["sar"], key=key,
                                        valid=batch["valid"])
        return pretraining_loss(out, loss_config)[1]

    data_key, mask_key = jax.random.split(jax.random.key(config.seed))
    size, batch_size = config.input.image_size, config.input.batch_size
    batch = random_batch(data_key, batch_size, size, config.model.sar_channels)
    start = time.perf_counter()
    metrics = jax.device_get(forward(state, batch, mask_key))
    seconds = time.perf_counter() - start

    enc = config.model.encoder
    log(f"mars_jax forward | config {config.get('variant', '?')} | {batch_size} pairs of "
        f"{size}x{size} | encoders {enc.width}-d x {enc.depth} layers, "
        f"{config.model.mma_layers} MMA layers | {jax.devices()[0].platform}")
    log("parameters: " + ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in params.items()))
    order = ["loss", "mim_rgb", "mim_sar", "cgcl", "cgcl_patch", "cgcl_global", "cgcl_cross"]
    order += sorted(set(metrics) - set(order))
    log("losses: " + "  ".join(f"{k}={float(metrics[k]):.4f}" for k in order))
    log(f"compile + run: {seconds:.1f}s")
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "parameters": params}
