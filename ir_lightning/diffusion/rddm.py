"""Residual denoising diffusion (RDDM, Liu et al., CVPR 2024) in plain PyTorch: schedules, the
forward process, the posterior, the objectives' conversions and the samplers. No Lightning.

Images live in [-1, 1]; I_in is the degraded input, I_0 the target, I_res = I_in - I_0. Index t
runs over 0..T with t = 0 the clean image:

    I_t = I_0 + alpha_bar_t * I_res + beta_bar_t * eps,
    alpha_bar_t = sum_{i<=t} alpha_i  (alpha_bar_0 = 0, alpha_bar_T = 1),
    beta_bar_t^2 = sum_{i<=t} beta_i^2  (beta_bar_0 = 0, beta_bar_T^2 = sum_scale),

so I_T = I_in + beta_bar_T * eps: sampling starts from the degraded image plus noise (pure
noise when I_in = 0, for generation). A sampler walks down a path of (alpha_bar, beta_bar)
pairs to (0, 0); each step removes part of the predicted residual and part of the predicted
noise (the generalised DDIM step). Paths other than the schedule's own (residual first, then
noise, or the other way) need a network conditioned on the coefficients rather than on t.

Tensors of coefficients are float64; images keep their dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from ir_lightning.diffusion.samplers import gaussian_like
from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas, respaced_timesteps

SHAPES = ("decreased", "increased", "average")
"""Shapes of the per-step weights: linearly decreasing, linearly increasing (each to the power
`ratio`), or constant."""

OBJECTIVES = ("pred_res_noise", "pred_res", "pred_noise")

Predictor = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], tuple[Tensor, Tensor]]
"""`predict(I_t, alpha_bar_t, beta_bar_t, t) -> (I_res_hat, eps_hat)`: coefficients per sample
(float64, shape (B,)); `t` the integer step per sample, or None off the schedule's path."""


