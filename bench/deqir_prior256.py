"""DeqIR with a 256 x 256 prior: fixed-point rounds, network evaluations and memory at T = 25, 50, 100.

Two parts, because a real 256 px prior on this CPU takes seconds per image:

1. **Rounds** (network-free). The eps-model is the exact E[eps | x_t] of a stationary Gaussian whose power
   spectrum is measured on 256 x 256 crops of scikit-image's colour photos (`bench/deqir_gaussian_prior.py`
   explains why this is the chain's hard case). The problem: DDNM's x4 average-pooling SR of the astronaut photo,
   the DDPM linear schedule, float32. For each T it runs the suite's solver (joint Anderson with the spectral
   preconditioner, the default; and without it) and DeqIR's own solver (`anderson_official`: per-state Anderson,
   the official timesteps and the official null-space split) and prints the rounds (evaluations of the joint
   map, each one batched network call over the T states) to the tolerance 1e-3, the network images they cost,
   and the error of x_0 against the sequential chain.
2. **Cost of a round** with the real network: OpenAI's ADM 256 x 256 unconditional U-Net (552,814,086
   parameters) with RANDOM weights (the cost of a call does not depend on the weights), float32, one batched
   call of 1, 2, 4 images, each in a fresh process: seconds and peak resident memory. Random weights say nothing
   about restoration quality, only about cost.

The wall-clock of a whole restoration is then a PROJECTION (labelled so): sequential = T calls of one image;
parallel = the solver's network images (its rounds' states; the suite's solver leaves out those already exact) at
the measured seconds per image of calls of `chunk` images; with the Anderson buffers (2 m T images) beside.
On a GPU a call of `chunk` images costs far less than `chunk` calls of one while the GPU is not saturated, which is
what makes the parallel solve pay; on this CPU a call of c images costs about c times one, so it cannot.

    python bench/deqir_prior256.py            # ~5 min on the 2-core VM; --no-network skips part 2
It prints markdown tables; it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

SIZE = 256
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def photos() -> torch.Tensor:
    """256 x 256 centre crops (resized where smaller) of scikit-image's colour photos, N x 3 x 256 x 256 in [0, 1]."""
    import skimage.data
    import torch.nn.functional as F

    crops = []
    for name in PHOTOS:
        image = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)())).permute(2, 0, 1)[None] / 255.0
        side = min(image.shape[-2:])
        if side < SIZE:
            image = F.interpolate(image, scale_factor=SIZE / side, mode="bilinear", antialias=True)
        top, left = (image.shape[-2] - SIZE) // 2, (image.shape[-1] - SIZE) // 2
        crops.append(image[..., top : top + SIZE, left : left + SIZE])
    return torch.cat(crops).float()


def gaussian_eps(images: torch.Tensor, alpha_bars: torch.Tensor):
    """The exact E[eps | x_t] for a stationary Gaussian with the photos' per-channel mean and power spectrum."""
    signed = images.double() * 2 - 1
    mean = signed.mean((0, 2, 3), keepdim=True)[0]
    power = (torch.fft.fft2(signed - mean).abs() ** 2).mean(0) / (SIZE * SIZE)

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alpha_bars[t.cpu()].view(-1, 1, 1, 1)
        gain = (1 - a).sqrt() / (a * power + 1 - a)
        return torch.fft.ifft2(torch.fft.fft2(x.double() - a.sqrt() * mean) * gain).real.to(x.dtype)

    return eps


