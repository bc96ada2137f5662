"""Tests of ``datamodules.decode``: member bytes to pixels and their peak."""

import numpy as np

from datamodules.decode import decode_image
from tests.datamodules.test_shards_datamodule import png_bytes


def test_decode_grey_rgba_and_16_bit():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    pixels, peak = decode_image(png_bytes(grey), channels=3)
    assert peak == 255 and pixels.shape == (3, 4, 3) and (pixels == grey[..., None]).all()
    rgba = np.dstack([np.full((2, 2), value, np.uint8) for value in (10, 20, 30, 0)])
    pixels, _ = decode_image(png_bytes(rgba), channels=3)
    assert pixels.shape == (2, 2, 3) and (pixels == [10, 20, 30]).all()
    deep = np.array([[0, 65535], [1000, 40000]], dtype=np.uint16)
    pixels, peak = decode_image(png_bytes(deep), channels=1)
    assert peak == 65535 and (pixels[..., 0] == deep).all()
