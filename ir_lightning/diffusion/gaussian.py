"""The Gaussian forward process of SR3/DDPM, written with gammas so any (respaced) schedule works.

Every function takes a per-sample `gamma` of shape (B,) (float64 preferred) and broadcasts it over
images of shape B x C x H x W (any trailing dimensions). Coefficients are computed in float64 and
cast to the image dtype only when multiplied with an image.
"""

from __future__ import annotations

import torch
from torch import Tensor


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample values (B,) to (B, 1, ..., 1) in the dtype and on the device of `like`."""
    shape = (like.shape[0],) + (1,) * (like.ndim - 1)
    return values.reshape(shape).to(device=like.device, dtype=like.dtype)


def _as_float64(gamma: Tensor) -> Tensor:
    return gamma.to(torch.float64)


def q_sample(y0: Tensor, gamma: Tensor, noise: Tensor) -> Tensor:
    """Draw y_gamma ~ q(y_gamma | y0) given the standard normal `noise`."""
    gamma = _as_float64(gamma)
    # y_gamma = sqrt(gamma) y0 + sqrt(1 - gamma) eps (SR3 eq. 4)
    return per_sample(gamma.sqrt(), y0) * y0 + per_sample((1.0 - gamma).sqrt(), y0) * noise


def predict_y0_from_eps(y_t: Tensor, gamma: Tensor, eps: Tensor) -> Tensor:
    """The y0 for which `q_sample(y0, gamma, eps)` equals y_t."""
    gamma = _as_float64(gamma)
    # y0 = (y_t - sqrt(1 - gamma) eps) / sqrt(gamma) (SR3 eq. 4 solved for y0; DDPM eq. 15)
    return per_sample(gamma.rsqrt(), y_t) * y_t - per_sample(((1.0 - gamma) / gamma).sqrt(), y_t) * eps


def predict_eps_from_y0(y_t: Tensor, gamma: Tensor, y0: Tensor) -> Tensor:
    """The eps for which `q_sample(y0, gamma, eps)` equals y_t (requires gamma < 1)."""
    gamma = _as_float64(gamma)
    # eps = (y_t - sqrt(gamma) y0) / sqrt(1 - gamma) (SR3 eq. 4 solved for eps)
    return per_sample((1.0 - gamma).rsqrt(), y_t) * y_t - per_sample((gamma / (1.0 - gamma)).sqrt(), y_t) * y0


def posterior(y0: Tensor, y_t: Tensor, gamma_t: Tensor, gamma_prev: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(y_{t-1} | y_t, y0) between two levels gamma_t < gamma_prev.

    The step's alpha_t = gamma_t / gamma_prev and beta_t = 1 - alpha_t are derived from the two
    levels, so the formula holds for respaced schedules too. gamma_prev = 1 (gamma_0) gives mean y0
    and variance 0. The variance has shape (B, 1, ..., 1) in the dtype of `y_t`.
    """
    gamma_t, gamma_prev = _as_float64(gamma_t), _as_float64(gamma_prev)
    alpha_t = gamma_t / gamma_prev
    beta_t = 1.0 - alpha_t
    # mu = sqrt(gamma_prev) beta_t / (1 - gamma_t) y0 + sqrt(alpha_t) (1 - gamma_prev) / (1 - gamma_t) y_t (DDPM eq. 7)
    coef_y0 = gamma_prev.sqrt() * beta_t / (1.0 - gamma_t)
    coef_y_t = alpha_t.sqrt() * (1.0 - gamma_prev) / (1.0 - gamma_t)
    mean = per_sample(coef_y0, y_t) * y0 + per_sample(coef_y_t, y_t) * y_t
    # beta_tilde = (1 - gamma_prev) / (1 - gamma_t) beta_t (DDPM eq. 7)
    variance = (1.0 - gamma_prev) / (1.0 - gamma_t) * beta_t
    return mean, per_sample(variance, y_t)
