"""Diffusion math in plain PyTorch: schedules, the Gaussian forward process and samplers (no Lightning)."""

from ir_lightning.diffusion.gaussian import (
    per_sample,
    posterior,
    predict_eps_from_y0,
    predict_y0_from_eps,
    q_sample,
)
from ir_lightning.diffusion.samplers import SAMPLERS, ddim_sample, ddim_sigma, ddpm_sample, get_sampler
from ir_lightning.diffusion.schedules import (
    SCHEDULES,
    cosine_alpha_bar,
    gammas_from_betas,
    make_betas,
    noised_training_sample,
    respace,
    sample_noise_levels,
)

__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "cosine_alpha_bar",
    "ddim_sample",
    "ddim_sigma",
    "ddpm_sample",
    "gammas_from_betas",
    "get_sampler",
    "make_betas",
    "noised_training_sample",
    "per_sample",
    "posterior",
    "predict_eps_from_y0",
    "predict_y0_from_eps",
    "q_sample",
    "respace",
    "sample_noise_levels",
]
