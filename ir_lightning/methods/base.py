"""What every restoration method shares, written once: the method contract, optimizer and warm-up,
logging of the training loss and of skipped samples, paper-protocol metrics at validation and test, and
the predict step.

The contract (what `restore`, `evaluate`, `demo` and validation call, and nothing else):

- `restore(lq, *, size=None, mask=None, progress=False) -> Tensor`: restored images in [0, 1];
- `restore_batch(batch) -> Tensor`: the same for a batch of the data contract (`lq`, and `gt` whose size
  sets the output's, `mask` where the method takes one);
- `restoration(lq, ...) -> Restoration`: the image and the report of a parallel solve, for those who want it.

A method subclasses `RestorationModule` and implements `training_loss(batch) -> Tensor` (its objective on a
batch in [0, 1]) and `restoration(...)` (validation runs with the EMA weights: Lightning's
`EMAWeightAveraging` swaps them in before validation). Its networks are required constructor arguments;
the base class's arguments (`optimizer, warmup_steps, crop_border, y_channel, max_nonfinite_steps, color_fix,
consistency`) pass through `**kwargs`, which LightningCLI follows into `--help` and `--print_config`.

`restore` applies the post-processing every method has (`color_fix`, `consistency`:
`ir_lightning.inference.postprocess`) to what `restoration` returns, so validation, test, predict, `ir-lightning
restore`, `evaluate`, `demo` and the Python API all get it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable

# Private: the context variable LightningCLI sets while it builds the model from a config; no public API says
# whether a module is being built from a config (its hyperparameters) or in Python (live objects).
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn

from ir_lightning.inference import postprocess
from ir_lightning.io.weights import check_checkpoint, key_report, read_checkpoint, safe_load
from ir_lightning.metrics.psnr_ssim import RestorationMetrics
from ir_lightning.training.optim import LRSchedule, lr_factor
from ir_lightning.training.seeding import GLOBAL_DRAWS, TRAINING_DRAWS, derived_seed


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many consecutive non-finite losses."""


def adam(params: Any) -> torch.optim.Optimizer:
    """Default optimizer: Adam, lr 1e-4 (SR3), fused (one kernel for all tensors, CPU and CUDA)."""
    return torch.optim.Adam(params, lr=1e-4, fused=True)


class Restoration(NamedTuple):
    """What `RestorationModule.restoration` returns: the restored images in [0, 1] and, where a parallel solver
    ran, the solve's report (`diffusion.deq.SolveResult`: residuals, iterations, `stopped_by`, counts; its
    `states` and `x0` left empty, so the report holds no images)."""

    image: Tensor
    solve: Any = None

    @classmethod
    def of(cls, image: Tensor, solve: Any = None) -> Restoration:
        if solve is not None:
            solve = dataclasses.replace(solve, x0=solve.x0.new_empty(0), states=solve.states.new_empty(0))
        return cls(image, solve)


