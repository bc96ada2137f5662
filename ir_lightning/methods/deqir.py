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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ir_lightning.diffusion import noised_training_sample
from ir_lightning.diffusion.deq import (
    Chain,
    ddnm_chain,
    draw_noises,
    phantom_loss,
    precondition,
    sequential,
    solve,
    spectral_prior_eps,
)
from ir_lightning.diffusion.operators import LinearOperator, make_operator
from ir_lightning.methods.base import RestorationModule, adam
from ir_lightning.methods.sr3 import NoiseSchedule, to_signed, to_unit
from ir_lightning.nets.unet import UNet
from lightning.pytorch.cli import OptimizerCallable

Solver = Literal["sequential", "anderson", "picard"]
Preconditioner = Literal["spectral", "none"]


class DeqIR(RestorationModule):
    """The unconditional prior and DeqIR restoration with it.

    Args:
        net: the noise predictor `net(x_t, sqrt(alpha_bar)) -> eps_hat` (3 in, 3 out). Default: a small
            suite `UNet`.
        train_schedule: the DDPM schedule (the paper's models: linear 1e-4 .. 0.02, T = 1000).
        operator: the degradation, by name (`ir_lightning.diffusion.operators.make_operator`: sr4,
            bicubic4, deblur_gauss, deblur_uni, deblur_aniso, inpaint_box, inpaint_random50, colorization).
        sigma_y: measurement noise std (on the [0, 1] scale) added when validation makes y from gt.
        sample_steps: T, the steps of the DDIM chain (the training schedule respaced).
        eta: DDIM stochasticity of the chain; its noise is drawn once from `sample_seed`, so the chain
            stays deterministic and the parallel solution equals the sequential one.
        solver: "sequential" (T serial network calls), "anderson" or "picard" (the joint fixed point).
        memory, regularisation, mixing, tolerance, max_iterations: Anderson's m, its Tikhonov term, beta,
            the relative residual to stop at and the iteration cap (the paper: 5, 1e-3, 1, 1e-3, 15).
        chunk_size: at most this many states per network call (a memory budget); None = all T at once.
        preconditioner: "spectral" (default) solves the chain split around a 1/f^2 Gaussian prior's step
            (`deq.precondition`, `deq.spectral_prior_eps`): the same fixed point, reached in far fewer
            iterations on photos; "none" uses DDNM's plain split. Ignored by the sequential solver.
        prior_variance: the pixel variance of that Gaussian prior on the signed [-1, 1] scale.
        sample_seed: seed of x_T and the chain's noise, so two evaluations of the same weights agree.
        optimizer, warmup_steps, crop_border, y_channel, max_nonfinite_steps: see `RestorationModule`.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        train_schedule: NoiseSchedule = NoiseSchedule(kind="linear", n_steps=1000, linear_start=1e-4, linear_end=0.02),
        operator: str = "sr4",
        sigma_y: float = 0.0,
        sample_steps: int = 25,
        eta: float = 0.0,
        solver: Solver = "anderson",
        memory: int = 5,
        regularisation: float = 1e-3,
        mixing: float = 1.0,
        tolerance: float = 1e-3,
        max_iterations: int = 15,
        chunk_size: int | None = None,
        preconditioner: Preconditioner = "spectral",
        prior_variance: float = 0.25,
        sample_seed: int = 0,
        optimizer: OptimizerCallable = adam,
        warmup_steps: int = 0,
        crop_border: int = 0,
        y_channel: bool = False,
        max_nonfinite_steps: int = 20,
    ) -> None:
        super().__init__(optimizer, warmup_steps, crop_border, y_channel, max_nonfinite_steps)
        self.save_hyperparameters_as_plain_data(ignore=self.objects_kept_out_of_hparams("net", "optimizer"))
        self.net = net if net is not None else UNet(
            in_channels=3, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attn_levels=(2,), dropout=0.0, norm_groups=8
        )
        self.alpha_bars = NoiseSchedule.of(train_schedule).gammas()  # float64, off the buffers
        make_operator(operator, (64, 64))  # an unknown name fails here, naming the valid ones
        if sigma_y < 0:
            raise ValueError(f"model.init_args.sigma_y must be >= 0, got {sigma_y}")
        if solver not in ("sequential", "anderson", "picard"):
            raise ValueError(f"model.init_args.solver must be sequential, anderson or picard, got {solver!r}")
        if not 1 <= sample_steps <= self.alpha_bars.shape[0]:
            raise ValueError(f"model.init_args.sample_steps must be in [1, {self.alpha_bars.shape[0]}], got {sample_steps}")
        self.operator_name, self.sigma_y, self.sample_steps, self.eta = operator, sigma_y, sample_steps, eta
        if preconditioner not in ("spectral", "none"):
            raise ValueError(f"model.init_args.preconditioner must be spectral or none, got {preconditioner!r}")
        if not prior_variance > 0:
            raise ValueError(f"model.init_args.prior_variance must be > 0, got {prior_variance}")
        self.solver, self.preconditioner, self.prior_variance = solver, preconditioner, prior_variance
        self.solver_options = {"m": memory, "lam": regularisation, "beta": mixing, "tol": tolerance,
                               "max_iter": max_iterations, "chunk_size": chunk_size}  # fmt: skip
        self.sample_seed = sample_seed

    # --- the prior -------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        x0 = to_signed(batch["gt"])
        x_noisy, level, noise = noised_training_sample(x0, self.on_device(self.alpha_bars, x0.device), self.training_generator())
        return F.mse_loss(self.net(x_noisy, level), noise)  # DDPM's simple loss, eps-prediction

    # --- restoration -----------------------------------------------------------------------------
    def operator_for(self, size: tuple[int, int]) -> LinearOperator:
        return make_operator(self.operator_name, size, seed=self.sample_seed)

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
    def restore(self, lq: Tensor, size: tuple[int, int] | None = None, progress: bool = False) -> Tensor:
        """Restore from the measurement `lq` = A x in [0, 1] (for colorization: any channel count, the
        mean is taken) with the configured operator, chain and solver."""
        size = size or self.image_size(lq)
        return self._restore_with(self.operator_for(size), lq, size, progress)

    @torch.no_grad()
    def _restore_with(self, operator: LinearOperator, lq: Tensor, size: tuple[int, int], progress: bool = False) -> Tensor:
        if self.operator_name == "colorization":
            lq = lq.mean(dim=1, keepdim=True)
        ones = torch.ones(lq.shape[0], 3, *size, device=lq.device, dtype=lq.dtype)
        y = 2 * lq - operator.forward(ones)  # A (2x - 1) = 2 A x - A 1: the measurement of the signed image
        generator = torch.Generator(device=lq.device).manual_seed(self.sample_seed)
        x_T = torch.randn(ones.shape, generator=generator, device=lq.device, dtype=lq.dtype)
        timesteps = respaced_timesteps(self.alpha_bars.shape[0], self.sample_steps).to(lq.device)
        noises = draw_noises(x_T, self.sample_steps, generator)
        alpha_bars = self.on_device(self.alpha_bars, lq.device)

        def eps_model(x: Tensor, t: Tensor) -> Tensor:
            return self.net(x, alpha_bars[t].sqrt().to(x.dtype))

        chain = ddnm_chain(eps_model, operator, y, alpha_bars, timesteps, self.eta, noises)
        self.remember_solve(None)  # the previous report goes before this restoration's memory is taken
        if self.solver == "sequential":
            x0 = sequential(chain, x_T, progress=progress)
        else:
            if self.preconditioner == "spectral":
                gaussian = spectral_prior_eps(alpha_bars, self.prior_variance)
                chain = precondition(chain, ddnm_chain(gaussian, operator, y, alpha_bars, timesteps, self.eta, noises))
            result = solve(chain, x_T, method=self.solver, progress=progress, **self.solver_options)
            x0 = result.x0
            self.remember_solve(result)
        return to_unit(x0)

    def _restore_batch(self, batch: dict[str, Any]) -> Tensor:
        if "gt" not in batch:  # predict on measurements
            return self.restore(self.require_lq(batch))
        gt = batch["gt"]
        operator = self.operator_for(tuple(gt.shape[-2:]))
        generator = torch.Generator(device=gt.device).manual_seed(self.sample_seed + 1)
        measurement = operator.measure(gt, self.sigma_y, generator)
        batch["lq"] = measurement.expand(-1, gt.shape[1], -1, -1)  # what image loggers show as the input
        restored = self._restore_with(operator, measurement, tuple(gt.shape[-2:]))
        stage = None if self._trainer is None else "val" if self.trainer.validating else "test" if self.trainer.testing else None
        if self.last_solve is not None and stage is not None:  # predict may not log
            self.log(f"{stage}/solver_iterations", float(self.last_solve.iterations), batch_size=gt.shape[0])
            # 1 when the residual met the tolerance, 0 when the iteration cap or the T bound ended the solve
            by_tolerance = float(self.last_solve.stopped_by == "tolerance")
            self.log(f"{stage}/solver_stopped_by_tolerance", by_tolerance, batch_size=gt.shape[0])
        return restored


def respaced_timesteps(n_train: int, n_steps: int) -> Tensor:
    """`n_steps` integer DDPM timesteps evenly spread over n_train - 1 .. 0, in the order the chain visits
    them (DDIM's respacing)."""
    return torch.linspace(n_train - 1, 0, n_steps, dtype=torch.float64).round().long()


@dataclass
class InversionResult:
    """What `invert` returns: the optimised x_T (detached) and the loss before each Adam step."""

    x_T: Tensor
    losses: list[float]




def invert(
    chain: Chain,
    x_T_init: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    steps: int,
    lr: float = 2e-5,
    tau: float = 0.1,
    phantom_steps: int = 2,
    use_checkpoint: bool = True,
    **solver_kwargs,
) -> InversionResult:
    """DEQ inversion: optimise the initial state x_T by Adam on loss_fn(x_0) (DeqIR's initialisation
    optimisation; lr 2e-5 and tau 0.1 are its values). Each step solves the fixed point for the
    current x_T and back-propagates through the phantom steps (`phantom_loss`); `solver_kwargs` go
    to `solve`. The chain does not depend on x_T, so one chain serves every step."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got steps={steps}")
    x_T = x_T_init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x_T], lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = phantom_loss(chain, x_T, loss_fn, tau, phantom_steps, use_checkpoint, **solver_kwargs)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return InversionResult(x_T=x_T.detach(), losses=losses)
