"""DiffIR's diffusion on the IR prior representation (a B x 256 vector), in plain PyTorch.

T is tiny (4), so the whole reverse chain is unrolled with gradients during training, and the
loss reaches the CPEN and the denoiser through all four steps. The denoiser predicts the clean
IPR (x0-parameterisation); each reverse step moves to the posterior mean of
q(z_{t-1} | z_t, z0_hat), without adding noise. At t = 0 the posterior mean is z0_hat itself.

Steps are indexed 0..T-1 as in the official code: step t has gamma_t = prod_{i<=t} (1 - beta_i)
(DDPM's alpha_bar), and the chain starts from z_{T-1}. The Gaussian forward process and the
posterior are `ir_lightning.diffusion.gaussian`'s, which work on vectors as on images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ir_lightning.diffusion.gaussian import posterior, q_sample
from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas

X0Model = Callable[[Tensor, Tensor], Tensor]
"""`model(z_t, t) -> z0_hat`, with t the integer step of each sample, shape (B,)."""


def prior_betas(n_steps: int = 4, beta_start: float = 0.1, beta_end: float = 0.99) -> Tensor:
    """DiffIR's betas: sqrt(beta) evenly spaced from sqrt(0.1) to sqrt(0.99), squared (float64).
    T = 4 gives [0.1, 0.294, 0.591, 0.99]."""
    return make_betas("quad", n_steps, beta_start, beta_end)


def prior_gammas(n_steps: int = 4, beta_start: float = 0.1, beta_end: float = 0.99) -> Tensor:
    """gamma_t = prod_{i<=t} (1 - beta_i), t = 0..T-1 (gamma_{T-1} is about 0.0026 for T = 4)."""
    return gammas_from_betas(prior_betas(n_steps, beta_start, beta_end))


def noised_start(ipr: Tensor, gammas: Tensor, noise: Tensor) -> Tensor:
    """z_{T-1} ~ q(z_{T-1} | z_0 = ipr): the training chain's start (DDPM eq. 4 at the last step)."""
    gamma = gammas[-1].expand(ipr.shape[0])
    return q_sample(ipr, gamma, noise)


def reverse_chain(model: X0Model, z_start: Tensor, gammas: Tensor) -> list[Tensor]:
    """Run the T reverse steps from z_{T-1} down to z_0; returns [z_{T-2}, ..., z_0] (the last is the IPR).

    Each step: z0_hat = model(z_t, t), then z_{t-1} = posterior mean of q(z_{t-1} | z_t, z0_hat)
    (DDPM eq. 7), no noise. Gradients flow through every step unless the caller disables them.
    """
    z, states = z_start, []
    batch = z_start.shape[0]
    one = gammas.new_ones(())
    for t in reversed(range(len(gammas))):
        steps = torch.full((batch,), t, device=z.device, dtype=torch.long)
        z0_hat = model(z, steps)
        gamma_prev = gammas[t - 1] if t > 0 else one  # gamma before step 0 is 1: the mean is z0_hat
        z, _ = posterior(z0_hat, z, gammas[t].expand(batch), gamma_prev.expand(batch))
        states.append(z)
    return states
