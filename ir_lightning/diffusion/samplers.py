"""Samplers for eps-predicting networks conditioned on the noise level sqrt(gamma) (SR3).

Every sampler has the signature

    sampler(model, y_T, gammas, *, generator=None, clip_y0=True, callback=None, progress=False)

- `model(y_t, noise_level) -> eps_hat` with noise_level = sqrt(gamma), float32 of shape (B,); the caller
  wraps any conditioning, e.g. `lambda y, lvl: net(torch.cat([x_up, y], 1), lvl)`.
- `gammas` is the inference schedule, 1-D, strictly decreasing from index 0 (least noisy) to the last
  entry (noisiest), e.g. from `gammas_from_betas` or `respace`. Sampling runs from the last entry down to
  the first and then one step more, to gamma_0 = 1, which returns the predicted y0.
- `clip_y0` clamps the predicted y0 to [-1, 1] at each step (SR3).
- `callback(i, y_t, y0_hat)` is called at each step with i the index into `gammas` (counting down).
- All randomness comes from `generator`, so a seeded generator reproduces a run.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor
from tqdm import tqdm

from ir_lightning.diffusion.gaussian import per_sample, posterior, predict_eps_from_y0, predict_y0_from_eps

Model = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor], None]
Sampler = Callable[..., Tensor]


def inference_levels(gammas: Tensor, device: torch.device) -> Tensor:
    """Check the schedule and return [gamma_0 = 1, gamma_1, ..., gamma_N] as float64 on `device`."""
    gammas = gammas.detach().to(torch.float64)
    if gammas.ndim != 1 or gammas.numel() == 0:
        raise ValueError(f"gammas must be a non-empty 1-D tensor, got shape {tuple(gammas.shape)}")
    if not bool(((gammas > 0) & (gammas < 1)).all()) or not bool((gammas[1:] < gammas[:-1]).all()):
        raise ValueError("gammas must lie in (0, 1) and decrease strictly from index 0 to the last entry")
    return torch.cat([gammas.new_ones(1), gammas]).to(device)


def _steps(n_steps: int, progress: bool, name: str) -> Iterable[int]:
    """Indices into the schedule from the noisiest (n_steps - 1) down to 0, optionally with a bar."""
    return tqdm(range(n_steps - 1, -1, -1), total=n_steps, desc=name, disable=not progress)


def predicted_y0(model: Model, y_t: Tensor, gamma_t: Tensor, clip_y0: bool) -> Tensor:
    """y0_hat from the network's eps_hat at level gamma_t (per sample, float64), optionally clamped."""
    eps_hat = model(y_t, gamma_t.sqrt().to(torch.float32))
    y0_hat = predict_y0_from_eps(y_t, gamma_t, eps_hat)
    return y0_hat.clamp(-1.0, 1.0) if clip_y0 else y0_hat


def gaussian_like(y: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like y, drawn only from `generator`."""
    device = generator.device if generator is not None else y.device
    return torch.randn(y.shape, generator=generator, dtype=y.dtype, device=device).to(y.device)


def ddpm_sample(
    model: Model,
    y_T: Tensor,
    gammas: Tensor,
    *,
    generator: torch.Generator | None = None,
    clip_y0: bool = True,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral sampling (SR3 Algorithm 2) with the posterior q(y_{t-1} | y_t, y0_hat) of DDPM eq. 6-7."""
    levels = inference_levels(gammas, y_T.device)
    batch = y_T.shape[0]
    y_t = y_T
    for i in _steps(levels.shape[0] - 1, progress, "ddpm"):
        gamma_t, gamma_prev = levels[i + 1].expand(batch), levels[i].expand(batch)
        y0_hat = predicted_y0(model, y_t, gamma_t, clip_y0)
        if callback is not None:
            callback(i, y_t, y0_hat)
        mean, variance = posterior(y0_hat, y_t, gamma_t, gamma_prev)
        # z ~ N(0, I) except at the last step, where gamma_prev = 1 and the variance is 0 (SR3 Alg. 2)
        z = gaussian_like(y_t, generator) if i > 0 else torch.zeros_like(y_t)
        y_t = mean + variance.sqrt() * z
    return y_t


def ddim_sigma(gamma_t: Tensor, gamma_prev: Tensor, eta: float) -> Tensor:
    """DDIM's noise scale sigma for a step gamma_t -> gamma_prev; eta = 1 gives the DDPM posterior std."""
    # sigma = eta sqrt((1 - gamma_prev) / (1 - gamma_t)) sqrt(1 - gamma_t / gamma_prev) (DDIM eq. 16)
    return eta * ((1.0 - gamma_prev) / (1.0 - gamma_t) * (1.0 - gamma_t / gamma_prev)).sqrt()


def ddim_sample(
    model: Model,
    y_T: Tensor,
    gammas: Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_y0: bool = True,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 equals ancestral DDPM."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (0: DDIM, 1: DDPM variance), got {eta}")
    levels = inference_levels(gammas, y_T.device)
    batch = y_T.shape[0]
    y_t = y_T
    for i in _steps(levels.shape[0] - 1, progress, "ddim"):
        gamma_t, gamma_prev = levels[i + 1].expand(batch), levels[i].expand(batch)
        y0_hat = predicted_y0(model, y_t, gamma_t, clip_y0)
        # the direction to y_t implied by y0_hat; equals the model's eps unless y0_hat was clamped
        eps_hat = predict_eps_from_y0(y_t, gamma_t, y0_hat)
        if callback is not None:
            callback(i, y_t, y0_hat)
        sigma = ddim_sigma(gamma_t, gamma_prev, eta)
        # clamp_min guards float round-off only: 1 - gamma_prev - sigma^2 >= 0 for eta <= 1
        direction = (1.0 - gamma_prev - sigma**2).clamp_min(0.0).sqrt()
        z = gaussian_like(y_t, generator) if i > 0 and eta > 0 else torch.zeros_like(y_t)
        # y_prev = sqrt(gamma_prev) y0_hat + sqrt(1 - gamma_prev - sigma^2) eps_hat + sigma z (DDIM eq. 12)
        y_t = per_sample(gamma_prev.sqrt(), y_t) * y0_hat + per_sample(direction, y_t) * eps_hat
        y_t = y_t + per_sample(sigma, y_t) * z
    return y_t


SAMPLERS: dict[str, Sampler] = {"ddpm": ddpm_sample, "ddim": ddim_sample}


def get_sampler(name: str) -> Sampler:
    """The sampler registered under `name` in `SAMPLERS`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]
