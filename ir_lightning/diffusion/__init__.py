"""Diffusion math in plain PyTorch: schedules, the Gaussian forward process, samplers and ranges (no Lightning).
RDDM, DiffIR's prior, the operators and the fixed-point solver (`deq`) are imported from their modules."""

from ir_lightning.diffusion.gaussian import (
    per_sample,
    posterior,
    predict_eps_from_y0,
    predict_y0_from_eps,
    q_sample,
)
from ir_lightning.diffusion.ranges import to_signed, to_unit
from ir_lightning.diffusion.samplers import (
    SAMPLERS,
    ddim_drift,
    ddim_sample,
    ddim_sigma,
    ddim_step,
    ddpm_sample,
    ddpm_step,
    get_sampler,
)
from ir_lightning.diffusion.schedules import (
    SCHEDULES,
    cosine_alpha_bar,
    gammas_from_betas,
    make_betas,
    noised_training_sample,
    respace,
    respaced_indices,
    respaced_timesteps,
    sample_noise_levels,
)

__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "cosine_alpha_bar",
    "ddim_drift",
    "ddim_sample",
    "ddim_sigma",
    "ddim_step",
    "ddpm_sample",
    "ddpm_step",
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
    "respaced_indices",
    "respaced_timesteps",
    "sample_noise_levels",
    "to_signed",
    "to_unit",
]
