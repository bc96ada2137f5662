"""The method contract test (DESIGN.md, "The method contract"): every method's tests subclass `MethodContract`,
declare how to build a tiny module and a batch, and inherit the checks every restoring method must pass.

    class TestContract(MethodContract):
        scale = 4
        def networks(self): return {"net": tiny_unet(6)}
        def build(self, **settings): return SR3(scale=4, **self.networks(), **settings)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from ir_lightning.commands.export import export_weights
from ir_lightning.methods.base import RestorationModule


class MethodContract:
    """The checks every method passes (subclass it; pytest collects the subclass's `test_*`)."""

    scale = 1
    """GT / LQ size ratio of the batches."""
    size = 16
    """GT side of the batches."""
    restores_lq_alone = True
    """False for a method that needs the ground truth to restore (DiffIR stage 1): `restore_batch` is checked."""
    not_reached_by_the_loss: tuple[str, ...] = ()
    """Submodules that `training_loss` does not train (a discriminator, stepped by its own loss)."""
    parallel: dict[str, Any] | None = None
    """Sampling settings (fields of the method's `sampling`) under which a parallel solve must equal the
    sequential chain; None for a method without a solver."""
    parallel_tolerance = 1e-4
    """Largest difference allowed between the parallel and the sequential restoration."""

    def networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def build(self, networks: dict[str, nn.Module], **settings: Any) -> RestorationModule:
        raise NotImplementedError

    def make(self, **settings: Any) -> RestorationModule:
        torch.manual_seed(0)
        return self.build(self.networks(), **settings)

    def batch(self, seed: int = 0) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        gt = torch.rand(2, 3, self.size, self.size, generator=generator)
        lq = (
            F.avg_pool2d(gt, self.scale)
            if self.scale > 1
            else (gt + 0.1 * torch.randn(gt.shape, generator=generator)).clamp(0, 1)
        )
        return {"gt": gt, "lq": lq, "real_lq": lq.flip(0)}

    def restored(self, model: RestorationModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.restores_lq_alone:
            return model.restore(batch["lq"])
        return model.restore_batch(batch)

    # --- the checks ---------------------------------------------------------------------------------
    def test_contract_the_loss_is_finite_and_reaches_every_trainable_parameter(self):
        model = self.make()
        loss = model.training_loss(self.batch())
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        skipped = tuple(f"{name}." for name in self.not_reached_by_the_loss)
        unreached = [
            name
            for name, p in model.named_parameters()
            if p.requires_grad and p.grad is None and not name.startswith(skipped)
        ]
        assert not unreached, f"no gradient reaches {unreached[:5]}"

    def test_contract_restore_gives_the_target_size_in_the_unit_range_and_repeats_bit_for_bit(self):
        model = self.make().eval()
        batch = self.batch()
        out = self.restored(model, batch)
        assert out.shape == batch["gt"].shape
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0 and bool(torch.isfinite(out).all())
        torch.testing.assert_close(self.restored(model, batch), out, rtol=0, atol=0)
        torch.testing.assert_close(model.restore_batch(batch), out, rtol=0, atol=0)  # the batch form: the same images

    def test_contract_hyperparameters_are_plain_data_that_rebuild_the_method(self, tmp_path: Path):
        model = self.make().eval()
        torch.save({"hyper_parameters": dict(model.hparams)}, tmp_path / "h.ckpt")
        loaded = torch.load(tmp_path / "h.ckpt", weights_only=True)["hyper_parameters"]
        rebuilt = self.build(self.networks(), **loaded).eval()
        rebuilt.load_state_dict(model.state_dict())
        batch = self.batch(1)
        torch.testing.assert_close(self.restored(rebuilt, batch), self.restored(model, batch), rtol=0, atol=0)

    def test_contract_an_export_restores_what_the_trained_module_does(self, tmp_path: Path):
        model = self.make()
        trainer = pl.Trainer(
            max_steps=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(model, torch.utils.data.DataLoader([self.batch()], batch_size=None))
        trainer.save_checkpoint(tmp_path / "full.ckpt")
        export_weights(tmp_path / "full.ckpt", tmp_path / "export.ckpt")
        loaded = (
            type(model).load_from_checkpoint(tmp_path / "export.ckpt", map_location="cpu", **self.networks()).eval()
        )
        batch = self.batch(2)
        torch.testing.assert_close(self.restored(loaded, batch), self.restored(model.eval(), batch), rtol=0, atol=0)

    def test_contract_a_parallel_solve_restores_what_the_sequential_chain_does(self):
        if self.parallel is None:
            return  # no solver
        sequential = self.make().eval()
        settings = sequential.sampling.replaced(**self.parallel)
        assert settings.parallel
        parallel = self.make(sampling=settings).eval()
        batch = self.batch(3)
        image, solve = parallel.restoration(batch["lq"], size=tuple(batch["gt"].shape[-2:]))
        expected, no_solve = sequential.restoration(batch["lq"], size=tuple(batch["gt"].shape[-2:]))
        assert no_solve is None and solve.stopped_by == "tolerance", solve.stopped_by
        assert float((image - expected).abs().max()) <= self.parallel_tolerance
