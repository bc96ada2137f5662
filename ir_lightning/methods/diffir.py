"""DiffIR (Xia et al., ICCV 2023): a 4-step diffusion on a compact prior vector steers a transformer.

Training has two stages, each a LightningModule here, handed over through a checkpoint:

- `DiffIRS1`: CPEN_S1 sees the LQ and the ground truth and compresses them into the IR prior
  representation (IPR, 256 numbers); the DIRformer restores the LQ steered by it. L1 on pixels.
- `DiffIRS2`: CPEN_S1 (loaded from stage 1, frozen) becomes the teacher that gives the target IPR.
  CPEN_S2 sees the LQ only and conditions a small MLP denoiser that recovers the IPR in 4 reverse
  steps, unrolled with gradients. The DIRformer starts from stage 1's. For `prior_steps` steps
  only CPEN_S2 and the denoiser train, on L1(IPR); then everything trains jointly on
  L1(pixels) + L1(IPR). Restoration needs the LQ only: the IPR comes from noise in 4 steps.
- `DiffIRGAN` (optional, real SR): continues from a stage-2 checkpoint with a perceptual loss
  (VGG19 from a local weight file) and a U-Net discriminator with spectral norm.

Images stay in [0, 1] (no [-1, 1] mapping: the diffusion runs on the IPR, not on pixels). The
networks are `ir_lightning.nets.diffir`'s; the prior diffusion is `ir_lightning.diffusion.prior`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ir_lightning.diffusion.prior import noised_start, reverse_chain
from ir_lightning.io.weights import WeightsError, existing_file, key_report, read_checkpoint
from ir_lightning.losses import GANLoss, PerceptualLoss
from ir_lightning.methods.base import Restoration, RestorationModule
from ir_lightning.methods.settings import NoiseSchedule
from ir_lightning.nets.diffir import input_multiple
from ir_lightning.nets.padding import pad_to_multiple
from ir_lightning.training.optim import LRSchedule

OBJECT_ARGUMENTS = (
    "restorer",
    "cpen_s1",
    "cpen_s2",
    "denoiser",
    "discriminator",
    "perceptual",
    "gan_loss",
    "optimizer",
    "d_optimizer",
    "lr_schedule",
    "prior_lr_schedule",
    "d_lr_schedule",
)
"""Arguments of the DiffIR modules that are objects (kept out of the hyperparameters when built in Python)."""


Stage1CheckpointError = WeightsError
"""A stage-1 (or stage-2) checkpoint that does not fit the networks of the next stage: the suite's one
weight-file error (`ir_lightning.io.weights.WeightsError`), under the name this module gave it."""


PRIOR_SCHEDULE = NoiseSchedule(kind="quad", n_steps=4, linear_start=0.1, linear_end=0.99)
"""DiffIR's prior diffusion: T = 4, sqrt(beta) evenly spaced from sqrt(0.1) to sqrt(0.99) (betas 0.1, 0.294, 0.591, 0.99)."""


