"""Samplers for eps-predicting networks conditioned on the noise level sqrt(gamma) (SR3).

A sampler is a step function, `ddim_step` or `ddpm_step`: (y_t, eps_hat, gamma_t, gamma_prev, ...) ->
(y_prev, y0_hat), with per-sample levels of shape (B,), so the rows of one batch may sit at different steps
(the fixed-point solver of `ir_lightning.diffusion.deq` evaluates many steps in one call). The loops
`ddim_sample` and `ddpm_sample` and the chains of `deq.chains` are built on these steps. Every loop has the
signature

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

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from tqdm import tqdm

from ir_lightning.diffusion.gaussian import per_sample, posterior, predict_eps_from_y0, predict_y0_from_eps

Model = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor], None]
Sampler = Callable[..., Tensor]
X0Hook = Callable[[Tensor], Tensor]
"""`hook(y0_hat) -> y0_hat`: a change of the predicted clean image inside a step (DDNM's projection)."""
Step = Callable[[Tensor, Tensor, Tensor, Tensor, "Tensor | None"], tuple[Tensor, Tensor]]
"""`step(y_t, eps_hat, gamma_t, gamma_prev, noise) -> (y_prev, y0_hat)`, what `_sample` loops over."""


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


def gaussian_like(y: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like y, drawn only from `generator`."""
    device = generator.device if generator is not None else y.device
    return torch.randn(y.shape, generator=generator, dtype=y.dtype, device=device).to(y.device)


def _predicted_y0(y_t: Tensor, eps_hat: Tensor, gamma_t: Tensor, clip_y0: bool) -> Tensor:
    """y0_hat = (y_t - sqrt(1 - gamma_t) eps_hat) / sqrt(gamma_t) (DDPM eq. 15), optionally clamped to [-1, 1]."""
    y0_hat = predict_y0_from_eps(y_t, gamma_t, eps_hat)
    return y0_hat.clamp(-1.0, 1.0) if clip_y0 else y0_hat


def ddpm_step(
    y_t: Tensor,
    eps_hat: Tensor,
    gamma_t: Tensor,
    gamma_prev: Tensor,
    *,
    noise: Tensor | None = None,
    clip_y0: bool = True,
) -> tuple[Tensor, Tensor]:
    """One ancestral step (SR3 Algorithm 2) per sample from gamma_t to gamma_prev (each (B,)): (y_prev, y0_hat).

    y_prev = mean + sqrt(variance) z of the posterior q(y_prev | y_t, y0_hat) (DDPM eq. 6-7), z = `noise`
    (None: the mean, as at the last step, where gamma_prev = 1 and the variance is 0).
    """
    y0_hat = _predicted_y0(y_t, eps_hat, gamma_t, clip_y0)
    mean, variance = posterior(y0_hat, y_t, gamma_t, gamma_prev)
    if noise is None:
        return mean, y0_hat
    y_prev = mean + variance.sqrt() * noise
    return y_prev, y0_hat


def ddim_sigma(gamma_t: Tensor, gamma_prev: Tensor, eta: float) -> Tensor:
    """DDIM's noise scale sigma for a step gamma_t -> gamma_prev; eta = 1 gives the DDPM posterior std."""
    # sigma = eta sqrt((1 - gamma_prev) / (1 - gamma_t)) sqrt(1 - gamma_t / gamma_prev) (DDIM eq. 16)
    return eta * ((1.0 - gamma_prev) / (1.0 - gamma_t) * (1.0 - gamma_t / gamma_prev)).sqrt()


def _ddim_direction(gamma_t: Tensor, gamma_prev: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(sigma, sqrt(1 - gamma_prev - sigma^2)): the weights of z and eps_hat in DDIM's step (eq. 12)."""
    sigma = ddim_sigma(gamma_t, gamma_prev, eta)
    # clamp_min guards float round-off only: 1 - gamma_prev - sigma^2 >= 0 for eta <= 1
    return sigma, (1.0 - gamma_prev - sigma**2).clamp_min(0.0).sqrt()


def ddim_drift(gamma_t: Tensor, gamma_prev: Tensor, eta: float = 0.0) -> Tensor:
    """The weight of y_t in `ddim_step` with eps_hat written through y0_hat: sqrt(1 - gamma_prev - sigma^2) /
    sqrt(1 - gamma_t). The step is this times y_t plus terms in y0_hat and z only (DDIM eq. 12 with eq. 9)."""
    return _ddim_direction(gamma_t, gamma_prev, eta)[1] / (1.0 - gamma_t).sqrt()


def ddim_step(
    y_t: Tensor,
    eps_hat: Tensor,
    gamma_t: Tensor,
    gamma_prev: Tensor,
    *,
    eta: float = 0.0,
    noise: Tensor | None = None,
    clip_y0: bool = True,
    x0_hook: X0Hook | None = None,
) -> tuple[Tensor, Tensor]:
    """One DDIM step (Song et al. 2021) per sample from gamma_t to gamma_prev (each (B,)): (y_prev, y0_hat).

        y0_hat = (y_t - sqrt(1 - gamma_t) eps_hat) / sqrt(gamma_t), clamped to [-1, 1] if `clip_y0`   (eq. 9)
        eps_hat <- (y_t - sqrt(gamma_t) y0_hat) / sqrt(1 - gamma_t), the direction y0_hat implies
        y0_hat <- x0_hook(y0_hat)                                          (e.g. DDNM eq. 13; default none)
        y_prev = sqrt(gamma_prev) y0_hat + sqrt(1 - gamma_prev - sigma^2) eps_hat + sigma z            (eq. 12)

    with sigma = `ddim_sigma`(gamma_t, gamma_prev, eta) and z = `noise` (None: no noise term). y0_hat is the
    hooked prediction; gamma_prev = 1 lands on it.
    """
    y0_hat = _predicted_y0(y_t, eps_hat, gamma_t, clip_y0)
    eps_hat = predict_eps_from_y0(y_t, gamma_t, y0_hat)  # equals the model's eps unless y0_hat was clamped
    if x0_hook is not None:
        y0_hat = x0_hook(y0_hat)
    sigma, direction = _ddim_direction(gamma_t, gamma_prev, eta)
    # y_prev = sqrt(gamma_prev) y0_hat + sqrt(1 - gamma_prev - sigma^2) eps_hat + sigma z (DDIM eq. 12)
    y_prev = per_sample(gamma_prev.sqrt(), y_t) * y0_hat + per_sample(direction, y_t) * eps_hat
    if noise is not None:
        y_prev = y_prev + per_sample(sigma, y_t) * noise
    return y_prev, y0_hat


def _sample(
    model: Model,
    y_T: Tensor,
    gammas: Tensor,
    step: Step,
    noisy: bool,
    generator: torch.Generator | None,
    callback: Callback | None,
    progress: bool,
    name: str,
) -> Tensor:
    """The loop of every sampler: from the noisiest level of `gammas` down to gamma_0 = 1, one `step` each."""
    levels = inference_levels(gammas, y_T.device)
    batch = y_T.shape[0]
    y_t = y_T
    for i in _steps(levels.shape[0] - 1, progress, name):
        gamma_t, gamma_prev = levels[i + 1].expand(batch), levels[i].expand(batch)
        eps_hat = model(y_t, gamma_t.sqrt().to(torch.float32))  # the network sees sqrt(gamma) (SR3)
        # z ~ N(0, I) except at the last step, which lands on y0_hat (gamma_prev = 1)
        noise = gaussian_like(y_t, generator) if noisy and i > 0 else None
        y_prev, y0_hat = step(y_t, eps_hat, gamma_t, gamma_prev, noise)
        if callback is not None:
            callback(i, y_t, y0_hat)
        y_t = y_prev
    return y_t


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
    """Ancestral sampling (SR3 Algorithm 2): `ddpm_step` at every level."""

    def step(y_t: Tensor, eps_hat: Tensor, gamma_t: Tensor, gamma_prev: Tensor, noise: Tensor | None):
        return ddpm_step(y_t, eps_hat, gamma_t, gamma_prev, noise=noise, clip_y0=clip_y0)

    return _sample(model, y_T, gammas, step, True, generator, callback, progress, "ddpm")


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
    """DDIM (Song et al. 2021, eq. 12): `ddim_step` at every level; eta = 0 is deterministic, eta = 1 equals
    ancestral DDPM."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (0: DDIM, 1: DDPM variance), got {eta}")

    def step(y_t: Tensor, eps_hat: Tensor, gamma_t: Tensor, gamma_prev: Tensor, noise: Tensor | None):
        return ddim_step(y_t, eps_hat, gamma_t, gamma_prev, eta=eta, noise=noise, clip_y0=clip_y0)

    return _sample(model, y_T, gammas, step, eta > 0, generator, callback, progress, "ddim")


SAMPLERS: dict[str, Sampler] = {"ddpm": ddpm_sample, "ddim": ddim_sample}


def get_sampler(name: str) -> Sampler:
    """The sampler registered under `name` in `SAMPLERS`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]
