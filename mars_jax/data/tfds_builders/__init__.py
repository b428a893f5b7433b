"""TFDS builders (array_record, no TensorFlow needed). Importing this package registers them:

    import mars_jax.data.tfds_builders  # noqa: F401
    builder = tfds.builder("synth_vhr/landcover", data_dir=..., file_format="array_record")
    builder.download_and_prepare()
    tfds.data_source("synth_vhr/landcover", split="train", data_dir=...)
"""

from mars_jax.data.tfds_builders.ingested_pairs import IngestedPairs, IngestedPairsConfig
from mars_jax.data.tfds_builders.synth_vhr import SynthVhr, SynthVhrConfig

__all__ = ["IngestedPairs", "IngestedPairsConfig", "SynthVhr", "SynthVhrConfig"]
