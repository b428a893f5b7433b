"""The trainer reads the shard folder's ingest_summary.json and names, before compiling, every
way the config disagrees with it."""

import re

import jax
import numpy as np
import pytest

from mars_jax.data.contract import SAR_DB_MEAN, SAR_DB_STD
from mars_jax.data.ingest import IngestConfig, ingest
from mars_jax.models import MaRSConfig
from mars_jax.train.pretrain import make_plan
from mars_jax.typed_config import ConfigError
from tests.helpers import tiny_run_config
from tests.test_ingest import write_pair


def shards(root, name: str, sar: np.ndarray, **options):
    (root / name).mkdir(exist_ok=True)
    write_pair(root / name, "scene", (64, 64), sar=sar)
    ingest(IngestConfig(optical=root / name / "opt", sar=root / name / "sar",
                        out=root / name / "out", tile=32, overlap=0, progress=False, **options))
    return root / name / "out"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    rng = np.random.default_rng(0)
    return {
        "good": shards(root, "good", rng.normal(-12, 6, (64, 64, 1)).astype(np.float32)),
        # dB well above the model's statistics (an uncalibrated product taken as dB)
        "bright": shards(root, "bright", rng.normal(2, 4, (64, 64, 1)).astype(np.float32)),
        "dual": shards(root, "dual", rng.normal(-12, 6, (64, 64, 2)).astype(np.float32)),
    }


def plan_for(folder, **model):
    return make_plan(tiny_run_config(1, data={"source": "shards", "shards_dir": str(folder)},
                                     model=model), jax.devices()[:1])


def test_model_stats_defaults_are_the_data_contracts():
    assert MaRSConfig().sar_db_mean == (SAR_DB_MEAN,) and MaRSConfig().sar_db_std == (SAR_DB_STD,)


def test_matching_shards_pass(folders):
    assert plan_for(folders["good"]).image_size == 32


def test_sar_channels_that_disagree_name_the_config_key(folders):
    with pytest.raises(ConfigError, match=r"2-channel SAR, config.model.sar_channels is 1: set "
                                          r"--config.model.sar_channels=2"):
        plan_for(folders["dual"])
    plan_for(folders["dual"], sar_channels=2, sar_db_mean=(-12.0, -12.0), sar_db_std=(6.0, 6.0))


def test_tiles_smaller_than_the_crop_name_the_image_size(folders):
    config = tiny_run_config(1, data={"source": "shards", "shards_dir": str(folders["good"])})
    config.input.image_size = 64
    with pytest.raises(ConfigError, match=r"tiles are 32 px, smaller than the crop "
                                          r"config.input.image_size 64"):
        make_plan(config, jax.devices()[:1])


def test_sar_statistics_far_from_the_models_name_both_fixes(folders):
    with pytest.raises(ConfigError) as refused:
        plan_for(folders["bright"])
    message = str(refused.value)
    assert "ingest_summary.json disagrees with the config" in message
    suggested = re.search(r"--config.model.sar_db_mean='\((-?[\d.]+),\)' "
                          r"--config.model.sar_db_std='\(([\d.]+),\)'", message)
    mean, std = (float(v) for v in suggested.groups())
    assert mean == pytest.approx(2.0, abs=0.3) and std == pytest.approx(4.0, abs=0.3)
    assert "--sar-normalise percentile" in message
    plan_for(folders["bright"], sar_db_mean=(mean,), sar_db_std=(std,))  # the fix it names


def test_explicit_percentile_normalisation_brings_them_in(tmp_path):
    rng = np.random.default_rng(1)
    out = shards(tmp_path, "bright", rng.normal(2, 4, (64, 64, 1)).astype(np.float32),
                 sar_normalise="percentile")
    assert plan_for(out).image_size == 32
