"""Diagnosis: does Denoising as Adaptation's diffusion loss pull the restorer toward the clean real images?

The method never sees the real domain's clean images; the demo has them (the "real" photos are clean
shards degraded by `CameraNoise`), so we can ask directly whether a step down the diffusion loss is a
step down the hidden real-domain error. For a checkpoint, on fixed training batches of both streams:

- `cos(noise, real)`: cosine, over the restorer's weights, between the gradient of the noise loss
  ((MSE(eps, eps_hat) + triplet) / 2, exactly `DenoisingAsAdaptation.noise_terms`) and the gradient of
  the real-domain MSE against the hidden clean images. Positive = the diffusion loss helps the real
  domain at first order. Split by the path the gradient takes into the restorer: through the real
  condition only (`via real`: the adaptation signal the method is about) and through the synthetic
  condition only (`via syn`).
- `cos(pixel, real)`: the same for the synthetic Charbonnier loss (how well the synthetic pairs alone
  transfer), for scale.
- `image cos`: in image space, the cosine between -dL_noise/d r_real (r_real: the restorer's residual
  on the real inputs) and the correction the real outputs need, gt_real - restored_real.
- D's denoising MSE and the triplet term, and D's noise MSE at gamma = 0.9 with the true conditions, with
  blank (0.5 grey) conditions and with the clean GT in both slots: whether D reads its conditions.

`--train-d STEPS` then trains D alone (Adam, `--lr`) on the method's own noise loss with the restorer
frozen at the first checkpoint, and reports the same figures every `--every` steps: whether the pull
turns toward the clean real images once D has learnt to use its conditions.

The data come from the recipes (`--config`, default the demo overlay): the synthetic stream and the
real stream of its `AdaptationDataModule`, the real one with its clean images kept.

Run from the repository root, after a demo run (`make demo` builds demo_out/shards):
    python bench/da_alignment.py runs/da_denoise_demo/checkpoints/last.ckpt [--train-d 1500 --every 500]
It prints a markdown table; it asserts nothing. Each row takes about 20 s on one core; D's training
about 1 s per step.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from jsonargparse import ArgumentParser
from torch import Tensor

from datamodules import AdaptationDataModule, ShardDataModule
from ir_lightning.losses import charbonnier
from ir_lightning.methods.noise_da import DenoisingAsAdaptation, combined_noise_loss
from ir_lightning.methods.sr3 import to_signed

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = [ROOT / "recipes/da_denoise.yaml", ROOT / "recipes/demo/da_denoise_cpu.yaml"]
HEADER = (
    "| checkpoint | cos(noise, real) | via real | via syn | cos(pixel, real) | image cos | "
    "denoise MSE | triplet | D@0.9 true / blank / GT |"
)


def merged_data_config(paths: list[Path]) -> dict[str, Any]:
    """The `data:` section of several recipe files, later files overriding earlier ones key by key."""

    def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    data: dict[str, Any] = {}
    for path in paths:
        data = merge(data, (yaml.safe_load(path.read_text()) or {}).get("data", {}))
    return data


def build_streams(paths: list[Path]) -> tuple[ShardDataModule, ShardDataModule]:
    """The synthetic and real `ShardDataModule`s of the recipes' `AdaptationDataModule`."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=AdaptationDataModule)
    data = parser.instantiate_classes(parser.parse_object({"data": merged_data_config(paths)})).data
    return data.synthetic, data.real


def batches(module: ShardDataModule, seed: int) -> Iterator[dict[str, Tensor]]:
    """An endless stream of device-degraded training batches (gt kept), in-process, seeded."""
    module = copy.deepcopy(module)
    module.seed, module.num_workers = seed, 0
    module.setup("fit")
    while True:
        for batch in module.train_dataset(0):
            yield module.on_after_batch_transfer(batch, 0)