def upgrade_prior_schedule(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters written before `prior_schedule`, with `n_steps, beta_start, beta_end` gathered into it."""
    if "prior_schedule" in hparams or not any(key in hparams for key in ("n_steps", "beta_start", "beta_end")):
        return hparams
    hparams = dict(hparams)
    hparams["prior_schedule"] = {
        "kind": "quad",
        "n_steps": hparams.pop("n_steps", 4),
        "linear_start": hparams.pop("beta_start", 0.1),
        "linear_end": hparams.pop("beta_end", 0.99),
    }
    return hparams


class DiffIRS1(RestorationModule):
    """DiffIR stage 1: CPEN_S1(LQ, GT) -> IPR; DIRformer(LQ, IPR) -> restored; L1 on pixels.

    Validation restores with the ground truth's IPR (this stage's model needs it): its numbers are
    the upper bound stage 2 aims at, not a restoration of the LQ alone.

    Args:
        restorer: the DIRformer (`forward(lq, ipr)`).
        cpen_s1: stage 1's CPEN (`with_gt=True`; `forward(lq, gt) -> ipr`).
        scale: GT / LQ size ratio (1 for deblurring, 4 for x4 SR); the networks must agree.
        lr_schedule: learning rate against the optimizer step (`ir_lightning.training.optim`); None = constant.
        y_channel: compute PSNR/SSIM on the Y channel (default: RGB, as DiffIR reports deblurring).
        **kwargs: `RestorationModule`'s (optimizer, warmup_steps, crop_border, max_nonfinite_steps).
    """

    def __init__(
        self,
        restorer: nn.Module,
        cpen_s1: nn.Module,
        scale: int = 1,
        lr_schedule: LRSchedule | None = None,
        y_channel: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(y_channel=y_channel, **kwargs)
        self.save_hyperparameters_as_plain_data(ignore=self.objects_kept_out_of_hparams(*OBJECT_ARGUMENTS))
        self.scale, self.lr_schedule = scale, lr_schedule
        self.multiple = input_multiple(scale, unshuffle=getattr(restorer, "unshuffle", 1))  # real-SR x1/x2: 32/16
        self.restorer = restorer
        self.cpen_s1 = cpen_s1

    # --- shared by both stages ------------------------------------------------------------------
    def padded(self, lq: Tensor, gt: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """LQ padded (reflect) to a multiple of what the networks need, and the GT by `scale` times as much."""
        lq_padded = pad_to_multiple(lq, self.multiple)
        if gt is None:
            return lq_padded, None
        height, width = (s * self.scale for s in lq_padded.shape[-2:])
        if gt.shape[-2:] != (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale):
            raise ValueError(
                f"DiffIR x{self.scale}: gt {tuple(gt.shape[-2:])} is not {self.scale} x lq {tuple(lq.shape[-2:])}; "
                "model.init_args.scale and the degradation's (or the paired shards') scale must agree"
            )
        pad = (0, width - gt.shape[-1], 0, height - gt.shape[-2])
        return lq_padded, F.pad(gt, pad, mode="reflect") if any(pad) else gt

    def cropped(self, restored: Tensor, size: tuple[int, int] | None, lq: Tensor) -> Tensor:
        """The restored image at the target size (undoes `padded`), clamped to [0, 1]."""
        height, width = size if size is not None else (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale)
        return restored[..., :height, :width].clamp(0.0, 1.0)

    def restore_batch(self, batch: dict[str, Any]) -> Tensor:
        """Stage 1 restores with the GT's prior (`restore_with_gt`)."""
        if "gt" not in batch:
            return self.restore(self.require_lq(batch))  # stage 1's refusal, which says what to do
        return self.restore_with_gt(self.require_lq(batch), batch["gt"])

    def lr_schedules(self) -> list[LRSchedule | None]:
        return [self.lr_schedule]

    # --- stage 1 --------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        lq, gt = self.padded(self.require_lq(batch), batch["gt"])
        restored = self.restorer(lq, self.cpen_s1(lq, gt))
        return F.l1_loss(restored, gt)

    def restoration(
        self, lq: Tensor, *, size: tuple[int, int] | None = None, mask: Tensor | None = None, progress: bool = False
    ) -> Restoration:
        raise ValueError(
            "DiffIR stage 1 restores with the ground truth's prior (it is the teacher of stage 2): give "
            "batches with 'gt', or restore with a stage-2 (DiffIRS2) checkpoint"
        )

    @torch.no_grad()
    def restore_with_gt(self, lq: Tensor, gt: Tensor) -> Tensor:
        """Stage 1's restoration: the DIRformer steered by the prior of the ground truth, at `gt`'s size,
        post-processed (`postprocessed`) with `lq` as the input."""
        lq_padded, gt_padded = self.padded(lq, gt)
        restored = self.restorer(lq_padded, self.cpen_s1(lq_padded, gt_padded))
        return self.postprocessed(self.cropped(restored, tuple(gt.shape[-2:]), lq), lq)


