"""Image files for `restore`: 8/16-bit, grey/RGB, alpha; read values against Pillow and pypng used
directly, lossless round trips, alpha carried untouched (or resized with the image)."""

from __future__ import annotations

import io

import numpy as np
import png
import pytest
import torch
from PIL import Image

from ir_lightning.images import encode_png, read_image

RNG = np.random.default_rng(0)


def pypng_bytes(pixels: np.ndarray, alpha: bool) -> bytes:
    """A 16-bit PNG written by pypng itself: H x W x planes uint16."""
    height, width, planes = pixels.shape
    buffer = io.BytesIO()
    png.Writer(width, height, greyscale=planes <= 2, alpha=alpha, bitdepth=16).write(buffer, pixels.reshape(height, -1))
    return buffer.getvalue()


def pypng_pixels(data: bytes) -> np.ndarray:
    width, height, rows, info = png.Reader(bytes=data).asDirect()
    assert info["bitdepth"] == 16
    return np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, info["planes"])


@pytest.mark.parametrize(("planes", "alpha"), [(3, False), (4, True), (1, False), (2, True)])
def test_16_bit_png_reads_exactly_and_round_trips_losslessly(tmp_path, planes, alpha):
    pixels = RNG.integers(0, 65536, (5, 7, planes), dtype=np.uint16)
    path = tmp_path / "x.png"
    path.write_bytes(pypng_bytes(pixels, alpha))
    image = read_image(path)
    colour = pixels[..., : planes - 1] if alpha else pixels
    assert image.bit_depth == 16 and image.grey == (colour.shape[-1] == 1)
    expected = torch.from_numpy(colour.astype(np.float64).transpose(2, 0, 1)) / 65535
    assert (image.rgb.double() - expected.expand(3, -1, -1)).abs().max() < 1e-7  # float32 of k / 65535
    np.testing.assert_array_equal(image.alpha, pixels[..., -1] if alpha else None)
    np.testing.assert_array_equal(pypng_pixels(encode_png(image.rgb, image)), pixels)  # lossless, same planes


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_8_bit_png_reads_as_pillow_does_and_keeps_alpha_untouched(tmp_path, mode):
    planes = len(mode)
    pixels = RNG.integers(0, 256, (6, 4, planes), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if planes == 1 else pixels).save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    assert image.bit_depth == 8 and image.grey == mode.startswith("L")
    colour = pixels[..., : 3 if mode.startswith("RGB") else 1]
    assert torch.equal(image.rgb, (torch.from_numpy(colour.transpose(2, 0, 1).copy()).float() / 255).expand(3, -1, -1))
    back = np.asarray(Image.open(io.BytesIO(encode_png(image.rgb, image))))
    np.testing.assert_array_equal(back.reshape(pixels.shape), pixels)


def test_palette_with_transparency_reads_as_rgba(tmp_path):
    image = Image.new("P", (4, 3))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    read = read_image(tmp_path / "p.png")
    assert read.alpha is not None and read.alpha[1, 1] == 255 and read.alpha[0, 0] == 0
    assert read.rgb[:, 1, 1].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("suffix", ["jpg", "webp"])
def test_lossy_formats_read_what_pillow_decodes(tmp_path, suffix):
    pixels = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / f"x.{suffix}")
    decoded = np.asarray(Image.open(tmp_path / f"x.{suffix}").convert("RGB"))
    image = read_image(tmp_path / f"x.{suffix}")
    assert torch.equal(image.rgb, torch.from_numpy(decoded.transpose(2, 0, 1).copy()).float() / 255)


def test_alpha_is_resized_with_a_super_resolved_image_and_grey_stays_grey(tmp_path):
    pixels = np.zeros((4, 4, 2), np.uint8)
    pixels[..., 1] = 255  # opaque everywhere
    Image.fromarray(pixels).save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    restored = torch.rand(3, 8, 8)
    back = np.asarray(Image.open(io.BytesIO(encode_png(restored, image))))
    assert back.shape == (8, 8, 2) and (back[..., 1] == 255).all()
    np.testing.assert_array_equal(back[..., 0], np.rint(restored.mean(0).numpy() * 255).astype(np.uint8))


def test_a_file_that_is_no_image_raises(tmp_path):
    (tmp_path / "x.png").write_bytes(b"no image")
    with pytest.raises(OSError):
        read_image(tmp_path / "x.png")


def test_exif_orientation_is_applied_and_a_transparent_colour_becomes_alpha(tmp_path):
    pixels = RNG.integers(0, 256, (20, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif)
    assert tuple(read_image(tmp_path / "phone.jpg").rgb.shape) == (3, 40, 20)  # as a viewer shows it
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "trns.png", transparency=(1, 2, 3))
    image = read_image(tmp_path / "trns.png")
    assert image.alpha is not None and image.alpha[0, 0] == 0 and image.alpha[1, 1] == 255
