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

import math
import warnings
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
from ir_lightning.diffusion.deq.chains import NOISE_WEIGHTS, EpsModel, NoiseWeights
from ir_lightning.diffusion.deq.inversion import Inversion
from ir_lightning.diffusion.deq.solve import Chain
from ir_lightning.diffusion.operators import LinearOperator, make_operator
from ir_lightning.diffusion.ranges import to_signed, to_unit
from ir_lightning.diffusion.schedules import official_timesteps, respaced_timesteps
from ir_lightning.methods.base import Restoration, RestorationModule
from ir_lightning.methods.settings import NoiseSchedule, Sampling, check_sampler, upgrade_sampling

Preconditioner = Literal["spectral", "none", "official"]
PRECONDITIONERS: tuple[str, ...] = ("spectral", "none", "official")
Timesteps = Literal["ours", "official"]
TIMESTEPS: tuple[str, ...] = ("ours", "official")
NOISE_GAIN_WARNING = 10.0
"""Without `noise_aware`, `restoration` warns when sigma_y > 0 and the operator amplifies noise by more than
this (its `noise_gain`, max 1 / s over its non-zero singular values): A^+ then blows the noise up in x_0."""
SHARED_NOISE = ("deqir", "deqir_without_svd")
"""The weights whose official sampler draws one noise for all steps (DeqIR); the others draw one per step."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class DeqIR(RestorationModule):
    """The unconditional prior and DeqIR restoration with it.

    Args:
        net: the noise predictor `net(x_t, sqrt(alpha_bar)) -> eps_hat` (3 in, 3 out).
        train_schedule: the DDPM schedule (the paper's models: linear 1e-4 .. 0.02, T = 1000).
        operator: the degradation, by name (`ir_lightning.diffusion.operators.make_operator`: sr4,
            bicubic4, deblur_gauss, deblur_uni, deblur_aniso, inpaint_box, inpaint_random50, colorization).
        sigma_y: measurement noise std on the [0, 1] scale: added when validation makes y from gt, and the
            noise level `noise_aware` corrects for. 0.1 here is the official DeqIR --sigma_y 0.2 (DeqIR adds its
            value on the [-1, 1] scale; DDNM's --sigma_y is on [0, 1] like ours and its code doubles it).
        sampling: T (`steps`), `eta` (the stochasticity of `noise_weights`: DDIM's eta, DDNM's eta, DeqIR's
            --etw), `seed` (of x_T and the noises) and `solver`: "sequential" (T serial network calls),
            "anderson" or "picard" (the joint fixed point) with its memory, regularisation, mixing, tolerance and
            max_iter (the paper: 5, 1e-3, 1, 1e-3, 15) and `chunk_size` (at most this many states per network
            call). Every noise is drawn once from `seed` before the chain runs, so the chain stays deterministic
            and its fixed point is the sequential chain for any eta: set `fixed_noise: true` to solve a chain
            with eta > 0 in parallel. The chain does not clamp (DDNM's projection keeps A x_0 = y), so `clip`
            must be false.
        preconditioner: "spectral" (default) solves the chain split around a 1/f^2 Gaussian prior's step
            (`deq.precondition`, `deq.spectral_prior_eps`): the same fixed point, reached in far fewer
            iterations on photos; "none" uses the plain split (drift c_eps / sqrt(1 - a_t) x_t); "official"
            DeqIR's own split (drift sqrt(a_prev / a_t) (I - A^+ A) x_t, `ddnm_chain(split="null_space")`),
            whose solver iterates are the official code's (its map G is the official `compute_multi_step_sr`).
            Ignored by the sequential solver.
        prior_variance: the pixel variance of that Gaussian prior on the signed [-1, 1] scale.
        y_channel: compute PSNR/SSIM on the Y channel (default: RGB, as DDNM/DeqIR report).
        timesteps: "ours" (default: `respaced_timesteps`, 999, 957, ..., 0 at T = 25 of 1000) or "official"
            (`official_timesteps`: DeqIR's and DDNM's 960, 920, ..., 0, runners/diffusion.py:430-451).
        start_timesteps: DeqIR's --start_timesteps (None: the training schedule's length), with timesteps
            "official" only: the official timesteps are then spaced over [0, start_timesteps).
        noise_weights: the weights of eps and of the noise in a step (`deq.chains.noise_weights`): "ddim"
            (default: DDIM's eta, a fresh noise per step), "ddnm" (DDNM's SVD sampler, functions/svd_ddnm.py:63-64:
            sqrt(1 - a_prev) eta and sqrt(1 - a_prev) sqrt(1 - eta^2), a fresh noise per step; DDNM runs eta 0.85
            at T = 100), "deqir" (DeqIR with --use_svd, runners/diffusion.py:521-525: sqrt(1 - a_prev) nw and
            sqrt(1 - a_prev) sqrt(1 - etw^2), etw = sampling.eta, nw = `noise_weight`, ONE noise for every step,
            runners/diffusion.py:546) or "deqir_without_svd" (the same times sqrt(1 - a_prev^2), what DeqIR
            computes without --use_svd: a bug inherited from DDNM's simplified code, see `noise_weights`).
        noise_weight: DeqIR's --nw (official default 0: no noise), for the "deqir" and "deqir_without_svd"
            weights only (the others take their noise weight from eta).
        inversion: DeqIR's DEQ inversion in validation and test (`deq.inversion.Inversion`: `steps` Adam steps
            on x_T towards the known clean image through the phantom gradient, the official "oracle" mode; 0 steps,
            the default: off). Its other fields default to the official code's (lr 2e-5, tau 0.1, one phantom
            step, the solver m 3, beta 0.9, tol 1e-2, 15 evaluations).
        noise_aware: DDNM+'s noise-aware correction for sigma_y > 0 (DDNM eq. 17-19, `ddnm_chain(sigma_y=...)`,
            functions/svd_ddnm.py `ddnm_plus_diffusion`); it needs the operator's `spectral`. The official DeqIR
            has none. Without it, restoring with sigma_y > 0 through an operator whose noise gain exceeds 10 warns.
        samples: how many chains a restoration runs and averages (each from its own x_T and noises, drawn one
            after the other from `sampling.seed`; the first is the chain of `samples: 1`). With eta > 0 each chain
            is a draw from the prior's posterior, so their mean estimates the posterior mean: it keeps A x = y
            (A is linear) and averages out the texture each draw invents in the operator's null space, which
            scores a higher PSNR than any one draw. Costs `samples` times the time; the solve report returned is
            the last chain's.
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
        timesteps: Timesteps = "ours",
        start_timesteps: int | None = None,
        noise_weights: NoiseWeights = "ddim",
        noise_weight: float = 0.0,
        noise_aware: bool = False,
        inversion: Inversion = Inversion(),
        samples: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(y_channel=y_channel, **kwargs)
        self.save_hyperparameters_as_plain_data(ignore=self.objects_kept_out_of_hparams("net", "optimizer"))
        self.net = net
        self.alpha_bars = NoiseSchedule.of(train_schedule).gammas()  # float64, off the buffers
        make_operator(operator, (64, 64))  # an unknown name fails here, naming the valid ones
        if sigma_y < 0:
            raise ValueError(f"model.init_args.sigma_y must be >= 0, got {sigma_y}")
        self.sampling = check_sampler(Sampling.of(sampling), self.SAMPLERS, "DeqIR", fixed_noise=True)
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
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(
                f"model.init_args.preconditioner must be {', '.join(PRECONDITIONERS)}, got {preconditioner!r}"
            )
        if not prior_variance > 0:
            raise ValueError(f"model.init_args.prior_variance must be > 0, got {prior_variance}")
        self.preconditioner, self.prior_variance = preconditioner, prior_variance
        if timesteps not in TIMESTEPS:
            raise ValueError(f"model.init_args.timesteps must be {' or '.join(TIMESTEPS)}, got {timesteps!r}")
        if start_timesteps is not None and (timesteps != "official" or not _is_int(start_timesteps)):
            raise ValueError(
                f"model.init_args.start_timesteps must be null, or an integer with timesteps: official; got "
                f"{start_timesteps!r} with timesteps: {timesteps}"
            )
        self.timestep_kind, self.start_timesteps = timesteps, start_timesteps
        self.sampling_timesteps()  # a start_timesteps out of range fails here
        if noise_weights not in NOISE_WEIGHTS:
            raise ValueError(f"model.init_args.noise_weights must be {', '.join(NOISE_WEIGHTS)}, got {noise_weights!r}")
        if isinstance(noise_weight, bool) or not isinstance(noise_weight, (int, float)) or not noise_weight >= 0:
            raise ValueError(f"model.init_args.noise_weight must be a number >= 0, got {noise_weight!r}")
        if noise_weight and noise_weights not in SHARED_NOISE:
            raise ValueError(
                f"model.init_args.noise_weight is DeqIR's --nw, for noise_weights deqir or deqir_without_svd; "
                f"the {noise_weights} weights take theirs from sampling.eta (got noise_weight={noise_weight})"
            )
        if not isinstance(noise_aware, bool):
            raise ValueError(f"model.init_args.noise_aware must be true or false, got {noise_aware!r}")
        self.noise_weights, self.noise_weight, self.noise_aware = noise_weights, float(noise_weight), noise_aware
        self._warned_noise_gain: set[str] = set()
        self.inversion = Inversion.of(inversion)
        if not _is_int(samples) or samples < 1:
            raise ValueError(f"model.init_args.samples must be an integer >= 1, got {samples!r}")
        self.samples = samples

    def sampling_timesteps(self) -> Tensor:
        """The T = sampling.steps timesteps the chain visits (int64, noisiest first), by `timesteps`."""
        n_train, n_steps = self.alpha_bars.shape[0], self.sampling.steps
        if self.timestep_kind == "ours":
            return respaced_timesteps(n_train, n_steps)
        try:
            return official_timesteps(n_train, n_steps, self.start_timesteps)
        except ValueError as error:
            raise ValueError(f"model.init_args.start_timesteps: {error}") from None

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
        """Inpainting masks are laid out on the whole image, so a tile would get the wrong mask; a compressed
        sensing measurement is no image at all (its coefficients mix every pixel)."""
        return not self.operator_name.startswith(("inpaint", "cs_"))

    @property
    def colourises(self) -> bool:
        return self.operator_name == "colorization"

    def _operator_factor(self) -> int:
        """k of sr<k> / bicubic<k> / cs_wh<k>: the operator's scale (SR) or compression ratio (CS); 1 otherwise."""
        digits = "".join(ch for ch in self.operator_name if ch.isdigit())
        return int(digits) if self.operator_name.startswith(("sr", "bicubic", "cs_")) and digits else 1

    def image_size(self, measurement: Tensor) -> tuple[int, int]:
        """The restored size for a measurement: k times larger for sr<k> / bicubic<k>; for cs_wh<k> (H W / k
        coefficients in a column) the square image of k times as many pixels; else the same."""
        factor = self._operator_factor()
        if self.operator_name.startswith("cs_"):
            pixels = measurement.shape[-2] * measurement.shape[-1] * factor
            side = math.isqrt(pixels)
            if side * side != pixels:
                raise ValueError(
                    f"a {self.operator_name} measurement of {measurement.shape[-2]} x {measurement.shape[-1]} "
                    f"coefficients is not a square image's ({pixels} pixels); give the size"
                )
            return side, side
        return measurement.shape[-2] * factor, measurement.shape[-1] * factor

    def native_tile(self) -> int | None:
        """The tile side in measurement pixels at which the prior sees images of its own size (`image_size` of a
        `TimestepPrior`: 256 for the official priors), for `restore`/`evaluate` to cut larger images into; None
        when the prior takes any size, or when the operator cannot be tiled (its images must be the prior's)."""
        prior_size = getattr(self.net, "image_size", None)
        if prior_size is None or not self.tileable:
            return None
        factor = self._operator_factor()
        if prior_size % factor:
            raise ValueError(
                f"the prior restores {prior_size} x {prior_size} images, which x{factor} ({self.operator_name}) "
                f"measurements cannot tile: no measurement of whole pixels is {prior_size / factor:g} pixels wide"
            )
        return prior_size // factor

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
        self,
        operator: LinearOperator,
        lq: Tensor,
        size: tuple[int, int],
        progress: bool = False,
        target: Tensor | None = None,
    ) -> Restoration:
        """`restoration` with a given operator (validation's: the one that measured `lq`); with the clean image
        `target` (in [0, 1]; validation and test), x_T is first optimised towards it by `inversion` (when on)."""
        if self.operator_name == "colorization":
            lq = lq.mean(dim=1, keepdim=True)
        ones = torch.ones(lq.shape[0], 3, *size, device=lq.device, dtype=lq.dtype)
        y = 2 * lq - operator.forward(ones)  # A (2x - 1) = 2 A x - A 1: the measurement of the signed image
        generator = torch.Generator(device=lq.device).manual_seed(self.sampling.seed)
        alpha_bars, timesteps = self.on_device(self.alpha_bars, lq.device), self.sampling_timesteps()
        self._warn_of_noise_gain(operator, tuple(ones.shape))

        def eps_model(x: Tensor, t: Tensor) -> Tensor:
            return self.net(x, alpha_bars[t].sqrt().to(x.dtype))

        def one_chain() -> tuple[Tensor, Any]:
            """A chain on the signed scale, its x_T and noises the generator's next draws: (x_0, solve report)."""
            x_T = torch.randn(ones.shape, generator=generator, device=lq.device, dtype=lq.dtype)
            if self.noise_weights in SHARED_NOISE:  # DeqIR: one noise sample for every step
                noises = draw_noises(x_T, 1, generator).expand(self.sampling.steps, *x_T.shape)
            else:
                noises = draw_noises(x_T, self.sampling.steps, generator)
            chain = self._chain(eps_model, operator, y, alpha_bars, timesteps, noises)
            if target is not None:
                x_T = self.inversion.run(chain, x_T, to_signed(target))
            return run_chain(chain, x_T, self.sampling.solver, progress)

        total, result = torch.zeros_like(ones), None
        for _ in range(self.samples):
            x0, result = one_chain()
            total += x0
        return Restoration.of(to_unit(total / self.samples), result)

    def _chain(
        self,
        eps_model: EpsModel,
        operator: LinearOperator,
        y: Tensor,
        alpha_bars: Tensor,
        timesteps: Tensor,
        noises: Tensor,
    ) -> Chain:
        """The DDNM chain of these noises, split as `preconditioner` says (and preconditioned for a parallel solve)."""

        def chain_of(eps: EpsModel, split: str = "x0") -> Chain:
            return ddnm_chain(
                eps,
                operator,
                y,
                alpha_bars,
                timesteps,
                self.sampling.eta,
                noises,
                weights=self.noise_weights,
                noise_weight=self.noise_weight,
                sigma_y=2 * self.sigma_y if self.noise_aware else 0.0,  # the signed scale: twice ours
                split=split,
            )

        chain = chain_of(eps_model, "null_space" if self.preconditioner == "official" else "x0")
        if self.sampling.parallel and self.preconditioner == "spectral":
            chain = precondition(chain, chain_of(spectral_prior_eps(alpha_bars, self.prior_variance)))
        return chain

    def _warn_of_noise_gain(self, operator: LinearOperator, shape: tuple[int, ...]) -> None:
        """Warn once per operator when noisy measurements meet a noise-amplifying operator without `noise_aware`."""
        if self.sigma_y == 0 or self.noise_aware or self.operator_name in self._warned_noise_gain:
            return
        gain = operator.noise_gain(shape)
        if gain > NOISE_GAIN_WARNING:
            self._warned_noise_gain.add(self.operator_name)
            warnings.warn(
                f"DeqIR restores a measurement with sigma_y={self.sigma_y} through the operator "
                f"{self.operator_name!r}, whose pseudo-inverse amplifies noise up to {gain:.3g} times; set "
                "model.init_args.noise_aware: true (DDNM+'s noise-aware correction)",
                stacklevel=3,
            )

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
        own operator (validation and test), post-processed with that measurement as the input, and the solve's
        iterations logged."""
        if "gt" not in batch:  # predict on measurements
            return self.restore(self.require_lq(batch))
        gt = batch["gt"]
        operator, measurement = self.measurement(gt)
        restored, solve = self.restoration_with(operator, measurement, tuple(gt.shape[-2:]), target=gt)
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
        return self.postprocessed(restored, measurement)


from ir_lightning.diffusion.deq.inversion import InversionResult, invert  # noqa: E402, F401  (moved; re-exported)