def flat_grad(loss: Tensor, params: list[torch.nn.Parameter]) -> Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def cosine(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def measure(model: DenoisingAsAdaptation, fixed: list[tuple[dict[str, Tensor], dict[str, Tensor]]]) -> list[float]:
    """The figures of one table row, averaged over the fixed batches (see the module docstring)."""
    params = list(model.restorer.parameters())
    generator = torch.Generator().manual_seed(7)
    rows = []
    for syn, real in fixed:
        batch = {"gt": syn["gt"], "lq": syn["lq"], "real_lq": real["lq"]}
        res_syn, res_real = model.residual(syn["lq"]), model.residual(real["lq"])
        real_grad = flat_grad(F.mse_loss(real["lq"] + res_real, real["gt"]), params)
        pixel_grad = flat_grad(charbonnier(syn["lq"] + res_syn, syn["gt"], model.charbonnier_eps), params)
        row, state = [], generator.get_state()
        for path in ("both", "real", "syn"):
            generator.set_state(state)  # the same levels, noise and slot swaps for the three paths
            denoise, contrast = model.noise_terms(
                batch,
                res_syn if path != "real" else res_syn.detach(),
                res_real if path != "syn" else res_real.detach(),
                generator,
            )
            noise_loss = combined_noise_loss(denoise, contrast)
            row.append(cosine(flat_grad(noise_loss, params), real_grad))
            if path == "both":
                pull = -torch.autograd.grad(noise_loss, res_real, retain_graph=True)[0]
                image_cos = cosine(pull, (real["gt"] - real["lq"] - res_real).detach())
                figures = [float(denoise), float(contrast) if contrast is not None else 0.0]
        row += [cosine(pixel_grad, real_grad), image_cos, *figures, *condition_use(model, syn, real, generator)]
        rows.append(row)
    return torch.tensor(rows).mean(0).tolist()


@torch.no_grad()
def condition_use(
    model: DenoisingAsAdaptation,
    syn: dict[str, Tensor],
    real: dict[str, Tensor],
    generator: torch.Generator,
    gamma: float = 0.9,
) -> list[float]:
    """D's noise MSE at a fixed level with the true conditions, blank ones and the clean GT in both slots."""
    size = syn["gt"].shape[0]
    level = torch.full((size,), gamma**0.5)
    noise = torch.randn(syn["gt"].shape, generator=generator)
    noisy = gamma**0.5 * to_signed(syn["gt"]) + (1 - gamma) ** 0.5 * noise

    def mse(a: Tensor, b: Tensor) -> float:
        eps_hat = model.diffusion(torch.cat([noisy, to_signed(a), to_signed(b)], dim=1), level)
        return float(F.mse_loss(eps_hat, noise))

    restored_syn, restored_real = model.restorer(syn["lq"]), model.restorer(real["lq"])
    grey = torch.full_like(restored_syn, 0.5)
    return [mse(restored_syn, restored_real), mse(grey, grey), mse(syn["gt"], syn["gt"])]


def table_row(name: str, f: list[float]) -> str:
    return (
        f"| {name} | {f[0]:+.3f} | {f[1]:+.3f} | {f[2]:+.3f} | {f[3]:+.3f} | {f[4]:+.4f} | {f[5]:.4f} | "
        f"{f[6]:.4f} | {f[7]:.3f} / {f[8]:.3f} / {f[9]:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", type=Path, help="DenoisingAsAdaptation checkpoints (full, with D)")
    parser.add_argument(
        "--config", nargs="+", type=Path, default=DEFAULT_CONFIGS, help="recipes whose data: section is used"
    )
    parser.add_argument("--batches", type=int, default=4, help="fixed batches per measurement (default 4)")
    parser.add_argument("--train-d", type=int, default=0, metavar="STEPS", help="then train D alone for STEPS steps")
    parser.add_argument("--every", type=int, default=500, help="measure every N steps of D's training")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of D's training")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    synthetic, real = build_streams(args.config)
    fixed_syn, fixed_real = batches(synthetic, 31), batches(real, 32)
    fixed = [(next(fixed_syn), next(fixed_real)) for _ in range(args.batches)]
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    models = []
    for path in args.checkpoints:
        model = DenoisingAsAdaptation.load_from_checkpoint(path, weights_only=False, map_location="cpu")
        if model.diffusion is None:
            raise SystemExit(f"{path}: an exported checkpoint (no diffusion network); give a training checkpoint")
        model.train()
        models.append(model)
        print(table_row(str(path), measure(model, fixed)), flush=True)
    if args.train_d:
        model = models[0]
        optimizer = torch.optim.Adam(model.diffusion.parameters(), lr=args.lr)
        train_syn, train_real = batches(synthetic, 21), batches(real, 22)
        generator, start = torch.Generator().manual_seed(1), time.time()
        for step in range(1, args.train_d + 1):
            syn, rl = next(train_syn), next(train_real)
            with torch.no_grad():
                res_syn, res_real = model.residual(syn["lq"]), model.residual(rl["lq"])
            denoise, contrast = model.noise_terms(
                {"gt": syn["gt"], "lq": syn["lq"], "real_lq": rl["lq"]}, res_syn, res_real, generator
            )
            optimizer.zero_grad()
            combined_noise_loss(denoise, contrast).backward()
            optimizer.step()
            if step % args.every == 0 or step == args.train_d:
                print(
                    table_row(f"D alone +{step} steps ({time.time() - start:.0f} s)", measure(model, fixed)), flush=True
                )


if __name__ == "__main__":
    main()
