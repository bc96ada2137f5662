"""RDDM: residual denoising diffusion (Liu et al., CVPR 2024), few-step restoration.

The forward process moves the target I_0 towards the degraded input I_in (the residual
I_res = I_in - I_0) while adding noise, so sampling starts from the degraded image plus a little
noise and needs few steps (2 to 5 in the paper's restoration experiments). The network sees
concat([I_t, I_in]) (and a mask channel for shadow removal) and the step t or the coefficients
(alpha_bar_t, beta_bar_t); it predicts I_res and eps (`pred_res_noise`), or one of them. The math
is in `ir_lightning.diffusion.rddm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ir_lightning.degradations import bicubic_upsample
from ir_lightning.diffusion.deq import rddm_chain, run_chain
from ir_lightning.diffusion.ranges import to_signed, to_unit
from ir_lightning.diffusion.rddm import OBJECTIVES, ResidualSchedule, eps_from_res, q_sample, res_from_eps, sample
from ir_lightning.diffusion.samplers import gaussian_like
from ir_lightning.methods.base import Restoration, RestorationModule
from ir_lightning.methods.settings import Sampling, check_sampler, upgrade_sampling


@dataclass
class RDDMSchedule:
    """The residual and noise schedules (see `ResidualSchedule.make`); `convert_to_ddim` replaces
    both by DDPM's linear beta schedule (1e-4 .. 0.02) in RDDM's coefficients."""

    n_steps: int = 1000
    alpha_shape: str = "decreased"
    alpha_ratio: float = 1.0
    beta2_shape: str = "increased"
    beta2_ratio: float = 1.0
    sum_scale: float = 0.01
    convert_to_ddim: bool = False

    def build(self) -> ResidualSchedule:
        if self.convert_to_ddim:
            return ResidualSchedule.convert_to_ddim(self.n_steps)
        return ResidualSchedule.make(
            self.n_steps, self.alpha_shape, self.alpha_ratio, self.beta2_shape, self.beta2_ratio, self.sum_scale
        )

    @classmethod
    def of(cls, value: RDDMSchedule | dict) -> RDDMSchedule:
        return cls(**value) if isinstance(value, dict) else value


class RDDM(RestorationModule):
    """RDDM LightningModule.

    Args:
        net: `net(x, cond)` with x = concat([I_t, I_in] (+ mask)) and cond the step t / T of shape
            (B,) (`condition: t`) or (alpha_bar_t, beta_bar_t) of shape (B, 2)
            (`condition: coefficients`); returns (I_res_hat, eps_hat) for `pred_res_noise`
            (`ir_lightning.nets.rddm`: two U-Nets, one encoder with two decoders, or two heads)
            or one tensor for `pred_res` / `pred_noise` (a `UNet` with 3 outputs).
        objective: `pred_res_noise` (the paper's default), `pred_res` or `pred_noise`.
        condition: what the network is conditioned on; `coefficients` is needed to sample along
            paths other than the schedule's (partially path-independent sampling).
        schedule: the alpha and beta^2 schedules (`RDDMSchedule`).
        sampling: steps (5 for raindrop, 2 for LOL), eta (0 = deterministic, for restoration; 1 = ancestral
            variance), seed, `clip` (clamp the predicted I_res, and a derived I_0, to [-1, 1]) and `solver`
            (the eta = 0 sampler may be solved as one fixed point over all steps: `diffusion.deq`).
        loss: "l1" (the official code) or "l2", on each predicted output, summed.
        scale: GT / LQ size ratio; an LQ smaller than the GT is upsampled bicubically to be I_in.
        generation: unconditional generation: I_in = 0 (the data's LQ is ignored).
        use_mask: add the batch's `mask` (B x 1 x H x W, in [0, 1]) as an input channel (shadow removal).
        **kwargs: `RestorationModule`'s (optimizer, warmup_steps, crop_border, y_channel, max_nonfinite_steps).
    """

    SAMPLERS = ("ddim",)
    DEFAULT_SAMPLING = Sampling(steps=5, sampler="ddim")

    def __init__(
        self,
        net: nn.Module,
        objective: Literal["pred_res_noise", "pred_res", "pred_noise"] = "pred_res_noise",
        condition: Literal["t", "coefficients"] = "t",
        schedule: RDDMSchedule = RDDMSchedule(),
        sampling: Sampling = DEFAULT_SAMPLING,
        loss: Literal["l1", "l2"] = "l1",
        scale: int = 1,
        generation: bool = False,
        use_mask: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters_as_plain_data(ignore=self.objects_kept_out_of_hparams("net", "optimizer"))
        if objective not in OBJECTIVES:
            raise ValueError(f"model.init_args.objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if condition not in ("t", "coefficients"):
            raise ValueError(f"model.init_args.condition must be 't' or 'coefficients', got {condition!r}")
        self.objective, self.condition = objective, condition
        self.schedule = RDDMSchedule.of(schedule).build()  # float64, off the buffers (moved where used)
        self.sampling = check_sampler(Sampling.of(sampling), self.SAMPLERS, "RDDM")
        self.schedule.sampling_times(self.sampling.steps)  # a bad step count fails here, not at the first validation
        self.loss_fn = {"l1": F.l1_loss, "l2": F.mse_loss}[loss]
        self.scale, self.generation, self.use_mask = scale, generation, use_mask
        if generation and (self.color_fix != "none" or self.consistency is not None):
            raise ValueError(
                "model.init_args.color_fix and consistency take the colours and the measurement from the input, "
                "and generation has none (its batches' images are the targets): leave them off with generation"
            )
        self.net = net

    @classmethod
    def upgrade_hyperparameters(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        return upgrade_sampling(hparams, cls.DEFAULT_SAMPLING)

    @property
    def uses_mask(self) -> bool:
        return self.use_mask

    # --- the pieces ------------------------------------------------------------------------
    def input_image(self, batch: dict[str, Any], like: Tensor) -> Tensor:
        """I_in in [-1, 1] at the target's size: the LQ (upsampled if smaller), or zeros for generation."""
        if self.generation:
            return torch.zeros_like(like)
        lq = self.require_lq(batch)
        if lq.shape[-2:] != like.shape[-2:]:
            lq = bicubic_upsample(lq, tuple(like.shape[-2:]))
        return to_signed(lq)

    def network_input(self, i_t: Tensor, i_in: Tensor, mask: Tensor | None) -> Tensor:
        parts = [i_t, i_in]
        if self.use_mask:
            if mask is None:
                raise KeyError(
                    "model.init_args.use_mask is set but the batch has no 'mask' (shards need <key>.mask.png)"
                )
            parts.append(to_signed(mask))
        return torch.cat(parts, dim=1)

    def conditioning(self, t: Tensor | None, alpha_bar: Tensor, beta_bar: Tensor) -> Tensor:
        if self.condition == "coefficients":
            return torch.stack([alpha_bar, beta_bar], dim=1).float()
        if t is None:
            raise ValueError("sampling off the schedule's path needs model.init_args.condition: coefficients")
        return t.float() / self.schedule.n_steps

    def outputs(self, x: Tensor, cond: Tensor) -> tuple[Tensor, ...]:
        out = self.net(x, cond)
        out = (out,) if isinstance(out, Tensor) else tuple(out)
        expected = 2 if self.objective == "pred_res_noise" else 1
        if len(out) != expected:
            raise ValueError(f"objective {self.objective} needs a net with {expected} output(s), got {len(out)}")
        return out

    # --- training ----------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        i_0 = to_signed(batch["gt"])
        i_in = self.input_image(batch, i_0)
        i_res = i_in - i_0
        generator = self.training_generator()
        batch_size, device = i_0.shape[0], i_0.device
        t = torch.randint(1, self.schedule.n_steps + 1, (batch_size,), generator=generator, device=device)
        noise = torch.randn(i_0.shape, generator=generator, device=device, dtype=i_0.dtype)
        alpha_bar, beta_bar = self._coefficients(t)
        i_t = q_sample(i_0, i_res, alpha_bar, beta_bar, noise)
        out = self.outputs(self.network_input(i_t, i_in, batch.get("mask")), self.conditioning(t, alpha_bar, beta_bar))
        if self.objective == "pred_res_noise":
            return self.loss_fn(out[0], i_res) + self.loss_fn(out[1], noise)
        return self.loss_fn(out[0], i_res if self.objective == "pred_res" else noise)

    def _coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha_bar = self.on_device(self.schedule.alpha_bar, t.device)[t]
        beta_bar = self.on_device(self.schedule.beta_bar, t.device)[t]
        return alpha_bar, beta_bar

    # --- sampling ------------------------------------------------------------------------------
    def predictor(self, i_in: Tensor, mask: Tensor | None):
        """`predict(I_t, alpha_bar, beta_bar, t) -> (I_res_hat, eps_hat)` for the samplers."""

        def predict(i_t: Tensor, alpha_bar: Tensor, beta_bar: Tensor, t: Tensor | None) -> tuple[Tensor, Tensor]:
            out = self.outputs(self.network_input(i_t, i_in, mask), self.conditioning(t, alpha_bar, beta_bar))
            if self.objective == "pred_noise":
                return res_from_eps(i_t, i_in, out[0], alpha_bar, beta_bar, clip=self.sampling.clip), out[0]
            res_hat = out[0].clamp(-1.0, 1.0) if self.sampling.clip else out[0]
            if self.objective == "pred_res":
                return res_hat, eps_from_res(i_t, i_in, res_hat, alpha_bar, beta_bar)
            return res_hat, out[1]

        return predict

    @torch.no_grad()
    def restoration(
        self, lq: Tensor, *, size: tuple[int, int] | None = None, mask: Tensor | None = None, progress: bool = False
    ) -> Restoration:
        """Restored images in [0, 1] with `sampling.steps` steps of the sampler (seeded by `sampling.seed`)."""
        if not self.use_mask:
            self.no_mask(mask)
        if size is None:
            size = (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale)
        like = torch.empty(lq.shape[0], 3, *size, device=lq.device)
        i_in = self.input_image({"lq": lq}, like)
        generator = torch.Generator(device=lq.device).manual_seed(self.sampling.seed)
        schedule = ResidualSchedule(
            self.on_device(self.schedule.alpha_bar, lq.device), self.on_device(self.schedule.beta_bar, lq.device)
        )
        if self.sampling.parallel:
            noise = gaussian_like(i_in, generator)  # as `sample` draws it: I_T = I_in + beta_bar_T noise
            i_T = (i_in.double() + schedule.beta_bar[-1].item() * noise.double()).to(i_in.dtype)

            def conditioned(i_t: Tensor, inputs: Tensor, alpha_bar: Tensor, beta_bar: Tensor, t: Tensor):
                masks = None if mask is None else mask.repeat(i_t.shape[0] // mask.shape[0], 1, 1, 1)
                return self.predictor(inputs, masks)(i_t, alpha_bar, beta_bar, t)

            chain = rddm_chain(conditioned, i_in, schedule, self.sampling.steps)
            x0, result = run_chain(chain, i_T, self.sampling.solver, progress)
            return Restoration.of(to_unit(x0), result)
        out = sample(
            self.predictor(i_in, mask),
            i_in,
            schedule,
            self.sampling.steps,
            eta=self.sampling.eta,
            generator=generator,
            progress=progress,
        )
        return Restoration(to_unit(out))

    def restore_batch(self, batch: dict[str, Any]) -> Tensor:
        """As the base class's; for generation, images of the GT's size from I_in = 0."""
        if not self.generation:
            return super().restore_batch(batch)
        return self.restore(batch["gt"], size=tuple(batch["gt"].shape[-2:]), mask=self.batch_mask(batch))
