"""Noise schedules in SR3 notation.

beta_t is the variance added at step t, alpha_t = 1 - beta_t and gamma_t = prod_{i<=t} alpha_i
(DDPM's alpha_bar_t), with gamma_0 = 1. A schedule is a 1-D float64 tensor indexed from the least
noisy step (index 0 holds gamma_1) to the noisiest (index T-1 holds gamma_T). Everything here
stays in float64; callers cast to the image dtype only where a coefficient meets an image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ir_lightning.diffusion.gaussian import q_sample

COSINE_OFFSET = 0.008
"""s of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), which keeps beta_1 from being tiny."""

COSINE_MAX_BETA = 0.999
"""Upper clip of the cosine betas (Nichol & Dhariwal 2021, below eq. 17), avoiding beta_T = 1."""


def _linear(n_steps: int, linear_start: float, linear_end: float) -> Tensor:
    # beta_t evenly spaced from start to end (DDPM sec. 4; SR3 uses 1e-6..1e-2 over T=2000)
    return torch.linspace(linear_start, linear_end, n_steps, dtype=torch.float64)


def _quad(n_steps: int, linear_start: float, linear_end: float) -> Tensor:
    # sqrt(beta_t) evenly spaced, then squared (the "quad" schedule of the DDPM/SR3 code bases)
    roots = torch.linspace(math.sqrt(linear_start), math.sqrt(linear_end), n_steps, dtype=torch.float64)
    return roots**2


def _cosine(n_steps: int, linear_start: float, linear_end: float) -> Tensor:
    del linear_start, linear_end  # the cosine schedule has no free endpoints
    gammas = cosine_alpha_bar(torch.arange(n_steps + 1, dtype=torch.float64) / n_steps)
    # beta_t = 1 - alpha_bar(t) / alpha_bar(t-1), clipped (Nichol & Dhariwal eq. 17 and below)
    return (1.0 - gammas[1:] / gammas[:-1]).clamp(max=COSINE_MAX_BETA)


def _const(n_steps: int, linear_start: float, linear_end: float) -> Tensor:
    del linear_start  # a constant schedule uses the end value throughout
    return torch.full((n_steps,), linear_end, dtype=torch.float64)


_BETA_SCHEDULES: dict[str, Callable[[int, float, float], Tensor]] = {
    "linear": _linear,
    "quad": _quad,
    "cosine": _cosine,
    "const": _const,
}
SCHEDULES: tuple[str, ...] = tuple(_BETA_SCHEDULES)
"""Valid values of `make_betas(schedule=...)`."""


def cosine_alpha_bar(tau: Tensor) -> Tensor:
    """alpha_bar at fractional time tau = t/T of the cosine schedule, normalised so alpha_bar(0) = 1."""
    f = torch.cos((tau + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2  # N&D eq. 17, f(t)
    f0 = math.cos(COSINE_OFFSET / (1 + COSINE_OFFSET) * math.pi / 2) ** 2  # f(0)
    return f / f0


def make_betas(schedule: str, n_steps: int, linear_start: float = 1e-6, linear_end: float = 1e-2) -> Tensor:
    """beta_1..beta_T as a float64 tensor of shape (n_steps,).

    `schedule` is one of `SCHEDULES`: "linear" (linspace start..end), "quad" (linspace of the square
    roots, squared), "cosine" (Nichol & Dhariwal, s = 0.008, clipped at 0.999; start and end are
    ignored) or "const" (every beta equals `linear_end`). The defaults are SR3's training schedule.
    """
    if schedule not in _BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {schedule!r}; valid kinds: {', '.join(SCHEDULES)}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    return _BETA_SCHEDULES[schedule](n_steps, linear_start, linear_end)


def gammas_from_betas(betas: Tensor) -> Tensor:
    """gamma_t = prod_{i<=t} (1 - beta_i) for t = 1..T, float64 (SR3 sec. 2.1; DDPM's alpha_bar)."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def respaced_indices(n_train: int, n_steps: int) -> Tensor:
    """`n_steps` evenly spaced, strictly increasing indices into a schedule of `n_train` entries (int64).

    The k-th index counted from the last is n_train - 1 - round(k (n_train - 1) / (n_steps - 1)), halves
    rounded up, in exact integer arithmetic: the last (noisiest) entry is always kept and, for n_steps >= 2,
    the first (DDIM's sub-sequence, Song et al. 2021 sec. 4.2). The one respacing of the suite: `respace`,
    `respaced_timesteps` and RDDM's `ResidualSchedule.sampling_times` are built on it.
    """
    if not 1 <= n_steps <= n_train:
        raise ValueError(f"n_steps must lie in [1, {n_train}] for a schedule of {n_train} steps, got {n_steps}")
    from_last = torch.arange(n_steps, dtype=torch.int64)
    # distance from the last index: round(k * (T-1)/(n-1)), in exact integer arithmetic
    offsets = (2 * from_last * (n_train - 1) + (n_steps - 1)) // (2 * max(n_steps - 1, 1))
    return (n_train - 1 - offsets).flip(0)


def respace(gammas: Tensor, n_steps: int) -> Tensor:
    """The sub-sequence of a training schedule at `respaced_indices`, float64, for faster inference.

    Since the SR3 network is conditioned on sqrt(gamma) rather than on t, the result can be fed to any
    sampler as is.
    """
    if gammas.ndim != 1:
        raise ValueError(f"gammas must be 1-D, got shape {tuple(gammas.shape)}")
    indices = respaced_indices(gammas.shape[0], n_steps)
    return gammas.to(torch.float64)[indices.to(gammas.device)]


def respaced_timesteps(n_train: int, n_steps: int) -> Tensor:
    """`respaced_indices` as integer timesteps in the order a sampler visits them: n_train - 1 first, 0 last."""
    return respaced_indices(n_train, n_steps).flip(0)


def official_timesteps(n_train: int, n_steps: int, start: int | None = None) -> Tensor:
    """DeqIR's and DDNM's timesteps (int64), in the order a sampler visits them: every skip-th step of
    [0, start) with skip = start // n_steps, noisiest first, down to 0; e.g. 960, 920, ..., 40, 0 for
    n_train = 1000, n_steps = 25 (ours, `respaced_timesteps`: 999, 957, ..., 0).

    `start` (None: n_train) is DeqIR's --start_timesteps (caojiezhang/DeqIR runners/diffusion.py:430-451,
    `get_timestep_sequence_sr` with skip_type "uniform": range(0, start, skip), its last entry dropped when
    start % n_steps != 0). DDNM (wyhuai/DDNM functions/svd_ddnm.py:23-38, no time travel) visits
    (n_steps - 1) skip, ..., skip, 0 with skip = n_train // n_steps. Both are the first n_steps entries of
    range(0, start, skip), which this returns; where DeqIR's list would not have n_steps entries (start % n_steps
    > skip, e.g. 300 steps of 1000) the official run fails, and this gives DDNM's. The step after the last goes
    to alpha_bar = 1 (the official `compute_alpha` at t = -1), as every chain of the suite does.
    """
    start = n_train if start is None else start
    if not 1 <= n_steps <= start <= n_train:
        raise ValueError(
            f"official timesteps need 1 <= n_steps <= start <= n_train, got n_steps={n_steps}, start={start}, "
            f"n_train={n_train}"
        )
    return torch.arange(0, start, start // n_steps, dtype=torch.int64)[:n_steps].flip(0)


def sample_noise_levels(
    gammas: Tensor,
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """SR3 training noise levels sqrt(gamma), one per sample, as float32 of shape (batch,).

    Per sample, draw t ~ U{1, ..., T} and then gamma ~ U(gamma_{t-1}, gamma_t) with gamma_0 = 1,
    so gamma is uniform within the interval between two neighbouring levels of the training schedule
    (SR3 sec. 2.4). Two deliberate differences from the public SR3 re-implementation: t is drawn
    for every sample (that code draws one t per batch), and gamma itself is uniform as in the paper
    (that code draws sqrt(gamma) uniformly). The result is the noise level the network sees.
    """
    source = generator.device if generator is not None else torch.device(device or "cpu")
    # gamma_0 = 1 prepended, so levels[t] = gamma_t for t = 0..T
    gammas = gammas.detach().to(device=source, dtype=torch.float64)  # no host round trip for a GPU schedule
    levels = torch.cat([gammas.new_ones(1), gammas])
    t = torch.randint(1, levels.shape[0], (batch,), generator=generator, device=source)
    u = torch.rand(batch, generator=generator, device=source, dtype=torch.float64)
    # gamma ~ U(gamma_{t-1}, gamma_t) (SR3 sec. 2.4); u in [0, 1) gives gamma in (gamma_t, gamma_{t-1}]
    gamma = levels[t - 1] + u * (levels[t] - levels[t - 1])
    return gamma.sqrt().to(device=device or source, dtype=torch.float32)


def noised_training_sample(
    y0: Tensor, gammas: Tensor, generator: torch.Generator | None = None, offset: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """One training draw of a noise-predicting model: (y_noisy, level, noise).

    `level` = sqrt(gamma) per sample from :func:`sample_noise_levels`, noise ~ N(0, I) shaped like y0,
    y_noisy = sqrt(gamma) y0 + sqrt(1 - gamma) noise (`q_sample`), all drawn from `generator` in that
    order; `gammas` and the generator on y0's device. SR3, Denoising as Adaptation's D and the unconditional prior of
    DeqIR train on it.

    `offset` > 0 adds to the noise a constant per sample and channel drawn from N(0, offset^2), drawn last (offset
    noise): the noise's mean per channel then weighs in the loss (with white noise alone its variance is 1 / (H W),
    too little for a network to learn it), so the network must tell the image's colour from the noise's where
    the noise dominates (docs/models.md, "Why SR3's colours drifted").
    """
    level = sample_noise_levels(gammas, y0.shape[0], generator=generator)
    noise = torch.randn(y0.shape, generator=generator, device=y0.device, dtype=y0.dtype)
    if offset > 0:
        shape = (*y0.shape[:2], *([1] * (y0.ndim - 2)))
        noise = noise + offset * torch.randn(shape, generator=generator, device=y0.device, dtype=y0.dtype)
    return q_sample(y0, level.double() ** 2, noise), level, noise
