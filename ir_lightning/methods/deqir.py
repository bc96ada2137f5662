"""DeqIR (Cao et al., CVPR 2024): training-free restoration with an unconditional diffusion prior,
the whole sampling chain solved as one fixed-point system.

Training fits the prior: an unconditional noise predictor on clean crops (a DDPM, eps-prediction, MSE),
which sees the continuous noise level sqrt(alpha_bar) as SR3's network does, so any respaced schedule
samples it. Restoration needs no training: a known linear operator A (`ir_lightning.diffusion.operators`)
and a measurement y = A x (+ sigma_y n) define the DDNM chain (a DDIM step whose predicted x0 has its
range-space part replaced by A^+ y), and `ir_lightning.diffusion.deq` runs it step after step
(`solver: sequential`) or solves all its states at once (`anderson`, `picard`): each solver iteration is
one batched network call over every state, so on a GPU the wall-clock follows the iterations, not T.

`invert` is DeqIR's DEQ inversion: Adam on x_T through the fixed point's phantom gradient.

Validation and test measure y from the batch's clean `gt` with the module's own operator (the
training-free protocol: the operator is known), then restore and score. `predict` (and `restore`)
take `lq` as the measurement itself.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ir_lightning.diffusion import noised_training_sample
from ir_lightning.diffusion.deq import (
    SolverSettings,
    ddnm_chain,
    draw_noises,
    precondition,
    run_chain,
    spectral_prior_eps,
)
from ir_lightning.diffusion.operators import LinearOperator, make_operator
from ir_lightning.diffusion.ranges import to_signed, to_unit
from ir_lightning.diffusion.schedules import respaced_timesteps
from ir_lightning.methods.base import Restoration, RestorationModule
from ir_lightning.methods.settings import NoiseSchedule, Sampling, check_sampler, upgrade_sampling

Preconditioner = Literal["spectral", "none"]


class DeqIR(RestorationModule):
    """The unconditional prior and DeqIR restoration with it.

    Args:
        net: the noise predictor `net(x_t, sqrt(alpha_bar)) -> eps_hat` (3 in, 3 out).
        train_schedule: the DDPM schedule (the paper's models: linear 1e-4 .. 0.02, T = 1000).
        operator: the degradation, by name (`ir_lightning.diffusion.operators.make_operator`: sr4,
            bicubic4, deblur_gauss, deblur_uni, deblur_aniso, inpaint_box, inpaint_random50, colorization).
        sigma_y: measurement noise std (on the [0, 1] scale) added when validation makes y from gt.
        sampling: T (`steps`: the training schedule respaced), `eta` (DDIM's stochasticity; its noise is drawn
            once from `seed`, so the chain stays deterministic and the parallel solution equals the sequential
            one), `seed` (of x_T and that noise) and `solver`: "sequential" (T serial network calls), "anderson"
            or "picard" (the joint fixed point) with its memory, regularisation, mixing, tolerance and max_iter
            (the paper: 5, 1e-3, 1, 1e-3, 15) and `chunk_size` (at most this many states per network call). The
            chain does not clamp (DDNM's projection keeps A x_0 = y), so `clip` must be false.
        preconditioner: "spectral" (default) solves the chain split around a 1/f^2 Gaussian prior's step
            (`deq.precondition`, `deq.spectral_prior_eps`): the same fixed point, reached in far fewer
            iterations on photos; "none" uses DDNM's plain split. Ignored by the sequential solver.
        prior_variance: the pixel variance of that Gaussian prior on the signed [-1, 1] scale.
        y_channel: compute PSNR/SSIM on the Y channel (default: RGB, as DDNM/DeqIR report).
        **kwargs: `RestorationModule`'s (optimizer, warmup_steps, crop_border, max_nonfinite_steps).
    """

    SAMPLERS = ("ddim",)
    DEFAULT_SAMPLING = Sampling(steps=25, sampler="ddim", clip=False, solver=SolverSettings("anderson", max_iter=15))

    def __init__(
        self,
        net: nn.Module,
        train_schedule: NoiseSchedule = NoiseSchedule(kind="linear", n_steps=1000, linear_start=1e-4, linear_end=0.02),
        operator: str = "sr4",
        sigma_y: float = 0.0,
        sampling: Sampling = DEFAULT_SAMPLING,
        preconditioner: Preconditioner = "spectral",
        prior_variance: float = 0.25,
        y_channel: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(y_channel=y_channel, **kwargs)
        self.save_hyperparameters_as_plain_data(ignore=self.objects_kept_out_of_hparams("net", "optimizer"))
        self.net = net
        self.alpha_bars = NoiseSchedule.of(train_schedule).gammas()  # float64, off the buffers
        make_operator(operator, (64, 64))  # an unknown name fails here, naming the valid ones
        if sigma_y < 0:
            raise ValueError(f"model.init_args.sigma_y must be >= 0, got {sigma_y}")
        self.sampling = check_sampler(Sampling.of(sampling), self.SAMPLERS, "DeqIR")
        if not 1 <= self.sampling.steps <= self.alpha_bars.shape[0]:
            raise ValueError(
                f"model.init_args.sampling.steps must be in [1, {self.alpha_bars.shape[0]}], got {self.sampling.steps}"
            )
        if self.sampling.clip:
            raise ValueError(
                "model.init_args.sampling.clip: DeqIR's chain does not clamp (DDNM's projection keeps A x_0 = y); "
                "set it to false"
            )
        self.operator_name, self.sigma_y = operator, sigma_y
        if preconditioner not in ("spectral", "none"):
            raise ValueError(f"model.init_args.preconditioner must be spectral or none, got {preconditioner!r}")
        if not prior_variance > 0:
            raise ValueError(f"model.init_args.prior_variance must be > 0, got {prior_variance}")
        self.preconditioner, self.prior_variance = preconditioner, prior_variance

    @classmethod
    def upgrade_hyperparameters(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        return upgrade_sampling(hparams, cls.DEFAULT_SAMPLING)

    # --- the prior -------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        x0 = to_signed(batch["gt"])
        x_noisy, level, noise = noised_training_sample(
            x0, self.on_device(self.alpha_bars, x0.device), self.training_generator()
        )
        return F.mse_loss(self.net(x_noisy, level), noise)  # DDPM's simple loss, eps-prediction

    # --- restoration -----------------------------------------------------------------------------
    def operator_for(self, size: tuple[int, int]) -> LinearOperator:
        return make_operator(self.operator_name, size, seed=self.sampling.seed)

    @property
    def tileable(self) -> bool:
        """Inpainting masks are laid out on the whole image, so a tile would get the wrong mask."""
        return not self.operator_name.startswith("inpaint")

    def image_size(self, measurement: Tensor) -> tuple[int, int]:
        """The restored size for a measurement: k times larger for sr<k> / bicubic<k>, else the same."""
        digits = "".join(ch for ch in self.operator_name if ch.isdigit())
        scale = int(digits) if self.operator_name.startswith(("sr", "bicubic")) else 1
        return measurement.shape[-2] * scale, measurement.shape[-1] * scale

    @torch.no_grad()
    def restoration(
        self, lq: Tensor, *, size: tuple[int, int] | None = None, mask: Tensor | None = None, progress: bool = False
    ) -> Restoration:
        """Restore from the measurement `lq` = A x in [0, 1] (for colorization: any channel count, the
        mean is taken) with the configured operator, chain and solver."""
        self.no_mask(mask)
        size = size or self.image_size(lq)
        return self.restoration_with(self.operator_for(size), lq, size, progress)

    @torch.no_grad()
    def restoration_with(
        self, operator: LinearOperator, lq: Tensor, size: tuple[int, int], progress: bool = False
    ) -> Restoration:
        """`restoration` with a given operator (validation's: the one that measured `lq`)."""
        if self.operator_name == "colorization":
            lq = lq.mean(dim=1, keepdim=True)
        ones = torch.ones(lq.shape[0], 3, *size, device=lq.device, dtype=lq.dtype)
        y = 2 * lq - operator.forward(ones)  # A (2x - 1) = 2 A x - A 1: the measurement of the signed image
        generator = torch.Generator(device=lq.device).manual_seed(self.sampling.seed)
        x_T = torch.randn(ones.shape, generator=generator, device=lq.device, dtype=lq.dtype)
        timesteps = respaced_timesteps(self.alpha_bars.shape[0], self.sampling.steps).to(lq.device)
        noises = draw_noises(x_T, self.sampling.steps, generator)
        alpha_bars = self.on_device(self.alpha_bars, lq.device)

        def eps_model(x: Tensor, t: Tensor) -> Tensor:
            return self.net(x, alpha_bars[t].sqrt().to(x.dtype))

        chain = ddnm_chain(eps_model, operator, y, alpha_bars, timesteps, self.sampling.eta, noises)
        if self.sampling.parallel and self.preconditioner == "spectral":
            gaussian = spectral_prior_eps(alpha_bars, self.prior_variance)
            chain = precondition(
                chain, ddnm_chain(gaussian, operator, y, alpha_bars, timesteps, self.sampling.eta, noises)
            )
        x0, result = run_chain(chain, x_T, self.sampling.solver, progress)
        return Restoration.of(to_unit(x0), result)

    def measurement(self, gt: Tensor) -> tuple[LinearOperator, Tensor]:
        """The operator at `gt`'s size and y = A gt (+ sigma_y noise, seeded by `sampling.seed` + 1): the
        training-free protocol of validation and test (the operator is known)."""
        operator = self.operator_for(tuple(gt.shape[-2:]))
        generator = torch.Generator(device=gt.device).manual_seed(self.sampling.seed + 1)
        return operator, operator.measure(gt, self.sigma_y, generator)

    def shown_input(self, batch: dict[str, Any]) -> Tensor | None:
        """The measurement, at the GT's channel count (what image loggers show as the input)."""
        if "gt" not in batch:
            return super().shown_input(batch)
        return self.measurement(batch["gt"])[1].expand(-1, batch["gt"].shape[1], -1, -1)

    def restore_batch(self, batch: dict[str, Any]) -> Tensor:
        """Measurements (`lq`) restored as they are; with a `gt`, restored from its measurement with the module's
        own operator (validation and test), and the solve's iterations logged."""
        if "gt" not in batch:  # predict on measurements
            return self.restore(self.require_lq(batch))
        gt = batch["gt"]
        operator, measurement = self.measurement(gt)
        restored, solve = self.restoration_with(operator, measurement, tuple(gt.shape[-2:]))
        stage = (
            None
            if self.attached_trainer is None
            else "val"
            if self.trainer.validating
            else "test"
            if self.trainer.testing
            else None
        )
        if solve is not None and stage is not None:  # predict may not log
            self.log(f"{stage}/solver_iterations", float(solve.iterations), batch_size=gt.shape[0])
            # 1 when the residual met the tolerance, 0 when the iteration cap or the T bound ended the solve
            self.log(
                f"{stage}/solver_stopped_by_tolerance", float(solve.stopped_by == "tolerance"), batch_size=gt.shape[0]
            )
        return restored


from ir_lightning.diffusion.deq.inversion import InversionResult, invert  # noqa: E402, F401  (moved; re-exported)