def step_weights(shape: str, n_steps: int, ratio: float = 1.0) -> Tensor:
    """Per-step weights w_1..w_T summing to 1 (float64).

    "increased": w_t proportional to t**ratio; "decreased": the same reversed (w_1 largest);
    "average": 1/T each. With ratio = 1 these are the official code's linear shapes,
    t / (T (T + 1) / 2) (its later variant, linspace(0, 1)**ratio, gives one step a zero weight
    and is not reproduced).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown schedule shape {shape!r}; valid shapes: {', '.join(SHAPES)}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    if shape == "average":
        return torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64)
    weights = torch.arange(1, n_steps + 1, dtype=torch.float64) ** ratio
    weights = weights / weights.sum()
    return weights.flip(0) if shape == "decreased" else weights


@dataclass(frozen=True)
class ResidualSchedule:
    """alpha_bar_t and beta_bar_t for t = 0..T (index 0: the clean image), float64 of shape (T+1,)."""

    alpha_bar: Tensor
    beta_bar: Tensor

    def __post_init__(self) -> None:
        a, b = self.alpha_bar, self.beta_bar
        if a.ndim != 1 or a.shape != b.shape or a.numel() < 2:
            raise ValueError(
                f"alpha_bar and beta_bar must be 1-D of equal length >= 2, got {tuple(a.shape)}, {tuple(b.shape)}"
            )
        if a[0] != 0 or b[0] != 0:
            raise ValueError("alpha_bar_0 and beta_bar_0 must be 0 (t = 0 is the clean image)")
        if not bool((b[1:] > b[:-1]).all()):
            raise ValueError("beta_bar must increase strictly with t")

    @property
    def n_steps(self) -> int:
        return self.alpha_bar.numel() - 1

    @classmethod
    def make(
        cls,
        n_steps: int = 1000,
        alpha_shape: str = "decreased",
        alpha_ratio: float = 1.0,
        beta2_shape: str = "increased",
        beta2_ratio: float = 1.0,
        sum_scale: float = 0.01,
    ) -> ResidualSchedule:
        """The official schedules: alpha_t by `alpha_shape` summing to 1, beta_t^2 by `beta2_shape`
        summing to `sum_scale` (the noise variance at T; 0.01 for restoration, 1 for generation)."""
        if sum_scale <= 0:
            raise ValueError(f"sum_scale must be positive, got {sum_scale}")
        zero = torch.zeros(1, dtype=torch.float64)
        alpha_bar = torch.cat([zero, step_weights(alpha_shape, n_steps, alpha_ratio).cumsum(0)])
        beta2_bar = torch.cat([zero, (step_weights(beta2_shape, n_steps, beta2_ratio) * sum_scale).cumsum(0)])
        alpha_bar[-1] = 1.0  # exactly, whatever the round-off of the sum
        return cls(alpha_bar, beta2_bar.sqrt())

    @classmethod
    def convert_to_ddim(
        cls, n_steps: int = 1000, linear_start: float = 1e-4, linear_end: float = 2e-2
    ) -> ResidualSchedule:
        """DDPM's linear beta schedule in RDDM's coefficients: alpha_bar_t = 1 - sqrt(gamma_t),
        beta_bar_t^2 = 1 - gamma_t with gamma_t = prod(1 - beta). With I_in = 0,
        I_t = sqrt(gamma_t) I_0 + sqrt(1 - gamma_t) eps: DDPM's q(x_t | x_0) exactly."""
        gammas = gammas_from_betas(make_betas("linear", n_steps, linear_start, linear_end))
        zero = torch.zeros(1, dtype=torch.float64)
        return cls(torch.cat([zero, 1.0 - gammas.sqrt()]), torch.cat([zero, (1.0 - gammas).sqrt()]))

    def at(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_bar_t, beta_bar_t) per sample for integer steps `t` (shape (B,)), on t's device."""
        index = t.to(self.alpha_bar.device).long()
        return self.alpha_bar[index].to(t.device), self.beta_bar[index].to(t.device)

    def sampling_times(self, n_steps: int) -> Tensor:
        """`n_steps` + 1 integer times from T down to 0, evenly spaced (`respaced_timesteps` of the T + 1
        times 0..T; T .. 0 when n_steps = T)."""
        if not 1 <= n_steps <= self.n_steps:
            raise ValueError(f"sampling steps must lie in [1, {self.n_steps}], got {n_steps}")
        return respaced_timesteps(self.n_steps + 1, n_steps + 1)


def q_sample(i_0: Tensor, i_res: Tensor, alpha_bar: Tensor, beta_bar: Tensor, noise: Tensor) -> Tensor:
    """I_t = I_0 + alpha_bar_t I_res + beta_bar_t eps (coefficients per sample)."""
    a, b = _column(alpha_bar, i_0), _column(beta_bar, i_0)
    return (i_0.double() + a * i_res.double() + b * noise.double()).to(i_0.dtype)


