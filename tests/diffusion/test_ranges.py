"""ir_lightning.diffusion.ranges against the closed forms 2x - 1 and clamp((x + 1) / 2, 0, 1)."""

from __future__ import annotations

import torch

from ir_lightning.diffusion.ranges import to_signed, to_unit


def test_to_signed_and_to_unit_are_the_affine_maps_and_invert_each_other():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert torch.equal(to_signed(x), torch.tensor([-1.0, -0.5, 0.0, 1.0], dtype=torch.float64))
    assert torch.equal(to_unit(to_signed(x)), x)
    # a sampler's overshoot is clamped back into [0, 1]
    assert torch.equal(to_unit(torch.tensor([-1.5, -1.0, 0.5, 1.0, 3.0])), torch.tensor([0.0, 0.0, 0.75, 1.0, 1.0]))
    assert to_signed(torch.ones(2, 3, dtype=torch.float16)).dtype == torch.float16