class DiffIRS2(DiffIRS1):
    """DiffIR stage 2: CPEN_S2(LQ) and 4 denoising steps recover the IPR; the DIRformer restores.

    Training step: the teacher's IPR (frozen CPEN_S1 on LQ and GT) is noised to step T-1, the 4
    reverse steps run with gradients from there (conditioned on CPEN_S2(LQ)), and L1 pulls their
    result to the teacher's IPR. From step `prior_steps` on, the DIRformer restores with that IPR
    and L1 on pixels joins in (DiffIR eq. 11); before, the DIRformer is left alone (its gradients
    are dropped and its learning rate is 0). Restoration starts the 4 steps from N(0, I).

    Args:
        restorer, cpen_s1: as in stage 1; both are loaded from `stage1_ckpt` at the start of fit
            (CPEN_S1 strictly, the DIRformer non-strictly, listing what did not load).
        cpen_s2: stage 2's CPEN (`with_gt=False`; `forward(lq) -> c`).
        denoiser: the IPR denoiser (`forward(z_t, t, c) -> ipr_hat`), with `prior_schedule.n_steps` steps.
        stage1_ckpt: stage 1's checkpoint (its EMA weights, `state_dict`). Read when a fit starts
            afresh (a resumed fit has them in its own checkpoint); None = start from the networks
            as given (only sensible in tests).
        prior_steps: optimizer steps during which only CPEN_S2 and the denoiser train (100k in the paper).
        prior_lr_schedule: their learning rate during those steps (paper: x0.1 every 60k).
        lr_schedule: everyone's learning rate in the joint phase, counted from step 0 of training
            (use `start: <prior_steps>` to count from the joint phase's start, as the paper).
        prior_schedule: the prior diffusion (`PRIOR_SCHEDULE`: T = 4, sqrt(beta) linear 0.1 .. 0.99).
        ipr_loss_weight, pixel_loss_weight: weights of L1(IPR) and L1(pixels).
        sample_seed: seed of the starting noise at validation/test/predict.
        **kwargs: stage 1's (scale, y_channel) and `RestorationModule`'s.
    """

    TRAINING_ONLY = ("cpen_s1",)  # the teacher: restoration needs CPEN_S2, the denoiser and the DIRformer

    def __init__(
        self,
        restorer: nn.Module,
        cpen_s1: nn.Module,
        cpen_s2: nn.Module,
        denoiser: nn.Module,
        stage1_ckpt: str | None = None,
        prior_steps: int = 0,
        prior_lr_schedule: LRSchedule | None = None,
        prior_schedule: NoiseSchedule = PRIOR_SCHEDULE,
        ipr_loss_weight: float = 1.0,
        pixel_loss_weight: float = 1.0,
        sample_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(restorer, cpen_s1, **kwargs)
        if prior_steps < 0:
            raise ValueError(f"model.init_args.prior_steps must be >= 0, got {prior_steps}")
        self.cpen_s2, self.denoiser = cpen_s2, denoiser
        self.cpen_s1.requires_grad_(False)  # the teacher: frozen
        self.stage1_ckpt, self.prior_steps, self.prior_lr_schedule = stage1_ckpt, prior_steps, prior_lr_schedule
        self.gammas = NoiseSchedule.of(prior_schedule).gammas()  # float64, off the buffers (moved where used)
        self.ipr_loss_weight, self.pixel_loss_weight, self.sample_seed = ipr_loss_weight, pixel_loss_weight, sample_seed

    @classmethod
    def upgrade_hyperparameters(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        return upgrade_prior_schedule(hparams)

    restore_batch = RestorationModule.restore_batch  # stage 2 restores from the LQ alone

    # --- the stage-1 hand-off -------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        resuming = self.attached_trainer is not None and self.trainer.ckpt_path is not None
        if stage == "fit" and not resuming:  # a resumed fit has every weight in its own checkpoint
            self.load_previous_stage()

    def load_previous_stage(self) -> None:
        """Load the weights this stage starts from (stage 1's), if a checkpoint is named."""
        if self.stage1_ckpt is not None:
            self.load_stage1(self.stage1_ckpt)

    def load_stage1(self, path: str | Path) -> dict[str, list[str]]:
        """Load CPEN_S1 (strictly) and the DIRformer (non-strictly) from a stage-1 checkpoint.

        Raises `Stage1CheckpointError` naming the keys when CPEN_S1 does not match, when a DIRformer
        tensor has another shape, or when no DIRformer weight loads at all; warns with the list of
        DIRformer keys that were missing or unexpected. Returns those lists.
        """
        weights = read_weights(path, "model.init_args.stage1_ckpt", "train stage 1 first")
        teacher = _part(weights, "cpen_s1.")
        report = _compare(self.cpen_s1.state_dict(), teacher)
        if any(report.values()):
            raise Stage1CheckpointError(
                f"{path}: CPEN_S1 does not match model.init_args.cpen_s1 (set it as in the stage-1 recipe): {_describe(report)}"
            )
        restorer = _part(weights, "restorer.")
        report = _compare(self.restorer.state_dict(), restorer)
        if report["shape"]:
            raise Stage1CheckpointError(
                f"{path}: the DIRformer does not match model.init_args.restorer: {_describe({'shape': report['shape']})}"
            )
        if not set(restorer) & set(self.restorer.state_dict()):
            raise Stage1CheckpointError(
                f"{path}: no DIRformer weight (restorer.*) loads: is it a DiffIR stage-1 checkpoint?"
            )
        self.cpen_s1.load_state_dict(teacher)
        self.restorer.load_state_dict(restorer, strict=False)
        loaded = len(set(restorer) & set(self.restorer.state_dict()))
        rank_zero_info(f"stage 1 from {path}: CPEN_S1 ({len(teacher)} tensors, frozen), DIRformer ({loaded} tensors)")
        if report["missing"] or report["unexpected"]:
            warnings.warn(f"{path}: DIRformer loaded non-strictly: {_describe(report)}", stacklevel=2)
        return {"missing": report["missing"], "unexpected": report["unexpected"]}

    # --- training --------------------------------------------------------------------------------
    def in_prior_phase(self) -> bool:
        return self.global_step < self.prior_steps

    def param_groups(self) -> list[dict[str, Any]]:
        prior = [*self.cpen_s2.parameters(), *self.denoiser.parameters()]
        return [{"params": prior, "name": "prior"}, {"params": list(self.restorer.parameters()), "name": "restorer"}]

    def lr_schedules(self) -> list[LRSchedule | None]:
        return [
            _Phased(self.prior_steps, self.prior_lr_schedule, self.lr_schedule, rest_at_zero=False),
            _Phased(self.prior_steps, None, self.lr_schedule, rest_at_zero=True),
        ]

    def predict_ipr(self, lq: Tensor, start: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """The 4 reverse steps from `start` (z_{T-1}; None: drawn from N(0, I) with `generator`),
        conditioned on c = CPEN_S2(LQ); returns z_0, the IPR."""
        c = self.cpen_s2(lq)
        if start is None:
            start = torch.randn(c.shape, generator=generator, device=c.device, dtype=c.dtype)
        return reverse_chain(lambda z, t: self.denoiser(z, t, c), start, self.on_device(self.gammas, lq.device))[-1]

    def teacher_and_student_ipr(self, lq: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
        """The teacher's IPR (frozen CPEN_S1 on LQ and GT) and stage 2's: the 4 reverse steps, with
        gradients, from the teacher's IPR noised to step T-1 (DiffIR's training chain)."""
        with torch.no_grad():
            target = self.cpen_s1(lq, gt)
        generator = self.training_generator()
        noise = torch.randn(target.shape, generator=generator, device=target.device, dtype=target.dtype)
        return target, self.predict_ipr(lq, noised_start(target, self.on_device(self.gammas, lq.device), noise))

    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        lq, gt = self.padded(self.require_lq(batch), batch["gt"])
        target, ipr = self.teacher_and_student_ipr(lq, gt)
        ipr_loss = F.l1_loss(ipr, target)
        batch_size = lq.shape[0]
        self.log("train/ipr_loss", ipr_loss, batch_size=batch_size)
        if self.in_prior_phase():
            # the DIRformer sits out; a zero term over its weights keeps DDP's gradient buckets complete
            return self.ipr_loss_weight * ipr_loss + self.zero_touching(self.restorer.parameters(), ipr_loss)
        pixel_loss = F.l1_loss(self.restorer(lq, ipr), gt)
        self.log("train/pixel_loss", pixel_loss, batch_size=batch_size)
        return self.pixel_loss_weight * pixel_loss + self.ipr_loss_weight * ipr_loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        if self.in_prior_phase():
            for p in self.restorer.parameters():
                p.grad = None  # Adam leaves a parameter without gradient alone: no moment, no step count

    # --- restoration -----------------------------------------------------------------------------
    @torch.no_grad()
    def restoration(
        self, lq: Tensor, *, size: tuple[int, int] | None = None, mask: Tensor | None = None, progress: bool = False
    ) -> Restoration:
        """Restored images in [0, 1]; the IPR comes from N(0, I) (seeded by `sample_seed`) in the prior's 4 steps."""
        self.no_mask(mask)
        lq_padded, _ = self.padded(lq)
        generator = torch.Generator(device=lq.device).manual_seed(self.sample_seed)
        return Restoration(
            self.cropped(self.restorer(lq_padded, self.predict_ipr(lq_padded, generator=generator)), size, lq)
        )


def adam_discriminator(params: Any) -> torch.optim.Optimizer:
    """Default discriminator optimizer: Adam 1e-4, betas (0.9, 0.99) (DiffIR's and Real-ESRGAN's optim_d)."""
    return torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.99))


class DiffIRGAN(DiffIRS2):
    """DiffIR stage 2 with adversarial training ("S2-GAN", real-world SR): perceptual quality over PSNR.

    Starts from a stage-2 checkpoint (`stage2_ckpt`, every generator weight loaded strictly, the
    frozen teacher included) and trains the whole generator (DIRformer, CPEN_S2, denoiser) on
    L1(pixels) + L1(IPR) + perceptual + adversarial losses, alternating with a discriminator step
    on BCE(real) + BCE(fake), as the official GAN model does (its prior-only phase is unused there
    too). Two optimizers with manual optimization: Lightning counts both steps in `global_step`,
    so `trainer.max_steps` is twice the number of iterations (LR schedules count iterations).
    Under DDP set `trainer.strategy: ddp_find_unused_parameters_true` (each backward reaches only
    one of the two networks). Manual optimization does not support `trainer.gradient_clip_val`.

    The VGG19 of the perceptual loss stays out of the checkpoints (80 MB of fixed weights): it is
    rebuilt from its weight file, which the recipe names.

    Args:
        discriminator: per-pixel realness logits (e.g. `UNetDiscriminatorSN`).
        perceptual: `ir_lightning.losses.PerceptualLoss` (needs a local VGG19 weight file); None = no
            perceptual term.
        gan_loss: `ir_lightning.losses.GANLoss` (its `loss_weight` weighs the generator's term).
        stage2_ckpt: the stage-2 checkpoint to start from (read when a fit starts afresh).
        d_optimizer, d_lr_schedule: the discriminator's optimizer and learning rate.
        restorer, cpen_s1, cpen_s2, denoiser: as in `DiffIRS2`.
        scale, y_channel: as in stage 1 (defaults for real-world x4 SR).
        **kwargs: `DiffIRS2`'s (lr_schedule, prior_schedule, ipr_loss_weight, pixel_loss_weight, sample_seed) but
            its stage-1 hand-off and prior-only phase, and `RestorationModule`'s.
    """

    TRAINING_ONLY = ("cpen_s1", "discriminator")

    def __init__(
        self,
        restorer: nn.Module,
        cpen_s1: nn.Module,
        cpen_s2: nn.Module,
        denoiser: nn.Module,
        discriminator: nn.Module,
        perceptual: PerceptualLoss | None = None,
        gan_loss: GANLoss | None = None,
        stage2_ckpt: str | None = None,
        d_optimizer: OptimizerCallable = adam_discriminator,
        d_lr_schedule: LRSchedule | None = None,
        scale: int = 4,
        y_channel: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            restorer,
            cpen_s1,
            cpen_s2,
            denoiser,
            stage1_ckpt=None,
            prior_steps=0,
            prior_lr_schedule=None,
            scale=scale,
            y_channel=y_channel,
            **kwargs,
        )
        for fixed in ("stage1_ckpt", "prior_steps", "prior_lr_schedule"):  # set by this stage, not settings of it
            self.hparams.pop(fixed, None)
        self.automatic_optimization = False
        self.discriminator = discriminator
        self.__dict__["perceptual"] = perceptual  # not a submodule: its fixed VGG stays out of the state_dict
        self.gan_loss = gan_loss if gan_loss is not None else GANLoss()
        self.stage2_ckpt, self.d_optimizer_factory, self.d_lr_schedule = stage2_ckpt, d_optimizer, d_lr_schedule

    def shared_in_copies(self) -> tuple[Any, ...]:
        return (self.perceptual, self.d_optimizer_factory)  # the EMA copy needs neither the VGG nor a factory

    def load_previous_stage(self) -> None:
        if self.stage2_ckpt is not None:
            self.load_stage2(self.stage2_ckpt)

    def load_stage2(self, path: str | Path) -> None:
        """Load every generator weight (all but the discriminator's) strictly from a stage-2 checkpoint;
        raises `Stage1CheckpointError` naming the keys that do not match."""
        weights = read_weights(path, "model.init_args.stage2_ckpt", "train stage 2 first")
        expected = {k: v for k, v in self.state_dict().items() if not k.startswith("discriminator.")}
        given = {k: v for k, v in weights.items() if not k.startswith("discriminator.")}
        report = _compare(expected, given)
        if any(report.values()):
            raise Stage1CheckpointError(f"{path}: the stage-2 networks do not match this config: {_describe(report)}")
        self.load_state_dict(given, strict=False)
        rank_zero_info(f"stage 2 from {path}: {len(given)} generator tensors; the discriminator starts afresh")

    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("discriminator.")]

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.generator_parameters(), "name": "generator"}]

    def lr_schedules(self) -> list[LRSchedule | None]:
        return [self.lr_schedule]

    def configure_optimizers(self) -> Any:
        generator = self.optimizer_with_schedules(self.optimizer_factory, self.param_groups(), self.lr_schedules())
        discriminator = self.optimizer_with_schedules(
            self.d_optimizer_factory,
            [{"params": list(self.discriminator.parameters()), "name": "discriminator"}],
            [self.d_lr_schedule],
        )
        return [generator, discriminator]

    def generator_losses(self, lq: Tensor, gt: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The generator's loss terms (weighted) and its restoration."""
        target, ipr = self.teacher_and_student_ipr(lq, gt)
        restored = self.restorer(lq, ipr)
        losses = {
            "pixel_loss": self.pixel_loss_weight * F.l1_loss(restored, gt),
            "ipr_loss": self.ipr_loss_weight * F.l1_loss(ipr, target),
            "gan_loss": self.gan_loss(self.discriminator(restored), target_is_real=True),
        }
        if self.perceptual is not None:
            losses["perceptual_loss"] = self.perceptual.to(restored.device)(restored, gt)
        return losses, restored

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        lq, gt = self.padded(self.require_lq(batch), batch["gt"])
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        self.discriminator.requires_grad_(False)  # the generator's step leaves the discriminator alone
        losses, restored = self.generator_losses(lq, gt)
        loss_g = sum(losses.values())
        self.discriminator.requires_grad_(True)
        real = self.gan_loss(self.discriminator(gt), target_is_real=True, is_discriminator=True)
        fake = self.gan_loss(self.discriminator(restored.detach()), target_is_real=False, is_discriminator=True)
        loss_d = real + fake
        if self._nonfinite_anywhere(loss_g + loss_d):
            self.count_nonfinite_step(loss_g + loss_d)  # neither network steps
            return loss_g.detach()
        self.nonfinite_steps["consecutive"] = 0
        for optimizer, scheduler, loss in ((opt_g, sched_g, loss_g), (opt_d, sched_d, loss_d)):
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
            scheduler.step()
        size = lq.shape[0]
        self.log("train/loss", loss_g, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=size)
        self.log_dict({"train/d_real": real, "train/d_fake": fake}, batch_size=size)
        return loss_g.detach()


def read_weights(path: str | Path, argument: str, hint: str) -> dict[str, Tensor]:
    """The EMA weights (`state_dict`) of one of our checkpoints, read without running or importing anything it
    names (`ir_lightning.io.weights.read_checkpoint`: a file that is no checkpoint of the suite is refused naming it)."""
    path = existing_file(path, f"{argument}: {path} does not exist ({hint})")  # a MissingWeightsFile, else
    return read_checkpoint(path)["state_dict"]  # the EMA weights, where the EMA callback ran


class _Phased(LRSchedule):
    """`before` until step `switch`, `after` from there; `rest_at_zero`: rate 0 before the switch."""

    def __init__(self, switch: int, before: LRSchedule | None, after: LRSchedule | None, rest_at_zero: bool) -> None:
        self.switch, self.before, self.after, self.rest_at_zero = switch, before, after, rest_at_zero

    def __call__(self, step: int, base_lr: float) -> float:
        if step < self.switch:
            if self.rest_at_zero:
                return 0.0
            return self.before(step, base_lr) if self.before is not None else base_lr
        return self.after(step, base_lr) if self.after is not None else base_lr


def _part(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}


def _compare(expected: dict[str, Tensor], given: dict[str, Tensor]) -> dict[str, list[str]]:
    """Keys missing from `given`, unexpected in it, and present with another shape (`io.weights.key_report`), sorted."""
    report = key_report(given, expected)
    return {
        "missing": sorted(report.missing),
        "unexpected": sorted(report.unexpected),
        "shape": sorted(f"{key} {found} vs {shape}" for key, found, shape in report.mismatched),
    }


def _describe(report: dict[str, list[str]], limit: int = 8) -> str:
    parts = []
    for kind, keys in report.items():
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            parts.append(f"{kind}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)
