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
from ir_lightning.diffusion.rddm import OBJECTIVES, ResidualSchedule, eps_from_res, q_sample, res_from_eps, sample
from ir_lightning.diffusion.deq import SOLVERS, rddm_chain, run_chain
from ir_lightning.diffusion.samplers import gaussian_like
from ir_lightning.methods.base import RestorationModule, adam
from ir_lightning.methods.sr3 import to_signed, to_unit
from lightning.pytorch.cli import OptimizerCallable


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
            Default: two small U-Nets.
        objective: `pred_res_noise` (the paper's default), `pred_res` or `pred_noise`.
        condition: what the network is conditioned on; `coefficients` is needed to sample along
            paths other than the schedule's (partially path-independent sampling).
        schedule: the alpha and beta^2 schedules (`RDDMSchedule`).
        sample_steps: sampling steps at validation/test/predict (5 for raindrop, 2 for LOL).
        eta: 0 = deterministic (restoration), 1 = ancestral variance.
        solver: how the eta = 0 sampler runs: "sequential" (step after step), or "anderson" / "picard": all
            steps solved as one fixed point at once (`diffusion.deq`, DeqIR's parallel sampling; the same
            result, in fewer serial rounds where a batch of steps costs one call).
        solver_tolerance: the relative residual at which the parallel solver stops.
        loss: "l1" (the official code) or "l2", on each predicted output, summed.
        clip: clamp the predicted I_res (and a derived I_0) to [-1, 1] when sampling.
        scale: GT / LQ size ratio; an LQ smaller than the GT is upsampled bicubically to be I_in.
        generation: unconditional generation: I_in = 0 (the data's LQ is ignored).
        use_mask: add the batch's `mask` (B x 1 x H x W, in [0, 1]) as an input channel (shadow removal).
        sample_seed: seed of the sampling noise at validation/test/predict.
        optimizer, warmup_steps, crop_border, y_channel, max_nonfinite_steps: see `RestorationModule`.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        objective: Literal["pred_res_noise", "pred_res", "pred_noise"] = "pred_res_noise",
        condition: Literal["t", "coefficients"] = "t",
        schedule: RDDMSchedule = RDDMSchedule(),
        sample_steps: int = 5,
        eta: float = 0.0,
        solver: Literal["sequential", "anderson", "picard"] = "sequential",
        solver_tolerance: float = 1e-3,
        loss: Literal["l1", "l2"] = "l1",
        clip: bool = True,
        scale: int = 1,
        generation: bool = False,
        use_mask: bool = False,
        sample_seed: int = 0,
        optimizer: OptimizerCallable = adam,
        warmup_steps: int = 0,
        crop_border: int = 0,
        y_channel: bool = True,
        max_nonfinite_steps: int = 20,
    ) -> None:
        super().__init__(optimizer, warmup_steps, crop_border, y_channel, max_nonfinite_steps)
        self.save_hyperparameters_as_plain_data(ignore=self.objects_kept_out_of_hparams("net", "optimizer"))
        if objective not in OBJECTIVES:
            raise ValueError(f"model.init_args.objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if solver not in SOLVERS:
            raise ValueError(f"model.init_args.solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        if solver != "sequential" and eta != 0:
            raise ValueError(f"model.init_args.solver={solver} solves the eta = 0 sampler in parallel; got eta={eta}")
        self.solver, self.solver_tolerance = solver, solver_tolerance
        if condition not in ("t", "coefficients"):
            raise ValueError(f"model.init_args.condition must be 't' or 'coefficients', got {condition!r}")
        self.objective, self.condition = objective, condition
        self.schedule = RDDMSchedule.of(schedule).build()  # float64, off the buffers (moved where used)
        self.sample_steps, self.eta, self.clip = sample_steps, eta, clip
        self.schedule.sampling_times(sample_steps)  # a bad step count fails here, not at the first validation
        self.loss_fn = {"l1": F.l1_loss, "l2": F.mse_loss}[loss]
        self.scale, self.generation, self.use_mask, self.sample_seed = scale, generation, use_mask, sample_seed
        self.net = net if net is not None else self.default_net(objective, condition, use_mask)

    @staticmethod
    def default_net(objective: str, condition: str, use_mask: bool) -> nn.Module:
        """Two small U-Nets for `pred_res_noise`, one for a single objective."""
        from ir_lightning.nets.rddm import TwoUNets
        from ir_lightning.nets.unet import UNet

        settings = dict(in_channels=6 + int(use_mask), base_channels=32, channel_mults=(1, 2, 4), num_res_blocks=1,
                        attn_levels=(2,), dropout=0.0, norm_groups=8, cond_dims=2 if condition == "coefficients" else 1)  # fmt: skip
        return TwoUNets(**settings) if objective == "pred_res_noise" else UNet(out_channels=3, **settings)

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
                raise KeyError("model.init_args.use_mask is set but the batch has no 'mask' (shards need <key>.mask.png)")
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
                return res_from_eps(i_t, i_in, out[0], alpha_bar, beta_bar, clip=self.clip), out[0]
            res_hat = out[0].clamp(-1.0, 1.0) if self.clip else out[0]
            if self.objective == "pred_res":
                return res_hat, eps_from_res(i_t, i_in, res_hat, alpha_bar, beta_bar)
            return res_hat, out[1]

        return predict

    @torch.no_grad()
    def restore(self, lq: Tensor | None, size: tuple[int, int] | None, progress: bool = False,
                mask: Tensor | None = None) -> Tensor:  # fmt: skip
        """Restored images in [0, 1] with `sample_steps` steps of the sampler (seeded by `sample_seed`)."""
        if size is None:
            size = (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale)
        like = torch.empty(lq.shape[0], 3, *size, device=lq.device)
        i_in = self.input_image({"lq": lq}, like)
        generator = torch.Generator(device=lq.device).manual_seed(self.sample_seed)
        schedule = ResidualSchedule(self.on_device(self.schedule.alpha_bar, lq.device), self.on_device(self.schedule.beta_bar, lq.device))
        if self.solver != "sequential" and self.eta == 0:
            noise = gaussian_like(i_in, generator)  # as `sample` draws it: I_T = I_in + beta_bar_T noise
            i_T = (i_in.double() + schedule.beta_bar[-1].item() * noise.double()).to(i_in.dtype)

            def conditioned(i_t: Tensor, inputs: Tensor, alpha_bar: Tensor, beta_bar: Tensor, t: Tensor):
                masks = None if mask is None else mask.repeat(i_t.shape[0] // mask.shape[0], 1, 1, 1)
                return self.predictor(inputs, masks)(i_t, alpha_bar, beta_bar, t)

            chain = rddm_chain(conditioned, i_in, schedule, self.sample_steps)
            self.remember_solve(None)  # the previous report goes before this solve's memory is taken
            x0, result = run_chain(chain, i_T, self.solver, self.solver_tolerance, progress)
            self.remember_solve(result)
            return to_unit(x0)
        self.remember_solve(None)
        out = sample(self.predictor(i_in, mask), i_in, schedule, self.sample_steps, eta=self.eta,
                     generator=generator, progress=progress)  # fmt: skip
        return to_unit(out)

    def _restore_batch(self, batch: dict[str, Any]) -> Tensor:
        size = tuple(batch["gt"].shape[-2:]) if "gt" in batch else None
        lq = batch["gt"] if self.generation else self.require_lq(batch)
        return self.restore(lq, size if not self.generation else tuple(lq.shape[-2:]), mask=batch.get("mask"))
