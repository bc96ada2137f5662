"""What an ideal diffusion network's loss asks of the real outputs, in Denoising as Adaptation: a Gaussian toy.

D denoises the synthetic clean target x_t = sqrt(g) y + sqrt(1 - g) eps given two conditions in random
order: the restored synthetic image (informative about y) and the restored real image (an unrelated
image). The method hopes D's loss is lowest when the restored real image is clean. The toy asks what the
loss of the *best possible* D does as the restored real image keeps residual noise of std s:

- clean images of both domains: y, z ~ N(0, I_d) (d pixels);
- restored synthetic c_s = y (a perfect restorer on its own domain); restored real c_r = z + s n;
- slots (c_a, c_b) = (c_s, c_r) or (c_r, c_s) with probability 1/2 each (channel shuffling).

Given the assignment, eps is known exactly: eps = (x_t - sqrt(g) c_syn) / sqrt(1 - g). So the Bayes
estimate is eps_hat = P(a is syn | x_t, c_a, c_b) eps(a) + P(b is syn | ...) eps(b), with the posterior
log-odds (both slots' priors 1/2)

    log N(x_t; sqrt(g) c_a, (1 - g) I) + log N(c_a; 0, I) + log N(c_b; 0, (1 + s^2) I) - (the same, a <-> b),

and the minimum mean squared error E||eps - eps_hat||^2 / d is estimated by Monte Carlo. It falls as s
grows: an ideal D identifies the synthetic slot more easily when the real output *differs* from a clean
image, so jointly minimising its loss rewards residual noise in the real outputs instead of removing it.
Where the content of x_t already identifies the slot (large g, large d) the loss is ~0 whatever s is, and
it exerts no pull on the real outputs at all.

Run: `python bench/da_slot_posterior.py` (about 1.5 minutes on one core). It prints a markdown table; it asserts nothing.
"""

from __future__ import annotations

import argparse
import math

import torch


def gaussian_logpdf(x: torch.Tensor, mean: torch.Tensor | float, var: float) -> torch.Tensor:
    """Sum over the last dimension of log N(x; mean, var I)."""
    d = x.shape[-1]
    return -0.5 * ((x - mean) ** 2).sum(-1) / var - 0.5 * d * math.log(2 * math.pi * var)


def bayes_mmse(
    gamma: float, residual_stds: list[float], dim: int, samples: int, seed: int
) -> list[tuple[float, float]]:
    """Monte-Carlo MMSE of the ideal D (per pixel) and its standard error, for each residual std; the
    same draws for every std (common random numbers), so the trend is not sampling noise."""
    generator = torch.Generator().manual_seed(seed)
    draw = lambda: torch.randn(samples, dim, generator=generator, dtype=torch.float64)  # noqa: E731
    y, z, eps, n = draw(), draw(), draw(), draw()
    swap = torch.rand(samples, 1, generator=generator, dtype=torch.float64) < 0.5
    x_t = math.sqrt(gamma) * y + math.sqrt(1 - gamma) * eps
    results = []
    for std in residual_stds:
        c_syn, c_real = y, z + std * n
        c_a, c_b = torch.where(swap, c_real, c_syn), torch.where(swap, c_syn, c_real)
        real_var = 1.0 + std**2

        def log_joint(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:  # `first`: the synthetic slot
            return (
                gaussian_logpdf(x_t, math.sqrt(gamma) * first, 1 - gamma)
                + gaussian_logpdf(first, 0.0, 1.0)
                + gaussian_logpdf(second, 0.0, real_var)  # noqa: B023 (called within this iteration)
            )

        p_a = torch.sigmoid(log_joint(c_a, c_b) - log_joint(c_b, c_a))[:, None]
        eps_a = (x_t - math.sqrt(gamma) * c_a) / math.sqrt(1 - gamma)
        eps_b = (x_t - math.sqrt(gamma) * c_b) / math.sqrt(1 - gamma)
        per_sample = ((eps - (p_a * eps_a + (1 - p_a) * eps_b)) ** 2).mean(-1)
        results.append((float(per_sample.mean()), float(per_sample.std() / math.sqrt(samples))))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, nargs="+", default=[16, 256], help="pixels per image (default 16 256)")
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.001, 0.01, 0.1, 0.5])
    parser.add_argument("--stds", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4, 0.8])
    parser.add_argument("--samples", type=int, default=50_000)
    args = parser.parse_args()
    print("Ideal D's noise MSE (per pixel, +- standard error) against the residual-noise std s of the real outputs\n")
    print("| d | gamma | " + " | ".join(f"s = {s:g}" for s in args.stds) + " |")
    print("|---|---|" + "---|" * len(args.stds))
    for dim in args.dim:
        for gamma in args.gammas:
            cells = [
                f"{mean:.4f} +- {err:.4f}" for mean, err in bayes_mmse(gamma, args.stds, dim, args.samples, seed=0)
            ]
            print(f"| {dim} | {gamma:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
