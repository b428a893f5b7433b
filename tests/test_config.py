"""Configs, the forward job, the command-line entry point, README <-> CI agreement."""

import math
import subprocess
import sys

import pytest

from configs import pretrain
from mars_jax.models import MaRSConfig
from mars_jax.train.forward import run_forward
from mars_jax.train.objective import LossConfig
from mars_jax.typed_config import ConfigError


@pytest.mark.parametrize("variant", pretrain.VARIANTS)
def test_variants_give_valid_model_and_loss_configs(variant):
    config = pretrain.get_config(variant)
    model = MaRSConfig.from_dict(config.model.to_dict())
    LossConfig.from_dict(config.loss.to_dict())
    assert config.input.image_size % model.patch_size == 0
    assert model.encoder.width % model.encoder.num_heads == 0
    assert model.scan_layers == pretrain.VARIANTS[variant].scan_layers


def test_base_is_the_papers_shape():
    config = pretrain.get_config("base")
    model = MaRSConfig.from_dict(config.model.to_dict())
    assert (model.encoder.width, model.encoder.depth, model.patch_size) == (768, 12, 16)
    assert (config.input.image_size, model.mma_layers, model.mask_ratio) == (512, 4, 0.6)
    loss = LossConfig.from_dict(config.loss.to_dict())
    assert loss.tau_patch < loss.tau_global < loss.tau_cross


def test_unknown_keys_and_values_are_named():
    with pytest.raises(ValueError, match="unknown pretrain config variant 'huge'"):
        pretrain.get_config("huge")
    values = pretrain.get_config("tiny").model.to_dict()
    with pytest.raises(ConfigError, match=r"^model config: unknown keys \['mask_ratoi'\] "
                                          r"\('mask_ratoi': did you mean 'mask_ratio'\?\); "
                                          r"known keys: \[.*'mask_ratio'.*\]$"):
        MaRSConfig.from_dict({**values, "mask_ratoi": 0.5})
    with pytest.raises(ConfigError, match=r"^model config: sar_db_mean must be one value per "
                                          r"channel \(sar_db_mean has 1 values for 2 "
                                          r"channels\), got \(-12\.0,\)$"):
        MaRSConfig.from_dict({**values, "sar_channels": 2})
    with pytest.raises(ConfigError, match=r"^transformer config: width must be divisible by "
                                          r"num_heads 3 \(width 64 is not divisible by "
                                          r"num_heads\), got 64$"):
        MaRSConfig.from_dict({**values, "encoder": dict(width=64, depth=2, num_heads=3,
                                                        mlp_dim=256)})
    with pytest.raises(ConfigError, match=r"^model config: scan_layers must be True or False, "
                                          r"got 'yes'$"):
        MaRSConfig.from_dict({**values, "scan_layers": "yes"})
    with pytest.raises(ConfigError, match=r"^loss config: unknown keys \['temperature'\]"):
        LossConfig.from_dict({"temperature": 0.1})
    assert issubclass(ConfigError, ValueError)


def test_forward_job_reports_consistent_losses():
    lines = []
    result = run_forward(pretrain.get_config("tiny"), log=lines.append)
    m = result["metrics"]
    assert all(math.isfinite(v) for v in m.values())
    assert m["loss"] == pytest.approx(m["mim_rgb"] + m["mim_sar"] + m["cgcl"], rel=1e-5)
    assert m["cgcl"] == pytest.approx(m["cgcl_patch"] + m["cgcl_global"] + m["cgcl_cross"],
                                      rel=1e-5)
    assert any(line.startswith("losses: loss=") for line in lines)


def test_main_command_line(repo_root):
    ok = subprocess.run(
        [sys.executable, "-m", "mars_jax.main", "--config=configs/pretrain.py:tiny",
         "--mode=forward", "--config.input.batch_size=2"],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "losses: loss=" in ok.stdout and "2 pairs of 64x64" in ok.stdout
    for override, message in [
        # an unknown key: named with its section and nearest key, before jax starts
        ("--config.model.mask_ratoi=0.5", "config error: --config.model.mask_ratoi: model "
         "config: unknown keys ['mask_ratoi'] ('mask_ratoi': did you mean 'mask_ratio'?)"),
        ("--config.model.encoder.depthh=3", "config error: --config.model.encoder.depthh: "
         "model.encoder config: unknown keys ['depthh'] ('depthh': did you mean 'depth'?)"),
        # a bad value: the section, the field and its rule, without a traceback
        ("--config.optim.learning_rate=-1", "config error: optim config: learning_rate must "
         "be positive, got -1.0"),
    ]:
        bad = subprocess.run(
            [sys.executable, "-m", "mars_jax.main", "--config=configs/pretrain.py:tiny",
             "--mode=forward", override],
            cwd=repo_root, capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2, (override, bad.stderr[-2000:])
        assert message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-2000:]


def test_readme_and_ci_run_the_same_test_command(repo_root):
    ci = (repo_root / ".ci" / "run").read_text()
    command = next(line.split("=", 1)[1].strip().strip("'")
                   for line in ci.splitlines() if line.startswith("TEST_COMMAND="))
    assert command in (repo_root / "README.md").read_text()


def test_readme_python_example_runs(repo_root):
    text = (repo_root / "README.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["out"].z_rgb.shape == (2, 26, 64)
    assert set(namespace["terms"]) == {"patch", "global", "cross"}