def rounds_table(steps: list[int]) -> dict[int, dict[str, tuple[int, int]]]:
    from ir_lightning.diffusion.deq import (
        SolverSettings,
        ddnm_chain,
        precondition,
        run_chain,
        sequential,
        spectral_prior_eps,
    )
    from ir_lightning.diffusion.deq.inversion import DEQIR_SAMPLING_SOLVER
    from ir_lightning.diffusion.operators import make_operator
    from ir_lightning.diffusion.schedules import official_timesteps, respaced_timesteps
    from ir_lightning.methods.settings import NoiseSchedule

    images = photos()
    alpha_bars = NoiseSchedule(kind="linear", n_steps=1000, linear_start=1e-4, linear_end=0.02).gammas()
    eps = gaussian_eps(images[1:], alpha_bars)  # the spectrum of the other photos, not the one restored
    gt = images[:1]
    operator = make_operator("sr4", (SIZE, SIZE))
    y = 2 * operator.forward(gt) - operator.forward(torch.ones_like(gt))
    x_T = torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))
    print(
        f"\n## Rounds to the tolerance (network-free Gaussian prior with the photos' spectrum, x4 SR of a {SIZE} px "
        "photo, float32)\n"
    )
    print("| T | solver | rounds | stopped by | last residual | network images | x_0 error vs sequential | seconds |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    found: dict[int, dict[str, tuple[int, int]]] = {}  # T -> solver -> (rounds, network images)
    for n_steps in steps:
        ours = respaced_timesteps(1000, n_steps)
        chain = ddnm_chain(eps, operator, y, alpha_bars, ours)
        surrogate = ddnm_chain(spectral_prior_eps(alpha_bars), operator, y, alpha_bars, ours)
        # the official chain: its timesteps (960, 920, ... at T = 25), DeqIR's weights at --etw 0 --nw 0 (the
        # defaults: deterministic) and its null-space split, which its solver iterates on
        official = ddnm_chain(
            eps, operator, y, alpha_bars, official_timesteps(1000, n_steps), weights="deqir", split="null_space"
        )
        to_tolerance = SolverSettings("anderson", tolerance=1e-3)
        official_to_tolerance = dataclasses.replace(DEQIR_SAMPLING_SOLVER, max_iter=max(n_steps, 100))
        cases = {
            "ours: Anderson, spectral preconditioner (default)": (precondition(chain, surrogate), to_tolerance, chain),
            "ours: Anderson, no preconditioner": (chain, to_tolerance, chain),
            "official: DeqIR's Anderson as it runs (15 evaluations)": (official, DEQIR_SAMPLING_SOLVER, official),
            "official: DeqIR's Anderson to the tolerance": (official, official_to_tolerance, official),
        }
        references = {id(chain): sequential(chain, x_T), id(official): sequential(official, x_T)}
        found[n_steps] = {}
        for name, (candidate, settings, plain) in cases.items():
            start = time.perf_counter()
            x0, result = run_chain(candidate, x_T, settings)
            error = float((x0 - references[id(plain)]).abs().max())
            found[n_steps][name] = (result.iterations, result.network_images)
            print(
                f"| {n_steps} | {name} | {result.iterations} | {result.stopped_by} | {result.residuals[-1]:.1e} | "
                f"{result.network_images} | {error:.1e} | {time.perf_counter() - start:.1f} |",
                flush=True,
            )
    print(
        "\nrounds: evaluations of the joint map (one batched network call over the states each); the suite's "
        "solver re-evaluates only the states not yet exact, DeqIR's all T every time. The residuals are each "
        "solver's own: |G(X) - X| / |G(X)| (ours), |G(X) - X| / (1e-5 + |G(X)|) (DeqIR's). The official chain's "
        "sequential result is its own (other timesteps than ours)."
    )
    return found


def one_call(chunk: int) -> dict[str, float]:
    """Seconds and peak resident memory of one call of the ADM 256 prior on `chunk` images, in this process."""
    import resource

    from ir_lightning.nets.guided_diffusion import ADM_256_UNCOND, GuidedDiffusionUNet

    torch.manual_seed(0)
    net = GuidedDiffusionUNet(**ADM_256_UNCOND).eval()
    x = torch.randn(chunk, 3, SIZE, SIZE)
    level = torch.full((chunk,), 500.0)
    with torch.no_grad():
        net(x[:1], level[:1])  # warm-up
        start = time.perf_counter()
        net(x, level)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def cost_table(chunks: list[int], steps: list[int], rounds: dict[int, dict[str, tuple[int, int]]]) -> None:
    print(
        "\n## One call of the ADM 256 x 256 prior (552,814,086 parameters, random weights, float32, "
        f"{torch.get_num_threads()} threads; each in a fresh process)\n"
    )
    print("| images per call | seconds | seconds per image | peak resident memory (GiB) |")
    print("|---:|---:|---:|---:|")
    measured = {}
    for chunk in chunks:
        done = subprocess.run(
            [sys.executable, __file__, "--one-call", str(chunk)], capture_output=True, text=True, check=True
        )
        measured[chunk] = json.loads(done.stdout.strip().splitlines()[-1])
        m = measured[chunk]
        print(f"| {chunk} | {m['seconds']:.1f} | {m['seconds'] / chunk:.1f} | {m['peak_gib']:.2f} |", flush=True)
    image_mib = 3 * SIZE * SIZE * 4 / 2**20
    print("\n## PROJECTION: seconds of one 256 x 256 restoration on this machine (from the calls above)\n")
    print(
        "Each solver's network images (its rounds' states, those already exact left out by ours) at the measured "
        "seconds per image of a call of `chunk` images; sequential: T calls of one image.\n"
    )
    print("| T | sequential | solver | rounds | network images | chunk | projected seconds | Anderson buffers (MiB) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    one = measured[min(chunks)]["seconds"] / min(chunks)
    for n_steps in steps:
        for name, (k, images) in rounds.get(n_steps, {}).items():
            for chunk in chunks:
                seconds = images * measured[chunk]["seconds"] / chunk
                buffers = 2 * 5 * n_steps * image_mib
                print(
                    f"| {n_steps} | {n_steps * one:.0f} | {name} | {k} | {images} | {chunk} | {seconds:.0f} | "
                    f"{buffers:.0f} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--no-network", action="store_true", help="skip the ADM 256 calls (part 2)")
    parser.add_argument("--one-call", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.one_call is not None:
        print(json.dumps(one_call(args.one_call)))
        return
    print(f"python {' '.join(sys.argv)}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}"
    )
    rounds = rounds_table(args.steps)
    if not args.no_network:
        cost_table(args.chunks, args.steps, rounds)


if __name__ == "__main__":
    main()