def posterior(
    i_t: Tensor, i_0: Tensor, i_res: Tensor, coeff_t: tuple[Tensor, Tensor], coeff_s: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(I_s | I_t, I_0, I_res) for s < t, from (alpha_bar, beta_bar) at t and s.

    With alpha_{t|s} = alpha_bar_t - alpha_bar_s and beta_{t|s}^2 = beta_bar_t^2 - beta_bar_s^2 (one
    step when s = t - 1: alpha_t and beta_t^2):
    mean = beta_bar_s^2/beta_bar_t^2 I_t + (beta_{t|s}^2 alpha_bar_s - beta_bar_s^2 alpha_{t|s})/beta_bar_t^2 I_res
           + beta_{t|s}^2/beta_bar_t^2 I_0,   variance = beta_{t|s}^2 beta_bar_s^2 / beta_bar_t^2.
    """
    (a_t, b_t), (a_s, b_s) = coeff_t, coeff_s
    b2_t, b2_s = b_t.double() ** 2, b_s.double() ** 2
    a_ts, b2_ts = a_t.double() - a_s.double(), b2_t - b2_s
    c_t, c_res, c_0 = b2_s / b2_t, (b2_ts * a_s.double() - b2_s * a_ts) / b2_t, b2_ts / b2_t
    mean = _column(c_t, i_t) * i_t.double() + _column(c_res, i_t) * i_res.double() + _column(c_0, i_t) * i_0.double()
    return mean.to(i_t.dtype), b2_ts * b2_s / b2_t


def eps_from_res(i_t: Tensor, i_in: Tensor, i_res: Tensor, alpha_bar: Tensor, beta_bar: Tensor) -> Tensor:
    """eps implied by I_res (objective pred_res): (I_t - I_in - (alpha_bar_t - 1) I_res) / beta_bar_t."""
    a, b = _column(alpha_bar, i_t), _column(beta_bar, i_t)
    return ((i_t.double() - i_in.double() - (a - 1.0) * i_res.double()) / b).to(i_t.dtype)


def res_from_eps(
    i_t: Tensor, i_in: Tensor, eps: Tensor, alpha_bar: Tensor, beta_bar: Tensor, clip: bool = True
) -> Tensor:
    """I_res implied by eps (objective pred_noise): I_0 = (I_t - alpha_bar_t I_in - beta_bar_t eps) / (1 - alpha_bar_t),
    I_res = I_in - I_0. At alpha_bar_t = 1 (t = T) I_t holds no trace of I_0: the denominator is
    floored at 1e-4 and I_0 clamped to [-1, 1] (`clip`), the official code's guard."""
    a, b = _column(alpha_bar, i_t), _column(beta_bar, i_t)
    i_0 = (i_t.double() - a * i_in.double() - b * eps.double()) / (1.0 - a).clamp_min(1e-4)
    if clip:
        i_0 = i_0.clamp(-1.0, 1.0)
    return (i_in.double() - i_0).to(i_t.dtype)


def ddim_step(
    i_t: Tensor,
    res_hat: Tensor,
    eps_hat: Tensor,
    coeff_t: tuple[Tensor, Tensor],
    coeff_s: tuple[Tensor, Tensor],
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One generalised DDIM step t -> s per sample (coefficients (B,) each): (I_s, I_0_hat).

        I_0_hat = I_t - alpha_bar_t I_res_hat - beta_bar_t eps_hat                  (the forward process solved)
        I_s = I_t - (alpha_bar_t - alpha_bar_s) I_res_hat - (beta_bar_t - sqrt(beta_bar_s^2 - sigma^2)) eps_hat
              + sigma z,
        sigma^2 = eta (beta_bar_t^2 - beta_bar_s^2) beta_bar_s^2 / beta_bar_t^2   (eta = 1: the posterior's variance)

    with z = `noise` (None: no noise term). s = 0 (alpha_bar_s = beta_bar_s = 0) lands on I_0_hat.
    """
    (a_t, b_t), (a_s, b_s) = coeff_t, coeff_s
    b2_t, b2_s = b_t.double() ** 2, b_s.double() ** 2
    sigma2 = eta * (b2_t - b2_s) * b2_s / b2_t.clamp_min(torch.finfo(torch.float64).tiny)
    keep = (b2_s - sigma2).clamp_min(0.0).sqrt()
    res, eps = res_hat.double(), eps_hat.double()
    i_0_hat = i_t.double() - _column(a_t, i_t) * res - _column(b_t, i_t) * eps
    out = i_t.double() - _column(a_t.double() - a_s.double(), i_t) * res - _column(b_t.double() - keep, i_t) * eps
    if eta > 0 and noise is not None:
        out = out + _column(sigma2.sqrt(), i_t) * noise.double()
    return out.to(i_t.dtype), i_0_hat.to(i_t.dtype)


def sample(
    predict: Predictor,
    i_in: Tensor,
    schedule: ResidualSchedule,
    n_steps: int,
    *,
    eta: float = 0.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Restore from I_in by `ddim_step` at `n_steps` times of the schedule (T .. 0, `sampling_times`).

    Starts from I_T = I_in + beta_bar_T * noise (`noise` given, else drawn from `generator`);
    eta = 0 is deterministic; with eta = 1 and n_steps = T each step draws from the posterior
    (ancestral sampling). The last step lands on I_0_hat.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    batch = i_in.shape[0]
    if noise is None:
        noise = gaussian_like(i_in, generator)
    beta_bar_T = schedule.beta_bar[-1].item()
    i_t = (i_in.double() + beta_bar_T * noise.double()).to(i_in.dtype)
    times = schedule.sampling_times(n_steps).to(i_in.device)
    for k in tqdm(range(n_steps), desc="rddm", disable=not progress):
        t, s = times[k].expand(batch), times[k + 1].expand(batch)
        coeff_t, coeff_s = schedule.at(t), schedule.at(s)
        res_hat, eps_hat = predict(i_t, *coeff_t, t)
        z = gaussian_like(i_t, generator) if eta > 0 and k < n_steps - 1 else None
        i_t, _ = ddim_step(i_t, res_hat, eps_hat, coeff_t, coeff_s, eta, z)
    return i_t


def path_independent_path(schedule: ResidualSchedule, n_res: int, n_noise: int, residual_first: bool = True) -> Tensor:
    """A path of (alpha_bar, beta_bar) pairs, shape (n_res + n_noise + 1, 2), from (1, beta_bar_T) to (0, 0)
    that removes the residual alone (beta_bar held at beta_bar_T) then the noise alone (alpha_bar at 0),
    or the other way round: the two orders of the paper's partially path-independent sampling."""
    if n_res < 1 or n_noise < 1:
        raise ValueError(f"each phase needs at least one step, got {n_res} and {n_noise}")
    a_T, b_T = schedule.alpha_bar[-1].item(), schedule.beta_bar[-1].item()
    a = torch.linspace(a_T, 0.0, n_res + 1, dtype=torch.float64)
    b = torch.linspace(b_T, 0.0, n_noise + 1, dtype=torch.float64)
    if residual_first:
        pairs = [(x, b_T) for x in a] + [(0.0, y) for y in b[1:]]
    else:
        pairs = [(a_T, y) for y in b] + [(x, 0.0) for x in a[1:]]
    return torch.tensor(pairs, dtype=torch.float64)


def sample_path(predict: Predictor, i_in: Tensor, path: Tensor, noise: Tensor) -> Tensor:
    """Deterministic (eta = 0) steps along a path of (alpha_bar, beta_bar) pairs from alpha_bar = 1
    (the only state known without I_res: I = I_in + beta_bar * noise) to (0, 0). The network is
    called with t = None: off the schedule's path it must be conditioned on the coefficients."""
    if path.ndim != 2 or path.shape[1] != 2 or path.shape[0] < 2:
        raise ValueError(f"path must have shape (K + 1, 2) with K >= 1, got {tuple(path.shape)}")
    if abs(path[0, 0].item() - 1.0) > 1e-12 or path[-1].abs().max().item() > 1e-12:
        raise ValueError("a path starts at alpha_bar = 1 (the degraded input) and ends at (0, 0)")
    batch = i_in.shape[0]
    path = path.to(device=i_in.device, dtype=torch.float64)
    i_t = (i_in.double() + path[0, 1] * noise.double()).to(i_in.dtype)
    for k in range(path.shape[0] - 1):
        coeff_t = (path[k, 0].expand(batch), path[k, 1].expand(batch))
        coeff_s = (path[k + 1, 0].expand(batch), path[k + 1, 1].expand(batch))
        res_hat, eps_hat = predict(i_t, *coeff_t, None)
        i_t, _ = ddim_step(i_t, res_hat, eps_hat, coeff_t, coeff_s)
    return i_t


def _column(values: Tensor, like: Tensor) -> Tensor:
    """Per-sample values (B,) as float64 of shape (B, 1, ..., 1) on `like`'s device (the images are
    cast to float64 where they meet them, and back at the end)."""
    shape = (like.shape[0],) + (1,) * (like.ndim - 1)
    return values.to(device=like.device, dtype=torch.float64).reshape(shape)
