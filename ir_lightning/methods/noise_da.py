"""Denoising as Adaptation (Liao et al.): adapt a restorer from synthetic to real degradations
through a diffusion loss.

A restorer R (any network; default the residual U-Net) is trained on synthetic pairs with a
Charbonnier loss. Jointly, a diffusion U-Net D learns to denoise the *clean synthetic target*,
conditioned on two restored images: R's output on the synthetic input and on a real degraded
input (whose clean image nobody has). D's denoising loss is low only when both conditions look
like clean images, so its gradient pulls R's real outputs toward the clean distribution. Two
devices keep D from cheating:

- channel shuffling: per sample, with probability 1/2, the two condition slots swap, so D cannot
  tell the synthetic output (whose GT it denoises) from the real one by its slot;
- residual-swapping contrastive learning: negatives y_syn + r_real and y_real + r_syn (each input
  with the other domain's predicted residual) must predict the noise worse than the true pair, by
  a margin: a triplet on the predicted noise.

L = Charbonnier(R(x_syn), y_syn) + lambda(p) (MSE(eps, eps_hat) + triplet) / 2, lambda ramping up
over training. D is thrown away: the exported checkpoint holds R alone (`export_restorer`).

Batches (`datamodules.AdaptationDataModule`): `gt` and `lq` (the synthetic pair) and `real_lq`
(the real domain); validation batches are real-domain `lq` with `gt`. Images are in [0, 1]; R and D
each work in the range their setting names (`restorer_range`, `diffusion_range`: the official code runs
both in [0, 1] for denoising and in [-1, 1] for deraining and deblurring).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ir_lightning.diffusion import noised_training_sample
from ir_lightning.diffusion.ranges import to_signed
from ir_lightning.losses import charbonnier
from ir_lightning.methods.base import Restoration, RestorationModule
from ir_lightning.methods.settings import NoiseSchedule
from ir_lightning.nets.padding import pad_to_multiple

ValueRange = Literal["unit", "signed"]
"""A network's value range: "unit" = [0, 1] (the batches'), "signed" = [-1, 1]."""

CONDITION_SLOTS = 2
"""D sees concat([noisy target, slot a, slot b]): 3 + 2 x 3 = 9 channels."""


def ramp(progress: float, weight: float = 0.2, steepness: float = 5.0) -> float:
    """lambda(p) = (2 / (1 + exp(-steepness p)) - 1) * weight, p clamped to [0, 1] (the paper's ramp)."""
    p = min(max(progress, 0.0), 1.0)
    return (2.0 / (1.0 + math.exp(-steepness * p)) - 1.0) * weight


def draw_swaps(batch_size: int, probability: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Which samples swap their two condition slots: True with `probability`, independently per sample."""
    return torch.rand(batch_size, generator=generator, device=device) < probability


def shuffle_slots(first: Tensor, second: Tensor, swap: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, swap the two condition images where `swap` (B,) is True; each pair stays intact."""
    mask = swap.reshape(-1, *([1] * (first.ndim - 1)))
    return torch.where(mask, second, first), torch.where(mask, first, second)


def into_range(x: Tensor, value_range: ValueRange) -> Tensor:
    """A [0, 1] image in `value_range` (unclamped: a restored image may overshoot)."""
    return x if value_range == "unit" else to_signed(x)


def swapped_residual_negatives(
    lq_syn: Tensor, lq_real: Tensor, res_syn: Tensor, res_real: Tensor
) -> tuple[Tensor, Tensor]:
    """The contrastive negatives: each domain's input corrected with the other domain's residual,
    (y_syn + r_real, y_real + r_syn)."""
    return lq_syn + res_real, lq_real + res_syn


def scale_gradient(x: Tensor, weight: float) -> Tensor:
    """x in the forward pass; its gradient multiplied by `weight` in the backward pass."""
    return x * weight + x.detach() * (1.0 - weight)


def combined_noise_loss(denoise: Tensor, contrast: Tensor | None) -> Tensor:
    """L_noise = (MSE(eps, eps_hat) + triplet) / 2, or the MSE alone without the contrastive term."""
    return denoise if contrast is None else (denoise + contrast) / 2


def triplet(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 0.1) -> Tensor:
    """max(0, MSE(anchor, positive) - MSE(anchor, negative) + margin), distances over the whole batch."""
    return F.relu(F.mse_loss(positive, anchor) - F.mse_loss(negative, anchor) + margin)


class DenoisingAsAdaptation(RestorationModule):
    """Denoising-as-Adaptation LightningModule.

    Args:
        restorer: the restoration network (`forward(lq) -> restored`, same size). If it has a
            `residual(lq)` method (as `ResidualUNet`), the residual is taken from it; otherwise it is
            `restorer(lq) - lq`.
        diffusion: D, `forward(concat([y_noisy, a, b]), sqrt(gamma)) -> eps_hat` (9 channels in, 3 out), e.g.
            an SR3 `UNet`.
        schedule: D's noise schedule (the paper: linear 1e-6 .. 1e-2, T = 1000); noise levels are
            drawn between neighbouring steps, as in SR3.
        noise_weight: the ramp's final weight (0.2).
        ramp_steps: optimizer steps over which the ramp's p goes from 0 to 1 (the paper: 300 epochs).
        shuffle_prob: probability of swapping the two condition slots, per sample (0.5).
        contrastive: the residual-swapping triplet term; False = the variant that noises an
            unpaired clean reference (the batch's `ref`, else the GT of another sample of the batch,
            so target and conditions are unpaired) and has no triplet.
        margin: the triplet margin (0.1).
        ramp_restorer_only: False (the paper): the ramp weighs the whole diffusion loss. True: D's loss is
            at full weight and only the gradient that reaches the restorer through the conditions is
            ramped (the conditions' gradients are scaled). The restorer gets the same gradient either way.
            Under Adam, D's update barely differs either: D's parameters get only the ramped loss's gradient,
            and Adam's step m / sqrt(v) does not change when a gradient is multiplied by a constant, nor
            much when the factor varies slowly (the ramp changes by a small fraction per step, except in its
            first few steps from 0 and for Adam's eps). So the option is near-equivalent to the paper's
            setting, not a way to let D "learn first"; with SGD it would differ.
        charbonnier_eps: the Charbonnier loss's eps (1e-3).
        restorer_range: the range R works in and its pixel loss is measured in: "unit" ([0, 1]; the official
            denoising) or "signed" ([-1, 1]; the official deraining and deblurring, and what the released
            `derain.pth` and `deblur.pth` expect).
        diffusion_range: the range of D's noised target and conditions: "signed" (the suite's default) or
            "unit" (the official denoising).
        y_channel: compute PSNR/SSIM on the Y channel (default: RGB).
        **kwargs: `RestorationModule`'s (optimizer, warmup_steps, crop_border, max_nonfinite_steps).
    """

    TRAINING_ONLY = ("diffusion",)  # D only shapes the loss: exports hold the restorer alone

    def __init__(
        self,
        restorer: nn.Module,
        diffusion: nn.Module,
        schedule: NoiseSchedule = NoiseSchedule(kind="linear", n_steps=1000, linear_start=1e-6, linear_end=1e-2),
        noise_weight: float = 0.2,
        ramp_steps: int = 10000,
        shuffle_prob: float = 0.5,
        contrastive: bool = True,
        margin: float = 0.1,
        ramp_restorer_only: bool = False,
        charbonnier_eps: float = 1e-3,
        restorer_range: ValueRange = "unit",
        diffusion_range: ValueRange = "signed",
        y_channel: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(y_channel=y_channel, **kwargs)
        self.save_hyperparameters_as_plain_data(
            ignore=self.objects_kept_out_of_hparams("restorer", "diffusion", "optimizer")
        )
        schedule = NoiseSchedule.of(schedule)
        if ramp_steps < 1:
            raise ValueError(f"model.init_args.ramp_steps must be >= 1, got {ramp_steps}")
        if not 0.0 <= shuffle_prob <= 1.0:
            raise ValueError(f"model.init_args.shuffle_prob must be in [0, 1], got {shuffle_prob}")
        self.restorer, self.diffusion = restorer, diffusion
        self.gammas = schedule.gammas()  # float64, off the buffers (moved where used)
        self.noise_weight, self.ramp_steps, self.shuffle_prob = noise_weight, ramp_steps, shuffle_prob
        self.contrastive, self.margin, self.charbonnier_eps = contrastive, margin, charbonnier_eps
        self.ramp_restorer_only = ramp_restorer_only
        for name, value in (("restorer_range", restorer_range), ("diffusion_range", diffusion_range)):
            if value not in ("unit", "signed"):
                raise ValueError(f"model.init_args.{name} must be 'unit' or 'signed', got {value!r}")
        self.restorer_range, self.diffusion_range = restorer_range, diffusion_range

    # --- the restorer -----------------------------------------------------------------------------
    def residual(self, lq: Tensor) -> Tensor:
        """R's correction of `lq` in [0, 1] units (restored = lq + residual), R run in `restorer_range`."""
        x = into_range(lq, self.restorer_range)
        residual = self.restorer.residual(x) if hasattr(self.restorer, "residual") else self.restorer(x) - x
        return residual if self.restorer_range == "unit" else residual / 2  # [-1, 1] -> [0, 1] units

    @torch.no_grad()
    def restoration(
        self, lq: Tensor, *, size: tuple[int, int] | None = None, mask: Tensor | None = None, progress: bool = False
    ) -> Restoration:
        """The restorer alone (the diffusion network plays no part in restoration); same size as `lq`."""
        self.no_mask(mask)
        if size is not None and tuple(size) != tuple(lq.shape[-2:]):
            raise ValueError(
                f"Denoising as Adaptation restores at the input's size {tuple(lq.shape[-2:])}, not {tuple(size)}"
            )
        multiple = getattr(self.restorer, "pad_multiple", 1)
        height, width = lq.shape[-2:]
        padded = pad_to_multiple(lq, multiple)
        restored = (padded + self.residual(padded))[..., :height, :width]
        return Restoration(restored.clamp(0.0, 1.0))

    # --- training ---------------------------------------------------------------------------------
    def noise_loss_weight(self) -> float:
        return ramp(self.global_step / self.ramp_steps, self.noise_weight)

    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        lq_syn, gt, lq_real = self.require_lq(batch), batch["gt"], self.require_real(batch)
        res_syn = self.residual(lq_syn)
        restored, target = (into_range(x, self.restorer_range) for x in (lq_syn + res_syn, gt))
        pixel_loss = charbonnier(restored, target, self.charbonnier_eps)  # in R's range, as the official code
        batch_size = gt.shape[0]
        if self.noise_weight == 0.0 and not self.ramp_restorer_only:
            # the synthetic-only baseline: nothing would ever reach D, so neither network runs for it
            self.log("train/pixel_loss", pixel_loss, batch_size=batch_size)
            return pixel_loss + self.zero_touching(self.diffusion.parameters(), pixel_loss)
        res_real = self.residual(lq_real)
        weight = self.noise_loss_weight()
        denoise_loss, contrast = self.noise_terms(
            batch, res_syn, res_real, self.training_generator(), weight if self.ramp_restorer_only else 1.0
        )
        noise_loss = combined_noise_loss(denoise_loss, contrast)
        if contrast is not None:
            self.log("train/triplet", contrast, batch_size=batch_size)
        self.log_dict(
            {"train/pixel_loss": pixel_loss, "train/noise_loss": noise_loss, "train/noise_weight": weight},
            batch_size=batch_size,
        )
        if self.ramp_restorer_only:
            return pixel_loss + noise_loss  # D at full weight; the restorer's share was scaled in `noise_terms`
        return pixel_loss + weight * noise_loss

    def noise_terms(
        self,
        batch: dict[str, Any],
        res_syn: Tensor,
        res_real: Tensor,
        generator: torch.Generator,
        restorer_share: float = 1.0,
    ) -> tuple[Tensor, Tensor | None]:
        """D's denoising MSE on the noised clean target given the (shuffled) restored pair, and the
        triplet against the residual-swapped negatives (None without `contrastive`).

        `restorer_share` scales the gradient that flows back into the conditions (and so into the
        restorer) without changing the values.
        """
        lq_syn, gt, lq_real = batch["lq"], batch["gt"], batch["real_lq"]
        batch_size, device = gt.shape[0], gt.device
        target = gt if self.contrastive else self.unpaired_reference(batch, generator)
        y_noisy, level, noise = noised_training_sample(
            into_range(target, self.diffusion_range), self.on_device(self.gammas, device), generator
        )

        def predict(a: Tensor, b: Tensor) -> Tensor:
            if restorer_share != 1.0:
                a, b = scale_gradient(a, restorer_share), scale_gradient(b, restorer_share)
            swap = draw_swaps(batch_size, self.shuffle_prob, generator, device)
            slot_a, slot_b = shuffle_slots(
                into_range(a, self.diffusion_range), into_range(b, self.diffusion_range), swap
            )
            return self.diffusion(torch.cat([y_noisy, slot_a, slot_b], dim=1), level)

        eps_hat = predict(lq_syn + res_syn, lq_real + res_real)
        denoise_loss = F.mse_loss(eps_hat, noise)
        if not self.contrastive:
            return denoise_loss, None
        eps_hat_neg = predict(*swapped_residual_negatives(lq_syn, lq_real, res_syn, res_real))
        return denoise_loss, triplet(noise, eps_hat, eps_hat_neg, self.margin)

    def require_real(self, batch: dict[str, Any]) -> Tensor:
        if "real_lq" not in batch:
            raise KeyError(
                "batch has no 'real_lq': Denoising as Adaptation trains on two streams; use "
                "data: class_path: datamodules.AdaptationDataModule (synthetic pairs + real degraded images)"
            )
        return batch["real_lq"]

    @staticmethod
    def unpaired_reference(batch: dict[str, Any], generator: torch.Generator) -> Tensor:
        """The clean image to noise in the variant without contrast: the batch's `ref`, else the GT of
        another sample (a random derangement of the batch), so it is unpaired with the conditions."""
        if "ref" in batch:
            return batch["ref"]
        gt = batch["gt"]
        size = gt.shape[0]
        if size < 2:
            raise ValueError("the unpaired-reference variant needs a batch 'ref' or a batch of at least 2")
        shift = int(torch.randint(1, size, (1,), generator=generator, device=gt.device))
        return gt.roll(shift, dims=0)  # a cyclic shift by 1..B-1: no sample keeps its own GT
