"""Image files for `restore`: 8/16-bit, grey/RGB, alpha; read values against Pillow and pypng used
directly, lossless round trips, alpha carried untouched (or resized with the image)."""

from __future__ import annotations

import io

import numpy as np
import png
import pytest
import torch
from PIL import Image

from ir_lightning.io.images import encode_png, read_image

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


def keys_bicubic(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """The n_out x n_in matrix of bicubic resampling as `_resized_alpha` documents it (torch's bicubic):
    Keys' cubic convolution with a = -0.75, pixel centres at (i + 0.5) n_in / n_out - 0.5 (half-pixel),
    taps beyond the border replicating the edge pixel. Written here in float64, independently of torch."""
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        source = (i + 0.5) * n_in / n_out - 0.5
        left = int(np.floor(source))
        for tap in range(left - 1, left + 3):
            d = abs(source - tap)
            weight = (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else a * (d**3 - 5 * d**2 + 8 * d - 4)
            matrix[i, min(max(tap, 0), n_in - 1)] += weight
    return matrix


@pytest.mark.parametrize("size", [(32, 48), (24, 30)])  # x4 (SR) and a non-integer, non-uniform scale
@pytest.mark.parametrize(("bit_depth", "grey"), [(8, False), (8, True), (16, False), (16, True)])
def test_a_varying_alpha_is_resized_bicubically_and_clamped(tmp_path, bit_depth, grey, size):
    """A gradient alpha with sharp opaque and transparent blocks, resized with the image: bicubic
    (Keys, a = -0.75) as an independent float64 reference computes it, clamped to [0, peak], rounded.

    The code resizes in float32 and the reference in float64 (they differ by < 0.04 of a 16-bit step), and
    a ramp of integers hits exact ties (k + 0.5) that each may round either way: so the two must be equal
    wherever the reference is clearly off a tie, and one step apart at most where it is on one."""
    peak, dtype = (1 << bit_depth) - 1, np.uint8 if bit_depth == 8 else np.uint16
    height, width = 8, 12
    alpha = np.rint(peak * np.arange(width) / (width - 1) * np.ones((height, 1))).astype(dtype)
    alpha[2:6, 1:4] = peak  # an opaque block on the transparent side: overshoot above peak, and below 0
    alpha[4:, 8:11] = 0  # a transparent block on the opaque side
    colour = RNG.integers(0, peak + 1, (height, width, 1 if grey else 3), dtype=dtype)
    pixels = np.concatenate([colour, alpha[..., None]], axis=-1)
    path = tmp_path / "a.png"
    if bit_depth == 8:
        Image.fromarray(pixels).save(path)
    else:
        path.write_bytes(pypng_bytes(pixels, alpha=True))
    image = read_image(path)
    restored = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    data = encode_png(restored, image)
    back = np.asarray(Image.open(io.BytesIO(data))) if bit_depth == 8 else pypng_pixels(data)
    assert back.shape == (*size, 2 if grey else 4)

    exact = keys_bicubic(height, size[0]) @ alpha.astype(np.float64) @ keys_bicubic(width, size[1]).T
    assert exact.min() < -0.1 * peak and exact.max() > 1.1 * peak  # the clamp is exercised on both sides
    expected = np.rint(exact.clip(0, peak))
    resized = back[..., -1].astype(np.int64)
    off_tie = np.abs(exact.clip(0, peak) % 1 - 0.5) > 0.05  # 0.05: above float32's error here (< 0.04)
    assert off_tie.mean() > 0.9  # 6 to 9 % of the pixels lie within 0.05 of a tie
    np.testing.assert_array_equal(resized[off_tie], expected[off_tie])
    assert np.abs(resized - expected).max() <= 1


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
