"""SR3: super-resolution by a noise-predicting conditional DDPM (Saharia et al., 2021).

The network sees concat([bicubic-upsampled LR, noisy HR]) and the continuous noise level
sqrt(gamma); it is trained to predict the noise with an L1 or L2 loss at per-sample noise
levels drawn between neighbouring steps of the training schedule, and sampled with any
inference schedule (ancestral DDPM or DDIM) because it never sees an integer step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ir_lightning.degradations import bicubic_upsample
from ir_lightning.diffusion import gammas_from_betas, get_sampler, make_betas, noised_training_sample, respace
from ir_lightning.diffusion.deq import SOLVERS, run_chain, sr3_ddim_chain
from ir_lightning.methods.base import RestorationModule, adam
from ir_lightning.nets.unet import UNet
from lightning.pytorch.cli import OptimizerCallable


@dataclass
class NoiseSchedule:
    """A beta schedule: `kind` in linear / quad / cosine / const, `n_steps` steps from `linear_start` to `linear_end`."""

    kind: str = "linear"
    n_steps: int = 2000
    linear_start: float = 1e-6
    linear_end: float = 1e-2

    def gammas(self) -> Tensor:
        return gammas_from_betas(make_betas(self.kind, self.n_steps, self.linear_start, self.linear_end))

    @classmethod
    def of(cls, value: NoiseSchedule | dict | None) -> NoiseSchedule | None:
        """Accepts the dataclass or its dict (as stored in a checkpoint's hyperparameters)."""
        return cls(**value) if isinstance(value, dict) else value


def to_signed(x: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1], the range the diffusion works in."""
    return x * 2 - 1


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1)


class SR3(RestorationModule):
    """SR3 LightningModule.

    Args:
        net: the noise predictor, `net(concat([x_up, y_t]), sqrt(gamma)) -> eps_hat` (6 in, 3 out).
        scale: super-resolution factor (LR size x scale = HR size).
        train_schedule: the training noise schedule (SR3: linear 1e-6 .. 1e-2, T = 2000).
        inference_schedule: a separate schedule for sampling; None = the training schedule
            respaced to `sample_steps` evenly spaced steps.
        sample_steps: steps of the sampler when `inference_schedule` is None.
        sampler: "ddpm" (ancestral, the paper) or "ddim".
        eta: DDIM stochasticity (0 = deterministic).
        solver: how DDIM with eta = 0 runs: "sequential" (step after step), or "anderson" / "picard": the
            whole chain solved as one fixed point over all steps at once (`diffusion.deq`, DeqIR's parallel
            sampling; the same result, in fewer serial rounds where a batch of steps costs one call).
        solver_tolerance: the relative residual at which the parallel solver stops.
        loss: "l1" (the public code) or "l2" (the paper's p = 2) on the noise.
        clip_y0: clamp the predicted y0 to [-1, 1] at each sampling step.
        sample_seed: seed of the sampling noise at validation/test/predict, so the numbers of
            two evaluations of the same weights agree.
        optimizer, warmup_steps, crop_border, y_channel, max_nonfinite_steps: see `RestorationModule`.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        scale: int = 4,
        train_schedule: NoiseSchedule = NoiseSchedule(),
        inference_schedule: NoiseSchedule | None = None,
        sample_steps: int = 100,
        sampler: Literal["ddpm", "ddim"] = "ddpm",
        eta: float = 0.0,
        solver: Literal["sequential", "anderson", "picard"] = "sequential",
        solver_tolerance: float = 1e-3,
        loss: Literal["l1", "l2"] = "l1",
        clip_y0: bool = True,
        sample_seed: int = 0,
        optimizer: OptimizerCallable = adam,
        warmup_steps: int = 0,
        crop_border: int | None = None,
        y_channel: bool = True,
        max_nonfinite_steps: int = 20,
    ) -> None:
        super().__init__(
            optimizer, warmup_steps, scale if crop_border is None else crop_border, y_channel, max_nonfinite_steps
        )
        self.save_hyperparameters_as_plain_data(ignore=self.objects_kept_out_of_hparams("net", "optimizer"))
        train_schedule, inference_schedule = NoiseSchedule.of(train_schedule), NoiseSchedule.of(inference_schedule)
        self.net = net if net is not None else UNet()
        self.scale = scale
        self.loss_fn = {"l1": F.l1_loss, "l2": F.mse_loss}[loss]
        self.clip_y0, self.sample_seed = clip_y0, sample_seed
        # float64 schedules kept off the module's buffers: precision survives `.half()`/`bf16-true`,
        # and DDP has nothing to broadcast; `on_device` moves them to the device where they are used
        self.train_gammas = train_schedule.gammas()
        self.set_sampling(sampler, sample_steps, eta)
        if solver not in SOLVERS:
            raise ValueError(f"model.init_args.solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        if solver != "sequential" and (sampler != "ddim" or eta != 0):
            raise ValueError(f"model.init_args.solver={solver} solves DDIM with eta = 0 in parallel; "
                             f"got sampler={sampler!r}, eta={eta}")  # fmt: skip
        self.solver, self.solver_tolerance = solver, solver_tolerance
        if inference_schedule is not None:
            self.inference_gammas = inference_schedule.gammas()

    def set_sampling(self, sampler: str, sample_steps: int, eta: float = 0.0) -> None:
        """Choose the sampler and its number of steps (the training schedule respaced) for `restore`."""
        get_sampler(sampler)  # an unknown name fails here, naming the valid ones
        self.sampler_name, self.eta = sampler, eta
        self.inference_gammas = respace(self.train_gammas, sample_steps)


    def upsample(self, lq: Tensor, size: tuple[int, int] | None) -> Tensor:
        """The conditioning image x: bicubic up-sampling of the LR to the HR size."""
        if size is None:
            size = (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale)
        return bicubic_upsample(lq, size)

    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        lq, gt = self.require_lq(batch), batch["gt"]
        if gt.shape[-2:] != (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale):
            raise ValueError(
                f"SR3 x{self.scale}: gt {tuple(gt.shape[-2:])} is not {self.scale} x lq {tuple(lq.shape[-2:])}; "
                "model.init_args.scale and the degradation's (or the paired shards') scale must agree"
            )
        y0, x = to_signed(gt), to_signed(self.upsample(lq, gt.shape[-2:]))
        generator = self.training_generator()
        gammas = self.on_device(self.train_gammas, y0.device)
        y_noisy, level, noise = noised_training_sample(y0, gammas, generator)  # SR3 eq. 4, level = sqrt(gamma)
        eps_hat = self.net(torch.cat([x, y_noisy], dim=1), level)
        return self.loss_fn(eps_hat, noise)  # SR3 eq. 6, p = 1 or 2

    @torch.no_grad()
    def restore(self, lq: Tensor, size: tuple[int, int] | None = None, progress: bool = False) -> Tensor:
        x = to_signed(self.upsample(lq, size))
        generator = torch.Generator(device=x.device).manual_seed(self.sample_seed)
        y_T = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

        def eps_model(y_t: Tensor, level: Tensor) -> Tensor:
            return self.net(torch.cat([x, y_t.to(x.dtype)], dim=1), level.to(x.device))

        gammas = self.on_device(self.inference_gammas, x.device)
        if self.solver != "sequential" and self.sampler_name == "ddim" and self.eta == 0:
            def conditioned(y_t: Tensor, level: Tensor, condition: Tensor) -> Tensor:
                return self.net(torch.cat([condition, y_t.to(x.dtype)], dim=1), level.to(x.device))

            chain = sr3_ddim_chain(conditioned, gammas, clip_y0=self.clip_y0, condition=x)
            self.remember_solve(None)  # the previous report goes before this solve's memory is taken
            y0, result = run_chain(chain, y_T, self.solver, self.solver_tolerance, progress)
            self.remember_solve(result)
            return to_unit(y0)
        self.remember_solve(None)
        kwargs = {"eta": self.eta} if self.sampler_name == "ddim" else {}
        sampler = get_sampler(self.sampler_name)
        y0 = sampler(
            eps_model, y_T, gammas, generator=generator, clip_y0=self.clip_y0, progress=progress, **kwargs
        )
        return to_unit(y0)
