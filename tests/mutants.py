"""Mutation check: does each test catch the bug it names? (`make mutants`; not part of CI.)

Each entry of `BREAKS` is a named one-line break of the suite's code: a text that must occur exactly once
in one file, its replacement, and the fast tests that claim to check that line. For every break the
script copies the checkout (tracked and untracked, not ignored files) to a scratch folder, applies the
break there, runs those tests with `pytest -x -m "not slow"` against the scratch copy (PYTHONPATH points
at it, so the installed editable package is not used), and prints a table: the break, and the test that
caught it or MISSED. Before the breaks, the same tests run once on the unbroken copy: a test that fails
there would "catch" everything.

    python tests/mutants.py              # every break (a few minutes per core on a laptop)
    python tests/mutants.py --list       # the breaks, without running anything
    python tests/mutants.py --only rddm  # the breaks whose name contains "rddm"
    python tests/mutants.py --jobs 2     # two breaks at a time (each pytest then uses one thread)

Exit status: 0 when every break is caught; 1 when one is missed, a break's text no longer occurs exactly
once in its file (the code moved: update the entry), or the unbroken copy fails its tests. A missed break
is a test to write, not an entry to delete.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # one break's tests; pytest-timeout stops a single hanging test much earlier


@dataclass(frozen=True)
class Break:
    """Replace `old` (which must occur exactly once in `path`) by `new`; `tests` should fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


DEQ_TESTS = (
    "tests/diffusion/test_deq.py",
    "tests/methods/test_deqir.py",
    "tests/methods/test_sr3.py",
    "tests/methods/test_rddm.py",
)

