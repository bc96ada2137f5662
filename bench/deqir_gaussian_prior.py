"""Why DeqIR's joint fixed point converges slowly on photos, with no trained network involved.

The eps-model is the exact posterior mean E[eps | x_t] of a stationary Gaussian prior, evaluated by
FFT: either with the power spectrum measured on 64 x 64 crops of the demo's training photos, or with
a white spectrum of the same pixel variance (the tests' kind of prior). The chain is DDNM's x4
average-pooling SR of one held-out 64 x 64 demo crop, DDIM over the DDPM linear schedule, eta 0,
float64. For T in {10, 25, 50, 100} it prints the iterations Picard and Anderson (memory 5, regularisation 1e-3,
mixing 1) need to DeqIR's tolerance (relative residual 1e-3), with DDNM's plain split and with the
spectral preconditioner (`deq.precondition` around `deq.spectral_prior_eps`, which assumes a 1/f^2
spectrum of variance 0.25, not the measured one).

What it shows: with the photos' spectrum even the ideal prior needs about 0.9 T Picard iterations
without the preconditioner, so the trained prior's slow convergence is the chain's, not the network's
or the solver's; with a white spectrum it does not happen; with the preconditioner it goes away.

    python bench/deqir_gaussian_prior.py      # after `ir-lightning demo` wrote demo_out/shards; ~5 min
It prints a markdown table; it asserts nothing.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from datamodules import ShardDataModule
from ir_lightning.diffusion.deq import SolverSettings, ddnm_chain, precondition, sequential, solve, spectral_prior_eps
from ir_lightning.diffusion.operators import make_operator
from ir_lightning.diffusion.schedules import respaced_timesteps
from ir_lightning.methods.sr3 import NoiseSchedule


def gaussian_eps(power: torch.Tensor, mean: torch.Tensor, alpha_bars: torch.Tensor):
    """E[eps | x_t] for x_0 - mean stationary Gaussian with per-channel power spectrum `power` (C x H x W)."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alpha_bars[t].to(x.dtype).view(-1, 1, 1, 1)
        gain = (1 - a).sqrt() / (a * power + 1 - a)
        return torch.fft.ifft2(torch.fft.fft2(x - a.sqrt() * mean) * gain).real

    return eps


def photo_statistics(shards: str, crop: int, n_crops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and power spectrum |FFT|^2 / (H W) of random training crops, signed scale, float64."""
    data = ShardDataModule(
        train_shards=shards, crop_size=crop, batch_size=n_crops, num_workers=0, steps_per_epoch=1, shuffle_buffer=10
    )
    data.setup("fit")
    crops = next(iter(data.train_dataloader()))["gt"].double() * 2 - 1
    mean = crops.mean((0, 2, 3), keepdim=True)
    power = (torch.fft.fft2(crops - mean).abs() ** 2).mean(0) / (crop * crop)
    return mean[0], power


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-shards", default="demo_out/shards/train-{000000..000004}.tar")
    parser.add_argument("--val-shards", default="demo_out/shards/val-000000.tar")
    parser.add_argument("--crops", type=int, default=256, help="training crops for the spectrum")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    size = 64
    mean, power = photo_statistics(args.train_shards, size, args.crops)
    white = torch.full_like(power, float(power.mean()))  # the same pixel variance, no correlation
    data = ShardDataModule(train_shards=args.val_shards, val_shards=args.val_shards, val_crop_size=size, num_workers=0)
    data.setup("validate")
    gt = next(iter(data.val_dataloader()))["gt"].double()
    operator = make_operator("sr4", (size, size))
    y = 2 * operator.forward(gt) - operator.forward(torch.ones_like(gt))
    alpha_bars = NoiseSchedule(kind="linear", n_steps=1000, linear_start=1e-4, linear_end=0.02).gammas()
    x_T = torch.randn(gt.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    print(
        f"Gaussian-prior DDNM chains, x4 average-pooling SR of a {size} px crop, tol 1e-3, float64; photo spectrum "
        f"from {args.crops} crops (pixel variance {float(power.mean()):.3f})\n"
    )
    print("| prior | T | Picard | Anderson | Picard, preconditioned | Anderson, preconditioned | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, spectrum in (("photo spectrum", power), ("white", white)):
        eps = gaussian_eps(spectrum, mean, alpha_bars)
        for n_steps in args.steps:
            start = time.perf_counter()
            timesteps = respaced_timesteps(1000, n_steps)
            chain = ddnm_chain(eps, operator, y, alpha_bars, timesteps)
            surrogate = ddnm_chain(spectral_prior_eps(alpha_bars), operator, y, alpha_bars, timesteps)
            reference = sequential(chain, x_T)
            cells = []
            for candidate in (chain, precondition(chain, surrogate)):
                for method in ("picard", "anderson"):
                    result = solve(candidate, x_T, SolverSettings(method, tolerance=1e-3))  # at most T iterations
                    error = float((result.x0 - reference).abs().max())
                    cells.append(f"{result.iterations} ({error:.0e})")
            print(f"| {name} | {n_steps} | {' | '.join(cells)} | {time.perf_counter() - start:.0f} |", flush=True)
    print("\nCells: iterations to the tolerance (max-abs difference of x_0 from the sequential chain).")


if __name__ == "__main__":
    main()
