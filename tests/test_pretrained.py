"""Loading a pretraining checkpoint's encoder into a task model: the values, the layouts,
and mismatches named by parameter."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs import pretrain
from mars_jax.data.pipeline import make_pipeline
from mars_jax.data.synth import SynthSource
from mars_jax.models import MaRSConfig
from mars_jax.models.heads import HeadConfig
from mars_jax.tasks import get_task
from mars_jax.tasks.model import TaskModel
from mars_jax.train.checkpoint import Checkpointer, CheckpointLayoutError
from mars_jax.train.forward import new_pretrainer
from mars_jax.train.objective import LossConfig
from mars_jax.train.pretrained import load_encoder, step_folder
from tests.helpers import perturb_params


def tiny(**model) -> MaRSConfig:
    config = pretrain.get_config("tiny")
    config.model.update(model)
    return MaRSConfig.from_dict(config.model.to_dict())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pretraining checkpoint (model + Adam state + data iterator), as the trainer saves."""
    import optax

    workdir = tmp_path_factory.mktemp("pretrain")
    model = new_pretrainer(tiny(), LossConfig(), seed=3)
    perturb_params(model, seed=4)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    data = iter(make_pipeline(SynthSource(seed=0, size=32), global_batch_size=2, seed=0,
                              crop_size=32))
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    checkpointer.save(7, nnx.state((model, optimizer)), data)
    checkpointer.close()
    return workdir, nnx.to_pure_dict(nnx.state(model.encoder))


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unscanned", "scanned"])
def test_the_encoder_and_mma_equal_the_saved_ones(saved, scan_layers):
    workdir, encoder = saved
    model = TaskModel(tiny(scan_layers=scan_layers), get_task("landcover"),
                      HeadConfig(channels=16, norm_groups=4), rngs=nnx.Rngs(0))
    head_before = leaves(nnx.state(model.head, nnx.Param))
    assert load_encoder(model.encoder, workdir) == workdir / "checkpoints" / "7"
    loaded = nnx.to_pure_dict(nnx.state(model.encoder))
    if scan_layers:  # compare in the saved layout
        from mars_jax.models import convert_layers
        loaded = convert_layers(loaded, encoder)
    for mine, theirs in zip(leaves(loaded), leaves(encoder), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    for mine, theirs in zip(leaves(nnx.state(model.head, nnx.Param)), head_before, strict=True):
        np.testing.assert_array_equal(mine, theirs)  # the head keeps its initialisation


def test_another_model_is_an_error_naming_the_parameters(saved):
    workdir, _ = saved
    wider = TaskModel(tiny(mma_layers=3), get_task("landcover"), HeadConfig(channels=16,
                      norm_groups=4), rngs=nnx.Rngs(0))
    with pytest.raises(CheckpointLayoutError, match=r"missing e.g. \['mma/blocks/layers/2"):
        load_encoder(wider.encoder, workdir)
    dual = TaskModel(tiny(sar_channels=2, sar_db_mean=(-12.0, -12.0), sar_db_std=(6.0, 6.0)),
                     get_task("landcover"), HeadConfig(channels=16, norm_groups=4),
                     rngs=nnx.Rngs(0))
    with pytest.raises(CheckpointLayoutError, match=r"sar_vit/patch_embed/kernel: saved "
                                                    r"\(64, 64\), model \(128, 64\)"):
        load_encoder(dual.encoder, workdir)


def test_checkpoint_paths_are_resolved_or_named(saved, tmp_path):
    workdir, _ = saved
    assert step_folder(workdir) == step_folder(workdir / "checkpoints") == \
        step_folder(workdir / "checkpoints" / "7") == workdir / "checkpoints" / "7"
    with pytest.raises(FileNotFoundError, match=r"no step 5 \(steps: \[7\]\)"):
        step_folder(workdir, 5)
    with pytest.raises(FileNotFoundError, match="no pretraining checkpoint"):
        step_folder(tmp_path)