class RestorationModule(pl.LightningModule):
    """Base LightningModule of the suite (see the module docstring).

    Args:
        optimizer: a callable that builds the optimizer from the parameters (in YAML: a
            `class_path` such as `torch.optim.Adam` with `init_args`).
        warmup_steps: linear learning-rate warm-up from 0 over this many optimizer steps.
        crop_border: pixels cropped on each side before PSNR/SSIM (the scale, for SR).
        y_channel: compute PSNR/SSIM on the Y channel (BT.601, MATLAB coefficients).
        max_nonfinite_steps: a step whose loss is NaN or infinite (on any rank) is skipped on every
            rank (no change to weights or optimizer state) and counted (`train/nonfinite_steps`); after
            this many in a row, training stops with `NonFiniteLossError`, having saved the last
            good weights to the checkpoint callback's `last.ckpt`.
        color_fix: `none`, `wavelet` or `adain`: give the restored image the low frequencies (colours) of the
            input, up-sampled bicubically for SR (`inference.postprocess.color_fix`); off for the grey inputs of
            a method that colourises (their colours are what it adds).
        consistency: None, or the operator of the data's degradation by `make_operator` name (`bicubic4` for
            MATLAB-bicubic x4 data, `sr4`, `deblur_gauss`, ...): project the restored image so that degrading
            it gives the input again, kept in [0, 1] (`inference.postprocess.consistent`). Applied after the
            colour fix, so A x = y holds at the end. Only for known linear degradations.

    Randomness: every draw of a training step (the method's noise through `training_generator`,
    dropout through torch's global generator, reseeded at each step) is a function of the global
    seed, the rank and the step, so a resumed run draws what an uninterrupted one would have.
    """

    SAMPLERS: tuple[str, ...] = ()
    """The samplers a diffusion method offers in its `sampling` settings (none: it has no sampling settings)."""

    def __init__(
        self,
        *,
        optimizer: OptimizerCallable = adam,
        warmup_steps: int = 0,
        crop_border: int = 0,
        y_channel: bool = True,
        max_nonfinite_steps: int = 20,
        color_fix: str = "none",
        consistency: str | None = None,
    ) -> None:
        super().__init__()
        if color_fix not in postprocess.COLOR_FIX_METHODS:
            valid = ", ".join(postprocess.COLOR_FIX_METHODS)
            raise ValueError(f"model.init_args.color_fix must be one of {valid}, got {color_fix!r}")
        consistency = None if consistency in (None, "none") else consistency
        if consistency is not None:
            try:
                postprocess.check_operator_name(consistency)
            except ValueError as error:
                raise ValueError(f"model.init_args.consistency: {error}") from error
        for name, value, minimum in (
            ("max_nonfinite_steps", max_nonfinite_steps, 1),
            ("warmup_steps", warmup_steps, 0),
            ("crop_border", crop_border, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"model.init_args.{name} must be an integer >= {minimum}, got {value!r}")
            if value < minimum:
                raise ValueError(f"model.init_args.{name} must be >= {minimum}, got {value}")
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.max_nonfinite_steps = max_nonfinite_steps
        self.color_fix, self.consistency = color_fix, consistency
        self.val_metrics = RestorationMetrics(crop_border=crop_border, y_channel=y_channel)
        self.test_metrics = RestorationMetrics(crop_border=crop_border, y_channel=y_channel)
        self.nonfinite_steps = {"total": 0, "consecutive": 0}
        self._drop_gradients = False
        self._base_seed: int | None = None
        self._generator: torch.Generator | None = None
        self._generator_step: int | None = None

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> RestorationModule:
        """Lightning's `load_from_checkpoint`, after the file has been read safely and every class path in its
        hyperparameters checked against the allow-list (`ir_lightning.io.weights.read_checkpoint`): a refused file
        raises `WeightsError` naming it, before anything it names is imported. Always
        `weights_only=True`."""
        if isinstance(checkpoint_path, (str, os.PathLike)):
            checkpoint = read_checkpoint(checkpoint_path, mmap=True)
        else:  # a file object
            start = checkpoint_path.tell()
            checkpoint = safe_load(
                lambda: torch.load(checkpoint_path, map_location="cpu", weights_only=True), "<file object>"
            )
            check_checkpoint(checkpoint, "<file object>")
            checkpoint_path.seek(start)
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict) and cls.upgrade_hyperparameters(hparams) != hparams:
            # written before a setting was renamed: load the upgraded copy (from memory: the weights are copied once)
            checkpoint_path = io.BytesIO()
            torch.save({**checkpoint, "hyper_parameters": cls.upgrade_hyperparameters(hparams)}, checkpoint_path)
            checkpoint_path.seek(0)
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only=True, **kwargs
        )

    @classmethod
    def setting_parameters(cls) -> dict[str, inspect.Parameter]:
        """The constructor's settings by name, those passed through `**kwargs` to the base classes included."""
        found: dict[str, inspect.Parameter] = {}
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
            for p in parameters:
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    found.setdefault(p.name, p)
            if klass is RestorationModule or not any(p.kind is p.VAR_KEYWORD for p in parameters):
                break
        return found

    @classmethod
    def upgrade_hyperparameters(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's hyperparameters in this version's names (a method whose settings were renamed maps the
        old names to the new ones); unchanged by default."""
        return hparams

    def weights_misfit(self, weights: dict[str, Any], exported_without: Sequence[str] = ()) -> str | None:
        """What keeps `weights` (a state dict) from loading into this module as configured: unexpected, missing
        and mis-shaped keys, a few of each; None when they fit. Submodules an export or import left out
        (`exported_without`, where this method declares them `TRAINING_ONLY`) may be missing."""
        left_out = tuple(f"{name}." for name in exported_without if name in self.TRAINING_ONLY)
        report = key_report(weights, self.state_dict())
        unexpected, missing = report.unexpected, [key for key in report.missing if not key.startswith(left_out)]
        mismatched = [f"{key} {found} vs {shape}" for key, found, shape in report.mismatched]
        problems = [
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("unexpected", unexpected), ("missing", missing), ("other shapes:", mismatched))
            if keys
        ]
        return "; ".join(problems) or None

    def load_initial_weights(self, checkpoint: dict[str, Any], source: str) -> None:
        """Start training from a checkpoint's weights (its `state_dict`: the EMA weights of a training checkpoint,
        the only ones of an export or an import), keeping this module's fresh optimizer and step count. Submodules
        left out (`exported_without`, where this method declares them `TRAINING_ONLY`) keep their fresh
        initialisation. Raises ValueError naming `source` when the weights do not fit this module as configured."""
        weights = checkpoint["state_dict"]
        misfit = self.weights_misfit(weights, checkpoint.get("exported_without", ()))
        if misfit is not None:
            raise ValueError(
                f"{source}: its weights do not fit {type(self).__name__} as the recipe builds it ({misfit})"
            )
        self.load_state_dict(weights, strict=False)

    def save_hyperparameters_as_plain_data(self, ignore: list[str]) -> None:
        """`save_hyperparameters`, with every dataclass value (a noise schedule) stored as its dict, so the
        checkpoint loads with `weights_only=True`; the method's `...of(value)` accepts either form."""
        self.save_hyperparameters(ignore=ignore, frame=inspect.currentframe().f_back)
        for key, value in self.hparams.items():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                self.hparams[key] = dataclasses.asdict(value)

    @staticmethod
    def zero_touching(parameters: Iterable[nn.Parameter], like: Tensor) -> Tensor:
        """A loss term of 0 that reaches every parameter given: their gradients exist (as zeros), so DDP's
        gradient buckets are complete although the real loss left those parameters out."""
        return sum((p.sum() * 0.0 for p in parameters if p.requires_grad), like.new_zeros(()))

    def shared_in_copies(self) -> tuple[Any, ...]:
        """Further attributes a deep copy (the EMA's) shares instead of copying: fixed helpers such as
        a loss network, or factories."""
        return ()

    @staticmethod
    def objects_kept_out_of_hparams(*names: str) -> list[str]:
        """Arguments to leave out of `save_hyperparameters`.

        Built by LightningCLI, the hyperparameters are the YAML config (`net` is a `class_path`
        dict) and `load_from_checkpoint` rebuilds everything from them: keep all. Built in
        Python, `net` and `optimizer` are live objects that must not be pickled into the
        checkpoint (it would no longer load with `weights_only=True`): leave them out, and
        pass them again to `load_from_checkpoint`.
        """
        return [] if _given_hyperparameters.get() is not None else list(names)

    def __deepcopy__(self, memo: dict) -> RestorationModule:
        """A copy of the weights and settings that shares the Trainer and the optimizer factory.

        `EMAWeightAveraging` deep-copies the module to hold the average. Copying the Trainer
        along with it costs memory and, under DDP, fails: rank 0's Trainer and the optimizer
        factory built by the CLI reach objects holding thread locks ("cannot pickle
        '_thread.lock' object"). The average needs neither, so the copy points to the originals.
        """
        # `_trainer`: the Trainer as the module holds it (private; the public `trainer` raises when there is none)
        for shared in (
            self._trainer,
            self.optimizer_factory,
            self._generator,
            self.nonfinite_steps,
            *self.shared_in_copies(),
        ):
            if shared is not None:
                memo[id(shared)] = shared
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return clone

    # --- what a method implements -------------------------------------------------------
    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement training_loss")

    def restoration(
        self, lq: Tensor, *, size: tuple[int, int] | None = None, mask: Tensor | None = None, progress: bool = False
    ) -> Restoration:
        """Restore `lq` (B x C x h x w in [0, 1]) to `size` (None: the method's own scale of `lq`), with the
        method's sampler and settings; `mask` for a method that takes one (`uses_mask`); `progress` shows the
        sampling steps or solver iterations. Returns the images in [0, 1] and the solve's report, if any."""
        raise NotImplementedError(f"{type(self).__name__} must implement restoration")

    @torch.no_grad()
    def restore(
        self, lq: Tensor, *, size: tuple[int, int] | None = None, mask: Tensor | None = None, progress: bool = False
    ) -> Tensor:
        """The restored images in [0, 1] (see `restoration`), post-processed (`postprocessed`)."""
        return self.postprocessed(self.restoration(lq, size=size, mask=mask, progress=progress).image, lq)

    def postprocessed(self, restored: Tensor, lq: Tensor) -> Tensor:
        """`restored` (the restoration of the input `lq`) with the method's `color_fix` and then its `consistency`
        applied, in [0, 1]; unchanged when both are off. A method that restores without `restore` (a measurement
        made inside it, a ground truth's prior) calls this on its result with the input it restored from.

        The colour fix's reference is `lq` at the restored size (`postprocess.reference_of`); a grey input of a
        method that colourises keeps its restored colours. Under tiling (`inference.tiling`) `restore` runs per
        tile with the tile's own input, so both act per tile (`inference.postprocess` says what that means at
        the tiles' borders)."""
        if self.color_fix != "none":
            reference = postprocess.reference_of(lq, tuple(restored.shape[-2:]))
            fixed = postprocess.color_fix(restored, reference, self.color_fix).clamp(0.0, 1.0)
            if self.colourises:  # a grey input's colours are the restoration's own
                grey = (lq == lq[:, :1]).flatten(1).all(dim=1)
                fixed = torch.where(grey[:, None, None, None], restored, fixed)
            restored = fixed
        if self.consistency is not None:
            restored = postprocess.consistent(restored, lq, self.consistency)
        return restored

    def restore_batch(self, batch: dict[str, Any]) -> Tensor:
        """Restore a batch of the data contract: its `lq`, to the size of its `gt` where it has one, with its
        `mask` where the method takes one."""
        size = tuple(batch["gt"].shape[-2:]) if "gt" in batch else None
        return self.restore(self.require_lq(batch), size=size, mask=self.batch_mask(batch))

    def shown_input(self, batch: dict[str, Any]) -> Tensor | None:
        """The input to show beside a restoration of `batch` (image loggers): its `lq`."""
        return batch.get("lq")

    @property
    def uses_mask(self) -> bool:
        """Whether the method restores with a mask (a batch's `mask`, `restore(..., mask=)`)."""
        return False

    def batch_mask(self, batch: dict[str, Any]) -> Tensor | None:
        """The batch's mask where the method takes one, else None."""
        return batch.get("mask") if self.uses_mask else None

    def no_mask(self, mask: Tensor | None) -> None:
        """Refuse a mask given to a method that takes none (it would be ignored)."""
        if mask is not None:
            raise ValueError(f"{type(self).__name__} restores without a mask; got one")

    @property
    def tileable(self) -> bool:
        """Whether `restore` may be applied to tiles of an image (`ir_lightning.inference.tiling`): true unless
        what it computes depends on where the tile sits in the whole image."""
        return True

    @property
    def colourises(self) -> bool:
        """Whether the method makes colour from a grey input (colorization): `restore` and `ir_lightning.load` then
        keep its colour output for a grey image instead of averaging it back to grey."""
        return False

    def native_tile(self) -> int | None:
        """The tile side (input pixels) the method must restore in, when its network works at one image size only
        (a pretrained prior's); None (default) for any size. `restore` and `evaluate` then tile at it."""
        return None

    # --- shared behaviour ---------------------------------------------------------------
    @property
    def attached_trainer(self) -> pl.Trainer | None:
        """The Trainer this module runs in, or None (Lightning's `trainer` raises when there is none)."""
        return self._trainer  # private: no public API tells whether a module is attached to a Trainer

    def training_generator(self) -> torch.Generator:
        """The random stream of the method's training draws (noise levels, noise) at this step.

        Seeded from the global seed (`seed_everything`), the rank and the step: with the global
        generator, every DDP rank would draw the same noise for its samples, shrinking the
        diversity of the global batch to that of one rank's batch; and a run resumed at step k
        draws at step k what the uninterrupted run drew there.
        """
        step = self.global_step
        if self._generator is None or self._generator.device != self.device:
            self._generator, self._generator_step = torch.Generator(device=self.device), None
        if self._generator_step != step:
            self._generator.manual_seed(self._step_seed(TRAINING_DRAWS))
            self._generator_step = step
        return self._generator

    def _step_seed(self, stream: int) -> int:
        """Seed of random stream `stream` at this (global seed, rank, step); skipped steps count as steps."""
        rank = self.trainer.global_rank if self.attached_trainer is not None else 0
        base = self._base_seed if self._base_seed is not None else torch.initial_seed()
        return derived_seed(base, rank, self.global_step, stream)

    def on_fit_start(self) -> None:
        # the seed of `seed_everything`, read before the first step reseeds the global generator
        self._base_seed = torch.initial_seed()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(self._step_seed(GLOBAL_DRAWS))  # dropout and any other global draw of this step

    TRAINING_ONLY: tuple[str, ...] = ()
    """Submodules used in training only (a teacher, a discriminator, a diffusion network that only
    shapes the loss): `ir-lightning export` leaves them out, and a module loading such an export
    drops them (set to None) before the weights load."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_steps"] = dict(self.nonfinite_steps)
        checkpoint["training_only"] = list(self.TRAINING_ONLY)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_steps = dict(checkpoint.get("nonfinite_steps", {"total": 0, "consecutive": 0}))
        for name in checkpoint.get("exported_without", ()):
            setattr(self, name, None)  # the export has no weights for it, and restoring never runs it

    @staticmethod
    def on_device(values: Tensor, device: torch.device) -> Tensor:
        """`values` on `device`, copied only when elsewhere (schedules kept off the module's buffers)."""
        return values if values.device == device else values.to(device)

    def require_lq(self, batch: dict[str, Any]) -> Tensor:
        """The batch's degraded image, or an error that says how to get one."""
        if "lq" not in batch:
            raise KeyError(
                "batch has no 'lq' image: give paired shards, or a degradation in the data module "
                "(data.init_args.degradation) to make one from 'gt'"
            )
        return batch["lq"]

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: one with every parameter by default. A method whose parts
        follow different learning-rate schedules returns one group per part (with a `name`, which
        the LR monitor shows), in the order of `lr_schedules`."""
        return [{"params": list(self.parameters())}]

    def lr_schedules(self) -> list[LRSchedule | None]:
        """One schedule per parameter group (None: the optimizer's rate); the warm-up applies on top."""
        return [None]

    def configure_optimizers(self) -> Any:
        schedules = self.lr_schedules()
        if self.warmup_steps <= 0 and all(schedule is None for schedule in schedules):
            return self.optimizer_factory(self.param_groups())  # constant rate: no scheduler to checkpoint
        return self.optimizer_with_schedules(self.optimizer_factory, self.param_groups(), schedules)

    def optimizer_with_schedules(
        self, factory: OptimizerCallable, groups: list[dict[str, Any]], schedules: list[LRSchedule | None]
    ) -> dict[str, Any]:
        """An optimizer over `groups` and a per-step `LambdaLR` with one schedule per group (and the warm-up)."""
        optimizer = factory(groups)
        if len(schedules) != len(optimizer.param_groups):
            raise ValueError(
                f"{type(self).__name__}: {len(schedules)} LR schedules for {len(optimizer.param_groups)} parameter groups"
            )
        factors = [
            lr_factor(schedule, group["lr"], self.warmup_steps)
            for schedule, group in zip(schedules, optimizer.param_groups)
        ]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.training_loss(batch)
        if self._nonfinite_anywhere(loss):
            return self._skip_nonfinite_step(loss)
        self.nonfinite_steps["consecutive"] = 0
        batch_size = batch["gt"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if "n_skipped" in batch:
            # samples the loader workers skipped (corrupt members, undecodable or too small images)
            self.log(
                "data/skipped", batch["n_skipped"].float().sum(), reduce_fx="sum", sync_dist=True, batch_size=batch_size
            )  # summed over ranks
        return loss

    def _nonfinite_anywhere(self, loss: Tensor) -> bool:
        """True when the loss is NaN or infinite on any rank (one tiny all-reduce under DDP), so
        that all ranks skip together: a rank that skipped alone would leave the others waiting
        in the gradient all-reduce."""
        nonfinite = not bool(torch.isfinite(loss.detach()).all())
        return self.trainer.strategy.reduce_boolean_decision(nonfinite, all=False)

    def _skip_nonfinite_step(self, loss: Tensor) -> Tensor:
        """Count a skipped step and stop after `max_nonfinite_steps` in a row, saving the weights,
        still the last good ones.

        Lightning refuses a `training_step` that returns None under DDP, and a zero loss would
        still move Adam's moments. So the step goes through with a surrogate loss of zero that
        touches every parameter (backward and DDP's all-reduce run as usual, on zero gradients),
        and `on_before_optimizer_step` then drops the gradients: torch's optimizers leave
        parameters without gradients alone (weights, moments, step counts). The step still
        counts in `global_step` (and so in `max_steps`, the LR schedule and the EMA schedule).
        With gradient accumulation the whole accumulated step is dropped."""
        self.count_nonfinite_step(loss)
        self._drop_gradients = True
        return self.zero_touching(self.parameters(), loss)

    def count_nonfinite_step(self, loss: Tensor) -> None:
        """Count a skipped step; after `max_nonfinite_steps` in a row, save the weights and stop."""
        self.nonfinite_steps["total"] += 1
        self.nonfinite_steps["consecutive"] += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps["total"]), prog_bar=True)
        consecutive = self.nonfinite_steps["consecutive"]
        if consecutive < self.max_nonfinite_steps:
            return
        path = self._stop_checkpoint_path()
        self.trainer.save_checkpoint(path)
        raise NonFiniteLossError(
            f"{consecutive} consecutive training steps had a non-finite loss (last: {loss.detach().float().mean().item()} "
            f"at step {self.global_step}, {self.nonfinite_steps['total']} skipped in all); the weights of the last good "
            f"step were saved to {path}. Lower the learning rate, set trainer.gradient_clip_val, check the data, "
            f"or raise model.init_args.max_nonfinite_steps."
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._drop_gradients:
            optimizer.zero_grad(set_to_none=True)
            self._drop_gradients = False

    def _stop_checkpoint_path(self) -> Path:
        """The checkpoint callback's `last.ckpt`, so that `--ckpt_path last` finds it; else one in the run directory."""
        callback = self.trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None) or self.trainer.default_root_dir
        name = getattr(callback, "CHECKPOINT_NAME_LAST", "last") + getattr(callback, "FILE_EXTENSION", ".ckpt")
        return Path(folder) / name

    def _score(self, batch: dict[str, Any], metrics: RestorationMetrics) -> dict[str, Tensor]:
        restored = self.restore_batch(batch)
        metrics.update(restored, batch["gt"])
        return {"restored": restored, "lq": self.shown_input(batch)}

    def _log_scores(self, metrics: RestorationMetrics, prefix: str, prog_bar: bool) -> None:
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.compute().items()}, prog_bar=prog_bar)
        metrics.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._score(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_metrics, "val", prog_bar=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._score(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_metrics, "test", prog_bar=False)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"restored": self.restore_batch(batch), "__key__": batch.get("__key__")}