BREAKS: tuple[Break, ...] = (
    # --- diffusion/ -------------------------------------------------------------------------------
    Break(
        "deq: anderson_mix returns zeros",
        "ir_lightning/diffusion/deq/solve.py",
        "    return mixed\n",
        "    return torch.zeros_like(mixed)\n",
        DEQ_TESTS,
    ),
    Break(
        "deq: Anderson's regulariser absolute, not scaled by the residuals",
        "ir_lightning/diffusion/deq/solve.py",
        "gram = gram + lam * scale[:, None, None] *",
        "gram = gram + lam * torch.ones_like(scale)[:, None, None] *",
        DEQ_TESTS,
    ),
    Break(
        "deq: a bound stop reported as converged by tolerance",
        "ir_lightning/diffusion/deq/solve.py",
        '"tolerance" if residual <= tol else "exact"',
        '"tolerance"',
        DEQ_TESTS,
    ),
    Break(
        "gaussian: q_sample without the square root on the noise weight",
        "ir_lightning/diffusion/gaussian.py",
        "per_sample((1.0 - gamma).sqrt(), y0) * noise",
        "per_sample(1.0 - gamma, y0) * noise",
        ("tests/diffusion/test_gaussian.py",),
    ),
    Break(
        "gaussian: posterior variance beta_t instead of beta_tilde",
        "ir_lightning/diffusion/gaussian.py",
        "variance = (1.0 - gamma_prev) / (1.0 - gamma_t) * beta_t",
        "variance = beta_t",
        ("tests/diffusion/test_gaussian.py", "tests/diffusion/test_samplers.py"),
    ),
    Break(
        "samplers: DDPM's noise scaled by the posterior variance, not its std",
        "ir_lightning/diffusion/samplers.py",
        "y_prev = mean + variance.sqrt() * noise",
        "y_prev = mean + variance * noise",
        ("tests/diffusion/test_samplers.py",),
    ),
    Break(
        "samplers: DDIM's sigma without its square root",
        "ir_lightning/diffusion/samplers.py",
        "(1.0 - gamma_t / gamma_prev)).sqrt()",
        "(1.0 - gamma_t / gamma_prev))",
        ("tests/diffusion/test_samplers.py",),
    ),
    Break(
        "schedules: cosine offset s = 0.08",
        "ir_lightning/diffusion/schedules.py",
        "COSINE_OFFSET = 0.008",
        "COSINE_OFFSET = 0.08",
        ("tests/diffusion/test_schedules.py",),
    ),
    Break(
        "schedules: respaced levels in reverse order",
        "ir_lightning/diffusion/schedules.py",
        "return (n_train - 1 - offsets).flip(0)",
        "return n_train - 1 - offsets",
        ("tests/diffusion/test_schedules.py",),
    ),
    Break(
        "schedules: SR3's training level uniform in t only (gamma_t, no interpolation)",
        "ir_lightning/diffusion/schedules.py",
        "gamma = levels[t - 1] + u * (levels[t] - levels[t - 1])",
        "gamma = levels[t] + 0 * u",
        ("tests/diffusion/test_schedules.py", "tests/methods/test_sr3.py"),
    ),
    Break(
        "rddm schedule: decreased and increased shapes swapped",
        "ir_lightning/diffusion/rddm.py",
        'return weights.flip(0) if shape == "decreased" else weights',
        'return weights if shape == "decreased" else weights.flip(0)',
        ("tests/diffusion/test_rddm.py",),
    ),
    Break(
        "operators: average-pool SR pseudo-inverse = adjoint",
        "ir_lightning/diffusion/operators.py",
        "        return self._upsample(y)\n",
        "        return self._upsample(y) / self.scale**2\n",
        ("tests/diffusion/test_operators.py",),
    ),
    Break(
        "resize: Keys' cubic far branch with a = -0.75 weights",
        "ir_lightning/degradations/resize.py",
        "far = (((ax - 5) * ax + 8) * ax - 4) * a",
        "far = (((ax - 5) * ax + 8) * ax - 4) * (a * 1.5)",
        ("tests/degradations/test_resize.py", "tests/diffusion/test_operators.py"),
    ),
    # --- nets/ ------------------------------------------------------------------------------------
    Break(
        "unet: residual sums not scaled by 1/sqrt(2)",
        "ir_lightning/nets/unet.py",
        "SKIP_SCALE = 1.0 / math.sqrt(2.0)",
        "SKIP_SCALE = 1.0",
        ("tests/nets/test_unet.py",),
    ),
    Break(
        "unet: sinusoid frequencies from 1e3 instead of 1e4",
        "ir_lightning/nets/unet.py",
        "torch.exp(-math.log(1e4) * torch.arange(self.half",
        "torch.exp(-math.log(1e3) * torch.arange(self.half",
        ("tests/nets/test_unet.py",),
    ),
    Break(
        "diffir: MDTA without normalised queries and keys",
        "ir_lightning/nets/diffir.py",
        "q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)",
        "q, k = q, k",
        ("tests/nets/test_diffir_nets.py",),
    ),
    Break(
        "diffir: IPR modulation x * k1 + k2 -> x + k2",
        "ir_lightning/nets/diffir.py",
        "return x * k1 + k2",
        "return x + k2",
        ("tests/nets/test_diffir_nets.py",),
    ),
    Break(
        "restorer: output without the input added",
        "ir_lightning/nets/restorer.py",
        "return x + self.residual(x)",
        "return self.residual(x)",
        ("tests/nets/test_restorer.py",),
    ),
    # --- methods/ ---------------------------------------------------------------------------------
    Break(
        "rddm: pred_res_noise trained on -I_res",
        "ir_lightning/methods/rddm.py",
        "return self.loss_fn(out[0], i_res) + self.loss_fn(out[1], noise)",
        "return self.loss_fn(out[0], -i_res) + self.loss_fn(out[1], noise)",
        ("tests/methods/test_rddm.py",),
    ),
    Break(
        "rddm: pred_res trained on the noise",
        "ir_lightning/methods/rddm.py",
        'i_res if self.objective == "pred_res" else noise',
        'noise if self.objective == "pred_res" else noise',
        ("tests/methods/test_rddm.py",),
    ),
    Break(
        "rddm: the residual defined as I_0 - I_in",
        "ir_lightning/methods/rddm.py",
        "        i_res = i_in - i_0\n",
        "        i_res = i_0 - i_in\n",
        ("tests/methods/test_rddm.py",),
    ),
    Break(
        "sr3: the network sees gamma instead of sqrt(gamma)",
        "ir_lightning/methods/sr3.py",
        "eps_hat = self.net(torch.cat([x, y_noisy], dim=1), level)",
        "eps_hat = self.net(torch.cat([x, y_noisy], dim=1), level**2)",
        ("tests/methods/test_sr3.py",),
    ),
    Break(
        "deqir: the prior trained to predict x_0 instead of eps",
        "ir_lightning/methods/deqir.py",
        "return F.mse_loss(self.net(x_noisy, level), noise)",
        "return F.mse_loss(self.net(x_noisy, level), x0)",
        ("tests/methods/test_deqir.py",),
    ),
    Break(
        "deqir: the chains of samples averaged with one shared draw",
        "ir_lightning/methods/deqir.py",
        "            x_T = torch.randn(ones.shape, generator=generator, device=lq.device, dtype=lq.dtype)\n",
        "            generator.manual_seed(self.sampling.seed)\n"
        "            x_T = torch.randn(ones.shape, generator=generator, device=lq.device, dtype=lq.dtype)\n",
        ("tests/methods/test_deqir.py",),
    ),
    Break(
        "deqir: the samples' sum not divided by their count",
        "ir_lightning/methods/deqir.py",
        "to_unit(total / self.samples)",
        "to_unit(total)",
        ("tests/methods/test_deqir.py",),
    ),
    Break(
        "noise_da: pixel loss on the residual alone",
        "ir_lightning/methods/noise_da.py",
        "for x in (lq_syn + res_syn, gt))",
        "for x in (res_syn, gt))",
        ("tests/methods/test_noise_da.py", "tests/methods/test_noise_da_ranges.py"),
    ),
    Break(
        "noise_da: a signed restorer's residual left in [-1, 1] units",
        "ir_lightning/methods/noise_da.py",
        'return residual if self.restorer_range == "unit" else residual / 2',
        "return residual",
        ("tests/methods/test_noise_da_ranges.py",),
    ),
    Break(
        "noise_da: D's conditions always in [-1, 1]",
        "ir_lightning/methods/noise_da.py",
        '    return x if value_range == "unit" else to_signed(x)',
        "    return to_signed(x)",
        ("tests/methods/test_noise_da_ranges.py",),
    ),
    Break(
        "noise_da: negatives keep their own residual",
        "ir_lightning/methods/noise_da.py",
        "return lq_syn + res_real, lq_real + res_syn",
        "return lq_syn + res_syn, lq_real + res_real",
        ("tests/methods/test_noise_da.py",),
    ),
    Break(
        "sr3_official: the noise level scaled x1000 as in our UNet",
        "ir_lightning/nets/sr3_official.py",
        "angles = level[:, None] * torch.exp(",
        "angles = 1000 * level[:, None] * torch.exp(",
        ("tests/nets/test_sr3_official.py", "tests/importing/test_sr3_import.py"),
    ),
    Break(
        "rddm_official: the method's t fed as the official step (no -1)",
        "ir_lightning/nets/rddm_official.py",
        "step = torch.round(cond.float() * self.time_scale) + self.step_offset",
        "step = torch.round(cond.float() * self.time_scale)",
        ("tests/nets/test_rddm_official.py", "tests/importing/test_rddm_import.py"),
    ),
    Break(
        "guided_diffusion: D embeds sqrt(gamma), not the raw gamma",
        "ir_lightning/nets/guided_diffusion.py",
        'return (level**2 if self.level_input == "gamma" else level) * self.level_scale',
        "return level * self.level_scale",
        ("tests/nets/test_guided_diffusion.py", "tests/importing/test_noise_da_import.py"),
    ),
    Break(
        "diffir: real-SR x1/x2 without the pixel unshuffle",
        "ir_lightning/nets/diffir.py",
        "x = self.embed(F.pixel_unshuffle(lq, self.unshuffle) if self.unshuffle > 1 else lq)",
        "x = self.embed(lq.repeat(1, self.unshuffle**2, 1, 1)[..., :: self.unshuffle, :: self.unshuffle])",
        ("tests/importing/test_diffir_import.py",),
    ),
    Break(
        "importing noise_da: derain.pth read in [0, 1]",
        "ir_lightning/importing/noise_da.py",
        'VALUE_RANGE = {"denoise": "unit", "derain": "signed", "deblur": "signed"}',
        'VALUE_RANGE = {"denoise": "unit", "derain": "unit", "deblur": "signed"}',
        ("tests/importing/test_noise_da_import.py",),
    ),
    Break(
        "metrics: the colour error of pixels, not of 8 x 8 box averages",
        "ir_lightning/metrics/psnr_ssim.py",
        "boxes = torch.nn.functional.avg_pool2d(pred_q - target_q, COLOR_BOX)",
        "boxes = pred_q - target_q",
        ("tests/metrics/test_psnr_ssim.py",),
    ),
    Break(
        "wandb_records: the config given to wandb.init left out of the run's config",
        "ir_lightning/io/wandb_records.py",
        'if kind in ("run", "config"):',
        'if kind == "config":',
        ("tests/test_learning_curves.py",),
    ),
    Break(
        "learning_curves: every curve labelled Y, whatever the run scored",
        "bench/learning_curves.py",
        'return "Y" if value else "RGB"',
        'return "Y"',
        ("tests/test_learning_curves.py",),
    ),
    Break(
        "photos: the test wallpapers land in the training split",
        "datamodules/photos.py",
        '(("train", TRAIN_WALLPAPERS), ("test", TEST_WALLPAPERS))',
        '(("train", TRAIN_WALLPAPERS), ("train", TEST_WALLPAPERS))',
        ("tests/datamodules/test_photos.py",),
    ),
    Break(
        "schedules: offset noise drawn per pixel, not per sample and channel",
        "ir_lightning/diffusion/schedules.py",
        "shape = (*y0.shape[:2], *([1] * (y0.ndim - 2)))",
        "shape = y0.shape",
        ("tests/diffusion/test_schedules.py",),
    ),
    Break(
        "sr3: the offset-noise setting never reaches the training noise",
        "ir_lightning/methods/sr3.py",
        "noised_training_sample(y0, gammas, generator, self.offset_noise)",
        "noised_training_sample(y0, gammas, generator)",
        ("tests/methods/test_sr3.py",),
    ),
    Break(
        "deqir: validation with a ground truth skips the post-processing",
        "ir_lightning/methods/deqir.py",
        "        return self.postprocessed(restored, measurement)",
        "        return restored",
        ("tests/methods/test_postprocess_paths.py",),
    ),
    Break(
        "export: --set never reaches the exported settings",
        "ir_lightning/commands/export.py",
        '        slim["hyper_parameters"] = with_settings(checkpoint, settings, Path(src))',
        "        pass",
        ("tests/methods/test_postprocess_paths.py",),
    ),
    Break(
        "export: what an export or import left out is lost",
        "ir_lightning/commands/export.py",
        'left_out = list(dict.fromkeys([*checkpoint.get("exported_without", ()), *dropped]))',
        "left_out = dropped",
        ("tests/commands/test_import.py", "tests/commands/test_export_formats.py"),
    ),
    Break(
        "timestep_prior: the step one past the level's",
        "ir_lightning/nets/timestep_prior.py",
        "        return step\n",
        "        return step + 1\n",
        ("tests/nets/test_timestep_prior.py",),
    ),
    Break(
        "ddim_model: down-sampling padded at the top and left",
        "ir_lightning/nets/ddim_model.py",
        "return self.conv(F.pad(x, (0, 1, 0, 1)))",
        "return self.conv(F.pad(x, (1, 0, 1, 0)))",
        ("tests/nets/test_ddim_model.py",),
    ),
    Break(
        "lr: cosine restarts without the 1/2",
        "ir_lightning/training/optim.py",
        "(base_lr - eta_min) * 0.5 * (1.0 + math.cos(",
        "(base_lr - eta_min) * 1.0 * (1.0 + math.cos(",
        ("tests/training/test_optim.py",),
    ),
    Break(
        "losses: Charbonnier with eps unsquared",
        "ir_lightning/losses.py",
        "torch.sqrt((pred - target) ** 2 + eps**2).mean()",
        "torch.sqrt((pred - target) ** 2 + eps).mean()",
        ("tests/test_losses.py",),
    ),
    # --- metrics ----------------------------------------------------------------------------------
    Break(
        "metrics: PSNR with 20 log10 of a power ratio",
        "ir_lightning/metrics/psnr_ssim.py",
        "return 10.0 * torch.log10(PIXEL_MAX**2 / mse)",
        "return 20.0 * torch.log10(PIXEL_MAX**2 / mse)",
        ("tests/metrics/test_psnr_ssim.py",),
    ),
    Break(
        "metrics: SSIM averaged over the padded border too",
        "ir_lightning/metrics/psnr_ssim.py",
        "valid_map = ssim_map[..., radius:-radius, radius:-radius]",
        "valid_map = ssim_map",
        ("tests/metrics/test_psnr_ssim.py",),
    ),
    Break(
        "metrics: border crop only at the top and left",
        "ir_lightning/metrics/psnr_ssim.py",
        "return img[..., n:-n, n:-n]",
        "return img[..., n:, n:]",
        ("tests/metrics/test_psnr_ssim.py",),
    ),
    Break(
        "fid: Mixed_7c pools its pool branch by average",
        "ir_lightning/metrics/fid.py",
        '"Mixed_7c": block_8("max")',
        '"Mixed_7c": block_8("avg")',
        ("tests/metrics/test_fid.py",),
    ),
    Break(
        "fid: batch-norm eps 1e-5",
        "ir_lightning/metrics/fid.py",
        "BN_EPS = 1e-3",
        "BN_EPS = 1e-5",
        ("tests/metrics/test_fid.py",),
    ),
    Break(
        "fid: trace of sqrt(S1 S2) without the square root",
        "ir_lightning/metrics/fid.py",
        "clamp(min=0).sqrt().sum()",
        "clamp(min=0).sum()",
        ("tests/metrics/test_fid.py",),
    ),
    # --- degradations/ ----------------------------------------------------------------------------
    Break(
        "degradations: JPEG quality x 0.9",
        "ir_lightning/degradations/basic.py",
        "coded = jpeg_codec_differentiable(rgb, quality)",
        "coded = jpeg_codec_differentiable(rgb, quality * 0.9)",
        ("tests/degradations/test_basic.py",),
    ),
    Break(
        "degradations: Gaussian noise sigma not divided by 255",
        "ir_lightning/degradations/basic.py",
        "sigma = self.sample_sigma(batch, generator, img.device).to(img.dtype) / PIXEL_LEVELS",
        "sigma = self.sample_sigma(batch, generator, img.device).to(img.dtype) / 100.0",
        ("tests/degradations/test_basic.py",),
    ),
    Break(
        "camera: correlated noise not renormalised by the kernel's norm",
        "ir_lightning/degradations/camera.py",
        "norms = kernels.square().sum(dim=(1, 2)).sqrt()",
        "norms = kernels.sum(dim=(1, 2))",
        ("tests/degradations/test_camera.py",),
    ),
    # --- datamodules/ and image files ---------------------------------------------------------------
    Break(
        "shards: the LQ crop taken at GT coordinates",
        "datamodules/transforms.py",
        'step = 1 if name == "lq" else unit',
        "step = unit",
        ("tests/datamodules/test_shards_datamodule.py", "tests/commands/test_shards.py"),
    ),
    Break(
        "noise_da: channel shuffling never swaps",
        "ir_lightning/methods/noise_da.py",
        "return torch.where(mask, second, first), torch.where(mask, first, second)",
        "return first, second",
        ("tests/methods/test_noise_da.py", "tests/datamodules/test_adaptation.py"),
    ),
    Break(
        "adaptation: skipped samples of the real stream not counted",
        "datamodules/adaptation.py",
        'merged["n_skipped"] = synthetic_batch["n_skipped"] + real_batch["n_skipped"]',
        'merged["n_skipped"] = synthetic_batch["n_skipped"]',
        ("tests/datamodules/test_adaptation.py",),
    ),
    Break(
        "realesrgan: Poisson photon count rounded down to a power of two",
        "ir_lightning/degradations/realesrgan.py",
        "photons = 2.0 ** torch.ceil(torch.log2(",
        "photons = 2.0 ** torch.floor(torch.log2(",
        ("tests/degradations/test_realesrgan.py",),
    ),
    Break(
        "images: a resized alpha made opaque",
        "ir_lightning/io/images.py",
        "return np.rint(resized.numpy() * peak).astype(alpha.dtype)",
        "return np.full(size, peak, dtype=alpha.dtype)",
        ("tests/io/test_images.py", "tests/commands/test_restore.py"),
    ),
    Break(
        "images: alpha resized by nearest neighbour",
        "ir_lightning/io/images.py",
        "resized = bicubic_resize(values, size).clamp(0, 1)[0, 0]",
        'resized = torch.nn.functional.interpolate(values, size=size, mode="nearest").clamp(0, 1)[0, 0]',
        ("tests/io/test_images.py", "tests/commands/test_restore.py"),
    ),
    Break(
        "settings: a parallel solve allowed with eta > 0",
        "ir_lightning/methods/settings.py",
        'if self.solver.method != "sequential" and (self.sampler != "ddim" or (self.eta != 0 and not self.fixed_noise)):',
        'if self.solver.method != "sequential" and self.sampler != "ddim":',
        ("tests/methods/test_settings.py",),
    ),
    Break(
        "settings: an old checkpoint's clip_y0 dropped by the upgrade",
        "ir_lightning/methods/settings.py",
        '    "clip_y0": "clip",\n',
        "",
        ("tests/methods/test_settings.py",),
    ),
    Break(
        "contract: the solve's report keeps its T states",
        "ir_lightning/methods/base.py",
        "solve = dataclasses.replace(solve, x0=solve.x0.new_empty(0), states=solve.states.new_empty(0))",
        "solve = dataclasses.replace(solve)",
        ("tests/methods/test_sr3.py", "tests/methods/test_deqir.py"),
    ),
    Break(
        "restore: a dotted --set naming no field accepted",
        "ir_lightning/inference/loading.py",
        "        if name not in names:",
        "        if name not in names and False:",
        ("tests/commands/test_restore.py",),
    ),
    Break(
        "recipes: -c=NAME left unresolved",
        "ir_lightning/packaged.py",
        'elif word.startswith(("--config=", "-c=")):',
        'elif word.startswith("--config="):',
        ("tests/test_packaged.py",),
    ),
    Break(
        "cli: run_name overrides a checkpoint dirpath the config gives",
        "ir_lightning/cli.py",
        'if entry.init_args.get("dirpath") is None:',
        "if True:",
        ("tests/test_recipes.py",),
    ),
    Break(
        "cli: a suite callback repeated in trainer.callbacks runs twice",
        "ir_lightning/cli.py",
        "if twin is not None and not isinstance(callback, ModelCheckpoint):",
        "if False:",
        ("tests/test_recipes.py",),
    ),
    Break(
        "deq: DeqIR's reference Anderson with a relative, not absolute, regulariser",
        "ir_lightning/diffusion/deq/solve.py",
        "gram = residuals @ residuals.mT + lam * identity",
        "gram = residuals @ residuals.mT\n    gram = gram + lam * gram.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * identity",
        ("tests/diffusion/test_deq_anderson_official.py",),
    ),
    Break(
        "deq: DeqIR's reference Anderson returns G(X), not the mixed iterate X",
        "ir_lightning/diffusion/deq/solve.py",
        "result.iterations, result.states = k + 1, x  #",
        "result.iterations, result.states = k + 1, mapped  #",
        ("tests/diffusion/test_deq_anderson_official.py",),
    ),
    Break(
        "operators_svd: DDRM's 1-D blur matrix keeps the kernel's last tap",
        "ir_lightning/diffusion/operators_svd.py",
        "    for tap in range(2 * centre):",
        "    for tap in range(kernel.numel()):",
        ("tests/diffusion/test_operators_svd.py",),
    ),
    Break(
        "operators_svd: the 3e-2 cut-off left out of A (H axis)",
        "ir_lightning/diffusion/operators_svd.py",
        "self.axis_h = AxisSVD.of(ddrm_blur_matrix(kernel_h, self.size[0]), lambda s: s >= cutoff)",
        "self.axis_h = AxisSVD.of(ddrm_blur_matrix(kernel_h, self.size[0]), lambda s: s >= 0)",
        ("tests/diffusion/test_operators_svd.py",),
    ),
    Break(
        "operators_svd: DDRM's singular values dealt to their own basis images (the channel mismatch lost)",
        "ir_lightning/diffusion/operators_svd.py",
        "dealt = ranked[(channels * rank[None] + torch.arange(channels)[:, None]) % values.numel()]",
        "dealt = ranked[rank[None].expand(channels, -1)]",
        ("tests/diffusion/test_operators_svd.py",),
    ),
    Break(
        "operators: spectral of a two-valued operator gives the null space the range's singular value",
        "ir_lightning/diffusion/operators.py",
        "fn(like.new_tensor(0.0), *nulls)",
        "fn(like.new_tensor(s_range), *nulls)",
        ("tests/diffusion/test_operators_svd.py",),
    ),
    Break(
        "deq: DDNM+'s shrunk correction loses its singular value (lambda = c_eps / (a sigma_y))",
        "ir_lightning/diffusion/deq/chains.py",
        "lam = torch.where(noisy, s * c_eps / (a * sigma_y), one)",
        "lam = torch.where(noisy, c_eps / (a * sigma_y), one)",
        ("tests/diffusion/test_ddnm_plus_dense.py",),
    ),
    Break(
        "deq: DeqIR's null-space split drifts the whole state, not its null-space part",
        "ir_lightning/diffusion/deq/chains.py",
        "        return gain[k].item() * null_part(s)\n",
        "        return gain[k].item() * s\n",
        ("tests/diffusion/test_deq_official.py",),
    ),
    Break(
        "deqir: the noise-aware correction gets sigma_y on the [0, 1] scale, not the chain's signed scale",
        "ir_lightning/methods/deqir.py",
        "sigma_y=2 * self.sigma_y if self.noise_aware else 0.0",
        "sigma_y=self.sigma_y if self.noise_aware else 0.0",
        ("tests/methods/test_deqir_options.py",),
    ),
    # --- inference/postprocess.py: colour fix and consistency (issue 21) -------------------------------------
    Break(
        "postprocess: the wavelet colour fix keeps the output's own low band",
        "ir_lightning/inference/postprocess.py",
        "fixed = wavelet_split(x)[0] + wavelet_split(ref)[1]",
        "fixed = wavelet_split(x)[0] + wavelet_split(x)[1]",
        ("tests/inference/test_postprocess.py",),
    ),
    Break(
        "postprocess: the a-trous levels all smooth at dilation 1 (no holes)",
        "ir_lightning/inference/postprocess.py",
        "smoothed = atrous_blur(low, 2**level)",
        "smoothed = atrous_blur(low, 1)",
        ("tests/inference/test_postprocess.py",),
    ),
    Break(
        "postprocess: AdaIN keeps the output's mean",
        "ir_lightning/inference/postprocess.py",
        "return (output - mean) / std.clamp_min(ADAIN_EPS) * ref_std + ref_mean",
        "return (output - mean) / std.clamp_min(ADAIN_EPS) * ref_std + mean",
        ("tests/inference/test_postprocess.py",),
    ),
    Break(
        "postprocess: the projection uses A^T instead of A^+",
        "ir_lightning/inference/postprocess.py",
        "return (x64 + operator.pinv(y64 - operator.forward(x64))).to(x.dtype)",
        "return (x64 + operator.adjoint(y64 - operator.forward(x64))).to(x.dtype)",
        ("tests/inference/test_postprocess.py",),
    ),
    Break(
        "postprocess: the projection in float32 (A^+ of a blur amplifies its rounding past 1e-5)",
        "ir_lightning/inference/postprocess.py",
        'return torch.float32 if x.device.type == "mps" else torch.float64',
        "return torch.float32",
        ("tests/inference/test_postprocess.py",),
    ),
    Break(
        "postprocess: the consistency rounds never clamp to [0, 1]",
        "ir_lightning/inference/postprocess.py",
        "z = project_consistent(z, y, operator).clamp(0.0, 1.0)",
        "z = project_consistent(z, y, operator)",
        ("tests/inference/test_postprocess.py",),
    ),
    Break(
        "postprocess: restore skips the consistency setting",
        "ir_lightning/methods/base.py",
        "restored = postprocess.consistent(restored, lq, self.consistency)",
        "restored = restored",
        ("tests/inference/test_postprocess.py", "tests/test_postprocess_cli.py"),
    ),
    Break(
        "postprocess: a colourising method's grey input gets the colour fix (its colours taken away)",
        "ir_lightning/methods/base.py",
        "fixed = torch.where(grey[:, None, None, None], restored, fixed)",
        "fixed = fixed",
        ("tests/inference/test_postprocess.py",),
    ),
    Break(
        "postprocess: --consistency none is taken as an operator name, not as off",
        "ir_lightning/inference/loading.py",
        '    if value == "none":\n        return None\n',
        "",
        ("tests/test_postprocess_cli.py",),
    ),
    Break(
        "postprocess: --consistency does not reach the method's settings",
        "ir_lightning/inference/loading.py",
        'chosen.append(("--consistency", "consistency", check_consistency_name(consistency)))',
        "check_consistency_name(consistency)",
        ("tests/test_postprocess_cli.py",),
    ),
    Break(
        "cli: the gloo process group left to the interpreter's exit",
        "ir_lightning/cli.py",
        "    finally:\n        release_process_group()\n",
        "",
        ("tests/test_process_group.py::test_the_command_line_destroys_the_gloo_group_its_ddp_run_made",),
    ),
)


