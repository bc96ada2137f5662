"""Why SR3's colours drift (issue 21): each candidate cause changed on its own, colour error and PSNR measured.

Every row restores the demo's three held-out photos (astronaut, coffee, chelsea; 256 x 256 centre crops, LR by
bicubic x4; never trained on) and scores PSNR / SSIM (Y, border 4) and the colour error (RGB mean absolute
difference of 8 x 8 box averages, 8-bit levels; `ir_lightning.metrics.psnr_ssim.color_error_per_image`), and the
per-channel mean shift (output minus ground truth, levels: a drift of the whole image's colour).

Candidates and the rows that test them:

- DDIM's DC drift with clamping at few steps: the same weights at 10, 50 and 200 DDIM steps, and without clamping;
- the noise-level scaling of noise prediction: the network's one-step estimate of the clean image from the ground
  truth noised to sqrt(gamma) = 0.9, 0.5, 0.1 and 0.02 (no sampler involved): where does the colour go wrong?
- the greyscale training photos and under-training: checkpoints given with --checkpoint NAME=PATH (e.g. the
  shipped weights trained on for the same steps on the demo's shards, 10 of 18 photos grey, and on colour photos);
- the post-processing options (--post): colour fix and consistency on the shipped weights.

    python bench/sr3_colour.py --checkpoint shipped=tests/fixtures/shipped_2026_11/sr3_x4_demo.ckpt \\
        --checkpoint "control=runs/.../last.ckpt" --out bench_out/sr3_colour
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from ir_lightning.commands.demo import build_shards, held_out_batches
from ir_lightning.degradations.resize import bicubic_upsample
from ir_lightning.diffusion import get_sampler
from ir_lightning.diffusion.ranges import to_signed, to_unit
from ir_lightning.methods.sr3 import SR3
from ir_lightning.metrics.psnr_ssim import color_error_per_image, psnr_per_image, quantize, ssim_per_image

SCALE = 4
LEVELS = (0.9, 0.5, 0.1, 0.02)
"""sqrt(gamma) of the one-step estimates: from mostly signal to almost pure noise."""


def scores(outs: list[torch.Tensor], batches: list[dict]) -> dict[str, float]:
    gts = [b["gt"] for b in batches]
    shift = np.mean([(quantize(o) - quantize(g)).mean(dim=(0, 2, 3)).tolist() for o, g in zip(outs, gts)], axis=0)
    return {
        "psnr": float(np.mean([psnr_per_image(o, g, SCALE, True).item() for o, g in zip(outs, gts)])),
        "ssim": float(np.mean([ssim_per_image(o, g, SCALE, True).item() for o, g in zip(outs, gts)])),
        "color_error": float(np.mean([color_error_per_image(o, g, SCALE).item() for o, g in zip(outs, gts)])),
        "mean_shift_rgb": [round(float(v), 2) for v in shift],
    }


def load(path: str) -> SR3:
    return SR3.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()


def with_sampling(model: SR3, **changes) -> SR3:
    model.sampling = dataclasses.replace(model.sampling, **changes)
    return model


@torch.no_grad()
def one_step_estimates(model: SR3, batches: list[dict], level: float) -> list[torch.Tensor]:
    """The clean image the network infers in one step from the ground truth noised to sqrt(gamma) = `level`."""
    outs = []
    generator = torch.Generator().manual_seed(0)
    for b in batches:
        gt, lq = b["gt"], b["lq"]
        x = to_signed(bicubic_upsample(lq, tuple(gt.shape[-2:])))
        noise = torch.randn(gt.shape, generator=generator)
        y_t = level * to_signed(gt) + (1 - level**2) ** 0.5 * noise
        eps = model.net(torch.cat([x, y_t], dim=1), torch.full((gt.shape[0],), level))
        y0 = (y_t - (1 - level**2) ** 0.5 * eps) / level
        outs.append(to_unit(y0.clamp(-1, 1)))
    return outs


@torch.no_grad()
def restore_from(model: SR3, batch: dict, seed: int, zero_mean: bool) -> torch.Tensor:
    """`model.restoration` with the initial noise drawn from `seed`, its mean per image and channel removed when
    `zero_mean`: the same DDIM chain, only y_T differs."""
    lq, size = batch["lq"], tuple(batch["gt"].shape[-2:])
    x = to_signed(model.upsample(lq, size))
    generator = torch.Generator().manual_seed(seed)
    y_T = torch.randn(x.shape, generator=generator)
    if zero_mean:
        y_T = y_T - y_T.mean(dim=(2, 3), keepdim=True)
    y_T = y_T / y_T.std()  # the same total power either way

    def eps_model(y_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return model.net(torch.cat([x, y_t.to(x.dtype)], dim=1), level)

    y0 = get_sampler("ddim")(eps_model, y_T, model.inference_gammas, generator=generator, clip_y0=True, eta=0.0)
    return to_unit(y0)


def run_row(name: str, restore, batches: list[dict], rows: list[dict]) -> None:
    start = time.perf_counter()
    outs = [restore(b) for b in batches]
    row = {"row": name, **scores(outs, batches), "s_per_image": (time.perf_counter() - start) / len(batches)}
    rows.append(row)
    print(
        f"{name:58s} {row['psnr']:6.2f} {row['ssim']:.4f} {row['color_error']:6.2f}  {row['mean_shift_rgb']}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", help="SR3 checkpoints")
    parser.add_argument("--out", type=Path, default=Path("bench_out/sr3_colour"))
    parser.add_argument("--sweep", default="shipped", help="the checkpoint whose steps, clamp and levels are swept")
    parser.add_argument(
        "--rows",
        default="seeds,steps,levels,post",
        help="the rows of --sweep's checkpoint, comma-separated (default: all): seeds (other sampling seeds, the "
        "initial noise without its channel means), steps (DDIM 10 and 100, no clamping), levels (one-step "
        "estimates), post (colour fix and consistency)",
    )
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    patterns = build_shards(args.out / "shards")
    batches = held_out_batches(patterns["val"])
    paths = dict(item.split("=", 1) for item in args.checkpoint)
    rows: list[dict] = []
    print(f"{'row':58s} {'PSNR':>6s} {'SSIM':>6s} {'colour':>6s}  mean shift R, G, B (levels)")
    run_row("bicubic", lambda b: bicubic_upsample(b["lq"], tuple(b["gt"].shape[-2:])), batches, rows)
    for name, path in paths.items():
        model = load(path)
        run_row(f"{name}: DDIM 50, clamped", lambda b, m=model: m.restore_batch(b), batches, rows)
        if name != args.sweep:
            continue
        if "seeds" in args.rows:
            seed_rows(name, model, batches, rows)
        if "steps" in args.rows:
            for steps in (10, 100):
                swept = with_sampling(load(path), steps=steps)
                run_row(f"{name}: DDIM {steps}, clamped", lambda b, m=swept: m.restore_batch(b), batches, rows)
            unclamped = with_sampling(load(path), clip=False)
            run_row(f"{name}: DDIM 50, not clamped", lambda b, m=unclamped: m.restore_batch(b), batches, rows)
        if "levels" in args.rows:
            for level in LEVELS:
                outs = one_step_estimates(model, batches, level)
                rows.append({"row": f"{name}: one step from GT noised to sqrt(gamma) {level}", **scores(outs, batches)})
                r = rows[-1]
                print(f"{r['row']:58s} {r['psnr']:6.2f} {r['ssim']:.4f} {r['color_error']:6.2f}  {r['mean_shift_rgb']}")
        if "post" in args.rows:
            post_rows(name, path, batches, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sr3_colour.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"written: {args.out / 'sr3_colour.json'}")


def seed_rows(name: str, model: SR3, batches: list[dict], rows: list[dict]) -> None:
    """Other sampling seeds, and the initial noise without its channel means: is the cast the noise's?"""
    for seed in (1, 2):
        run_row(
            f"{name}: DDIM 50, sampling seed {seed}", lambda b, k=seed: restore_from(model, b, k, False), batches, rows
        )
    for seed in (0, 1):
        label = f"{name}: DDIM 50, seed {seed}, y_T without its channel means"
        run_row(label, lambda b, k=seed: restore_from(model, b, k, True), batches, rows)


POST = (("wavelet", None), ("adain", None), (None, "bicubic4"), ("wavelet", "bicubic4"))
"""The post-processing rows: (color_fix, consistency)."""


def post_rows(name: str, path: str, batches: list[dict], rows: list[dict]) -> None:
    """The checkpoint with each colour fix and consistency of `POST` (the methods' settings of the same names)."""
    for color_fix, consistency in POST:
        post = load(path)
        post.color_fix, post.consistency = color_fix or "none", consistency
        label = " + ".join(
            part
            for part in (color_fix and f"color fix {color_fix}", consistency and f"consistency {consistency}")
            if part
        )
        run_row(f"{name}: DDIM 50 + {label}", lambda b, m=post: m.restore_batch(b), batches, rows)


if __name__ == "__main__":
    main()
