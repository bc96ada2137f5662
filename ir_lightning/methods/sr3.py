"""SR3: super-resolution by a noise-predicting conditional DDPM (Saharia et al., 2021).

The network sees concat([bicubic-upsampled LR, noisy HR]) and the continuous noise level
sqrt(gamma); it is trained to predict the noise with an L1 or L2 loss at per-sample noise
levels drawn between neighbouring steps of the training schedule, and sampled with any
inference schedule (ancestral DDPM or DDIM) because it never sees an integer step.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ir_lightning.degradations import bicubic_upsample
from ir_lightning.diffusion import get_sampler, noised_training_sample, respace
from ir_lightning.diffusion.deq import run_chain, sr3_ddim_chain
from ir_lightning.diffusion.ranges import to_signed, to_unit
from ir_lightning.methods.base import Restoration, RestorationModule
from ir_lightning.methods.settings import NoiseSchedule, Sampling, check_sampler, upgrade_sampling

__all__ = ["SR3", "NoiseSchedule", "to_signed", "to_unit"]  # the last three: their old home, kept importable


class SR3(RestorationModule):
    """SR3 LightningModule.

    Args:
        net: the noise predictor, `net(concat([x_up, y_t]), sqrt(gamma)) -> eps_hat` (6 in, 3 out).
        scale: super-resolution factor (LR size x scale = HR size).
        train_schedule: the training noise schedule (SR3: linear 1e-6 .. 1e-2, T = 2000).
        inference_schedule: a separate schedule for sampling; None = the training schedule
            respaced to `sampling.steps` evenly spaced steps.
        sampling: the sampler ("ddpm": ancestral, the paper; or "ddim" with `eta`), its steps, seed (so the
            numbers of two evaluations of the same weights agree), `clip` (clamp the predicted y0 to [-1, 1] at
            each step) and `solver` (DDIM with eta = 0 may be solved as one fixed point over all steps:
            `diffusion.deq`, DeqIR's parallel sampling; the same result in fewer serial rounds).
        loss: "l1" (the public code) or "l2" (the paper's p = 2) on the noise.
        offset_noise: std of a constant per sample and channel added to the training noise (offset noise; 0: the
            paper's white noise). White noise's mean over a crop weighs almost nothing in the loss, and at high
            noise the image's colour is mostly that mean: with it in the loss the network must read the colour
            from its input there, where a noise-predicting loss weighs the clean-image estimate by gamma /
            (1 - gamma), almost nothing (docs/models.md, "Why SR3's colours drifted": the shipped SR3 trains
            with 0.1).
        crop_border: pixels cropped before PSNR/SSIM; None = the scale.
        **kwargs: `RestorationModule`'s (optimizer, warmup_steps, y_channel, max_nonfinite_steps).
    """

    SAMPLERS = ("ddpm", "ddim")
    DEFAULT_SAMPLING = Sampling(steps=100, sampler="ddpm")

    def __init__(
        self,
        net: nn.Module,
        scale: int = 4,
        train_schedule: NoiseSchedule = NoiseSchedule(),
        inference_schedule: NoiseSchedule | None = None,
        sampling: Sampling = DEFAULT_SAMPLING,
        loss: Literal["l1", "l2"] = "l1",
        crop_border: int | None = None,
        offset_noise: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if isinstance(offset_noise, bool) or not isinstance(offset_noise, (int, float)) or not offset_noise >= 0:
            raise ValueError(f"model.init_args.offset_noise must be a number >= 0, got {offset_noise!r}")
        super().__init__(crop_border=scale if crop_border is None else crop_border, **kwargs)
        self.save_hyperparameters_as_plain_data(ignore=self.objects_kept_out_of_hparams("net", "optimizer"))
        train_schedule, inference_schedule = NoiseSchedule.of(train_schedule), NoiseSchedule.of(inference_schedule)
        self.net = net
        self.scale = scale
        self.loss_fn = {"l1": F.l1_loss, "l2": F.mse_loss}[loss]
        self.offset_noise = float(offset_noise)
        # float64 schedules kept off the module's buffers: precision survives `.half()`/`bf16-true`,
        # and DDP has nothing to broadcast; `on_device` moves them to the device where they are used
        self.train_gammas = train_schedule.gammas()
        self.sampling = check_sampler(Sampling.of(sampling), self.SAMPLERS, "SR3")
        self.inference_schedule_gammas = None if inference_schedule is None else inference_schedule.gammas()

    @property
    def inference_gammas(self) -> Tensor:
        """The sampler's levels: the inference schedule's, or the training schedule respaced to `sampling.steps`."""
        if self.inference_schedule_gammas is not None:
            return self.inference_schedule_gammas
        return respace(self.train_gammas, self.sampling.steps)

    @classmethod
    def upgrade_hyperparameters(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        return upgrade_sampling(hparams, cls.DEFAULT_SAMPLING)

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
        y_noisy, level, noise = noised_training_sample(y0, gammas, generator, self.offset_noise)  # SR3 eq. 4
        eps_hat = self.net(torch.cat([x, y_noisy], dim=1), level)
        return self.loss_fn(eps_hat, noise)  # SR3 eq. 6, p = 1 or 2

    @torch.no_grad()
    def restoration(
        self, lq: Tensor, *, size: tuple[int, int] | None = None, mask: Tensor | None = None, progress: bool = False
    ) -> Restoration:
        self.no_mask(mask)
        x = to_signed(self.upsample(lq, size))
        generator = torch.Generator(device=x.device).manual_seed(self.sampling.seed)
        y_T = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        gammas = self.on_device(self.inference_gammas, x.device)
        if self.sampling.parallel:

            def conditioned(y_t: Tensor, level: Tensor, condition: Tensor) -> Tensor:
                return self.net(torch.cat([condition, y_t.to(x.dtype)], dim=1), level.to(x.device))

            chain = sr3_ddim_chain(conditioned, gammas, clip_y0=self.sampling.clip, condition=x)
            y0, result = run_chain(chain, y_T, self.sampling.solver, progress)
            return Restoration.of(to_unit(y0), result)

        def eps_model(y_t: Tensor, level: Tensor) -> Tensor:
            return self.net(torch.cat([x, y_t.to(x.dtype)], dim=1), level.to(x.device))

        kwargs = {"eta": self.sampling.eta} if self.sampling.sampler == "ddim" else {}
        sampler = get_sampler(self.sampling.sampler)
        y0 = sampler(
            eps_model, y_T, gammas, generator=generator, clip_y0=self.sampling.clip, progress=progress, **kwargs
        )
        return Restoration(to_unit(y0))