@dataclass
class Outcome:
    name: str
    result: str  # "caught", "MISSED", "STALE" (text not found once), "ERROR" (the tests could not run)
    detail: str  # the catching test, or why
    seconds: float


def scratch_copy(destination: Path) -> None:
    """The checkout's tracked and untracked (not ignored) files, as they are now, under `destination`."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_symlink() or source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():  # e.g. ir_lightning/recipes -> ../recipes: the copy's own folder
            os.symlink(os.readlink(source), destination / name)
        elif source.is_file():
            shutil.copy2(source, destination / name)


def run_tests(copy: Path, tests: tuple[str, ...], threads: int | None) -> tuple[int, str]:
    """pytest -x on the fast tests among `tests`, importing the suite from `copy`."""
    env = dict(os.environ, PYTHONPATH=str(copy), WANDB_MODE="offline", PYTHONDONTWRITEBYTECODE="1")
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-m", "not slow", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_S} s"
    return done.returncode, done.stdout + done.stderr


def first_failure(output: str) -> str:
    """The node id of the first failed test in pytest's short summary (-rfE)."""
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return match.group(1) if match else output.strip().splitlines()[-1] if output.strip() else "?"


def check_break(item: Break, copy: Path, threads: int | None) -> Outcome:
    start = time.monotonic()
    target = copy / item.path
    original = (ROOT / item.path).read_text()
    count = original.count(item.old)
    if count != 1:
        return Outcome(item.name, "STALE", f"{item.path}: the text occurs {count} times, not once", 0.0)
    target.write_text(original.replace(item.old, item.new))
    try:
        code, output = run_tests(copy, item.tests, threads)
    finally:
        target.write_text(original)
    seconds = time.monotonic() - start
    if code == 1:  # a test failed (a hanging test fails too: pytest-timeout stops it)
        return Outcome(item.name, "caught", first_failure(output), seconds)
    if code == -1:  # the whole run outlived TIMEOUT_S: nothing says a test caught the break
        return Outcome(item.name, "ERROR", output, seconds)
    if code == 0:
        return Outcome(item.name, "MISSED", f"{' '.join(item.tests)} pass", seconds)
    if code == 5:
        return Outcome(item.name, "ERROR", "no fast test collected", seconds)
    return Outcome(item.name, "ERROR", f"pytest exit {code}: {first_failure(output)}", seconds)


