"""TFDS feature specs for the data contract's arrays, encoded without TensorFlow.

Dense arrays are ``Tensor`` features with zlib encoding (TFDS image features would need
TensorFlow to encode). Shapes may be ``None`` where they vary (ingested tiles, boxes).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

_ZLIB = tfds.features.Encoding.ZLIB


def dense(shape: tuple[int | None, ...], dtype) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=_ZLIB)


def spatial_features(size: int | None, sar_channels: int | None) -> dict[str, tfds.features.Tensor]:
    """Every dense key an example may carry, for images of ``size`` x ``size`` pixels."""
    hw = (size, size)
    return {
        "optical": dense((*hw, 3), np.uint8),
        "optical_t2": dense((*hw, 3), np.uint8),
        "sar": dense((*hw, sar_channels), np.float32),
        "sar_t2": dense((*hw, sar_channels), np.float32),
        "sar_warped": dense((*hw, sar_channels), np.float32),
        "valid": dense(hw, np.bool_),
        "valid_warped": dense(hw, np.bool_),
        "landcover": dense(hw, np.uint8),
        "damage": dense(hw, np.uint8),
        "change": dense(hw, np.bool_),
        "road": dense(hw, np.bool_),
        "height": dense(hw, np.float32),
        "instances": dense(hw, np.int32),
    }


OBJECT_FEATURES = {
    "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
    "box_classes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
    "object_heights": tfds.features.Tensor(shape=(None,), dtype=np.float32),
    "affine": tfds.features.Tensor(shape=(2, 3), dtype=np.float32),
}
