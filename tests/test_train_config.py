"""Typed config sections end to end, and named presets."""

import pytest

from configs import pretrain
from mars_jax.models import DECODER_PRESETS, ENCODER_PRESETS, MaRSConfig
from mars_jax.train.config import Experiment
from mars_jax.typed_config import ConfigError


@pytest.mark.parametrize("variant", list(pretrain.VARIANTS))
def test_every_variant_builds_typed_sections_from_named_presets(variant):
    config = pretrain.get_config(variant)
    exp = Experiment.from_config(config)
    v = pretrain.VARIANTS[variant]
    assert exp.model.encoder == ENCODER_PRESETS[v.encoder]
    assert exp.model.decoder == DECODER_PRESETS[v.decoder]
    assert (exp.input.image_size, exp.input.batch_size) == (v.image_size, v.batch_size)
    assert exp.model.scan_layers == v.scan_layers and exp.total_steps == v.total_steps
    assert isinstance(exp.model, MaRSConfig)


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("data", "source", "s3", r"data config: source must be one of \('synth', 'shards', "
                             r"'tfds'\), got 's3'"),
    ("data", "workers", -1, r"data config: workers must be >= 0, got -1"),
    ("checkpoint", "keep", 0, r"checkpoint config: keep must be positive, got 0"),
    ("log", "every_steps", 0, r"log config: every_steps must be positive, got 0"),
    ("input", "batch_size", 0, r"input config: batch_size must be positive, got 0"),
    ("mesh", "fsdp", 0, r"mesh config: fsdp must be a positive size or -1, got 0"),
    ("model", "mma_norm", "mid", r"model config: mma_norm must be one of \('pre', 'post'\)"),
    ("loss", "mim_type", "l3", r"loss config: mim_type must be one of \('l1', 'l2'\)"),
    ("optim", "warmup_steps", -5, r"optim config: warmup_steps must be >= 0, got -5"),
])
def test_bad_values_name_the_section_and_field(section, key, value, message):
    config = pretrain.get_config("tiny")
    config[section][key] = value
    with pytest.raises(ConfigError, match=message):
        Experiment.from_config(config)


def test_unknown_keys_name_the_section_and_the_nearest_key():
    config = pretrain.get_config("tiny")
    config.checkpoint.every_step = 5
    with pytest.raises(ConfigError, match=r"checkpoint config: unknown keys \['every_step'\] "
                                          r"\('every_step': did you mean 'every_steps'\?\)"):
        Experiment.from_config(config)
    config = pretrain.get_config("tiny")
    config.totl_steps = 5
    with pytest.raises(ConfigError, match=r"top-level config: unknown keys \['totl_steps'\] "
                                          r"\('totl_steps': did you mean 'total_steps'\?\)"):
        Experiment.from_config(config)
    config = pretrain.get_config("tiny")
    config.model.encoder.widht = 3
    with pytest.raises(ConfigError, match=r"transformer config: unknown keys \['widht'\]"):
        Experiment.from_config(config)
    config = pretrain.get_config("tiny")
    del config.model.encoder["depth"]
    with pytest.raises(ConfigError, match=r"transformer config: missing keys \['depth'\]"):
        Experiment.from_config(config)


def test_source_specific_fields_are_required():
    config = pretrain.get_config("tiny")
    config.data.source = "shards"
    with pytest.raises(ConfigError, match="shards_dir must be set for source='shards'"):
        Experiment.from_config(config)
