"""Every model the package ships (`ir_lightning.shipped`) is in the package, at most 8 MB in float16, loads
weights-only (the suite's safe reader: no pickled code runs) with its own settings, and restores a 64 x 64 photo
crop to an image of the right size in [0, 1] that is the photo: at least 3 dB closer to it than an image of the
input's mean colour (what a model that lost the photo would return). How good each is, against its task's trivial
baseline, is measured on whole held-out photos (docs/models.md, README): a 64 px crop is too small to score a
model. A sampler's steps are capped at `FAST_STEPS` here, to keep the test fast; every other setting is the
model's own."""

from __future__ import annotations

import pytest
import torch

import ir_lightning
from ir_lightning.degradations import BicubicDownsample, CameraNoise, Pipeline
from ir_lightning.io.weights import read_checkpoint
from ir_lightning.metrics.psnr_ssim import psnr_per_image
from ir_lightning.shipped import MAX_BYTES, SHIPPED

FAST_STEPS = 5


def clean_crop() -> torch.Tensor:
    """A 64 x 64 colour crop of scikit-image's coffee, one of the held-out photos (never trained on)."""
    import skimage.data

    return torch.tensor(skimage.data.coffee()[200:264, 280:344]).permute(2, 0, 1)[None].float() / 255


def degraded(task: str, gt: torch.Tensor) -> torch.Tensor:
    """The input of `task` made from the clean image `gt`."""
    if task == "sr_x4":
        return Pipeline(steps=[BicubicDownsample(scale=4)])(gt)
    noise = CameraNoise(photons=(15.0, 15.0), read_noise=(6.0, 6.0), correlation=(1.0, 1.0))
    return Pipeline(steps=[noise], quantize=True)(gt, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model", SHIPPED, ids=[m.name for m in SHIPPED])
def test_a_shipped_model_loads_weights_only_and_restores_a_64px_crop(model):
    assert model.path.is_file(), f"{model.path} is missing (docs/models.md says how it is trained)"
    assert model.path.stat().st_size <= MAX_BYTES
    checkpoint = read_checkpoint(model.path)  # torch.load(weights_only=True) behind the suite's checks
    assert all(v.dtype == torch.float16 for v in checkpoint["state_dict"].values() if v.is_floating_point())
    own_steps = (checkpoint["hyper_parameters"].get("sampling") or {}).get("steps")  # as exported (`--set`)
    steps = min(own_steps, FAST_STEPS) if own_steps else None
    restorer = ir_lightning.load(model.path, device="cpu", tile=0, steps=steps)
    gt = clean_crop()
    lq = degraded(model.task, gt)
    torch.manual_seed(0)
    out = restorer.restore(lq)
    assert out.shape == gt.shape and out.min() >= 0 and out.max() <= 1
    border = 4 if model.task == "sr_x4" else 0
    flat = lq.mean(dim=(2, 3), keepdim=True).expand_as(gt)
    margin = psnr_per_image(out, gt, border, True) - psnr_per_image(flat, gt, border, True)
    assert margin.item() > 3.0, f"{model.name}: {margin.item():.2f} dB over a flat image of the input's colour"