def table(outcomes: list[Outcome]) -> str:
    rows = ["| break | result | caught by | s |", "|---|---|---|---|"]
    rows += [f"| {o.name} | {o.result} | `{o.detail}` | {o.seconds:.0f} |" for o in outcomes]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--list", action="store_true", help="print the breaks and exit")
    parser.add_argument("--only", default="", help="run only the breaks whose name contains this text")
    parser.add_argument(
        "--jobs", type=int, default=1, help="breaks checked at a time (each pytest gets one thread when > 1)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unbroken copy first")
    args = parser.parse_args(argv)
    chosen = [item for item in BREAKS if args.only in item.name]
    if args.list:
        for item in chosen:
            print(
                f"{item.name}\n    {item.path}: {item.old.strip()!r} -> {item.new.strip()!r}\n    tests: {' '.join(item.tests)}"
            )
        return 0
    if not chosen:
        parser.error(f"no break's name contains {args.only!r}")
    jobs = max(1, args.jobs)
    threads = 1 if jobs > 1 else None
    with tempfile.TemporaryDirectory(prefix="ir-mutants-") as scratch:
        copies = [Path(scratch) / f"copy{j}" for j in range(jobs)]
        for copy in copies:
            scratch_copy(copy)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(test for item in chosen for test in item.tests))
            print(f"baseline: {len(tests)} test files on the unbroken copy ...", flush=True)
            code, output = run_tests(copies[0], tests, None)
            if code != 0:
                print(f"the unbroken copy fails its tests ({first_failure(output)}); fix that first", file=sys.stderr)
                return 1
        outcomes: list[Outcome | None] = [None] * len(chosen)
        free = list(copies)

        def work(index: int) -> None:
            copy = free.pop()
            try:
                outcome = check_break(chosen[index], copy, threads)
            finally:
                free.append(copy)
            outcomes[index] = outcome
            print(
                f"[{sum(o is not None for o in outcomes)}/{len(chosen)}] {outcome.result}: {outcome.name}"
                f" ({outcome.detail}, {outcome.seconds:.0f} s)",
                flush=True,
            )

        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(work, range(len(chosen))))
    done = [o for o in outcomes if o is not None]
    print()
    print(table(done))
    caught = sum(o.result == "caught" for o in done)
    print(f"\n{caught} of {len(done)} breaks caught")
    return 0 if caught == len(done) else 1


if __name__ == "__main__":
    sys.exit(main())
