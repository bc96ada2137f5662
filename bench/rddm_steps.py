"""Quality per sampling step: RDDM against SR3 on x4 super-resolution of the demo's held-out photos.

Both methods train from scratch on the demo shards, for the same number of steps, with the same
U-Net (the SR3 demo's: 32 channels, multipliers 1,2,2,4; RDDM's has two output heads), through
the real command line (`recipes/*_sr_x4.yaml` with their CPU demo overlays). Then each restores
the three held-out photos (256 x 256 centre crops, LR by bicubic x4): RDDM with 1, 2, 5 and 10
steps, SR3 with DDIM at 10, 50 and 100 steps. Prints PSNR/SSIM (Y, border 4) and seconds per
image. Target of the issue: RDDM at 5 steps or fewer reaches SR3's PSNR at 50 steps.

    python bench/rddm_steps.py [--steps 1500] [--out bench_out/rddm_steps]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ir_lightning.commands.demo import build_shards, evaluate, held_out_batches, table

REPO = Path(__file__).resolve().parents[1]

RECIPES = {
    "sr3": ["recipes/sr3_x4.yaml", "recipes/demo/sr3_x4_cpu.yaml"],
    "rddm": ["recipes/rddm_sr_x4.yaml", "recipes/demo/rddm_sr_x4_cpu.yaml"],
}


def train(method: str, patterns: dict[str, str], out: Path, steps: int) -> Path:
    run_dir = out / "runs" / method
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists() and torch.load(last, map_location="cpu", weights_only=True)["global_step"] >= steps:
        print(f"  {method}: reusing {last}", flush=True)
        return last
    cmd = [sys.executable, "-m", "ir_lightning", "fit"]
    for recipe in RECIPES[method]:
        cmd += ["-c", str(REPO / recipe)]
    cmd += [
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}",
        "--trainer.enable_progress_bar=false",
        f"--data.init_args.train_shards={Path(patterns['train']).resolve()}",
        f"--data.init_args.val_shards={Path(patterns['val']).resolve()}",
        f"--run_dir={run_dir}",
        "--ckpt_path=auto",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=out)
    print(f"  {method}: {steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="training steps of each method")
    parser.add_argument("--out", type=Path, default=Path("bench_out/rddm_steps"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    patterns = build_shards(args.out / "shards")
    checkpoints = {method: train(method, patterns, args.out, args.steps) for method in RECIPES}

    from ir_lightning.methods import RDDM, SR3

    sr3 = SR3.load_from_checkpoint(checkpoints["sr3"], map_location="cpu", weights_only=True).eval()
    rddm = RDDM.load_from_checkpoint(checkpoints["rddm"], map_location="cpu", weights_only=True).eval()
    n_params = {name: sum(p.numel() for p in m.net.parameters()) for name, m in (("sr3", sr3), ("rddm", rddm))}
    batches = held_out_batches(patterns["val"])

    def rddm_at(steps: int):
        def restore(lq):
            rddm.sampling = rddm.sampling.replaced(steps=steps)
            return rddm.restore(lq)

        return restore

    def sr3_at(steps: int):
        def restore(lq):
            sr3.sampling = sr3.sampling.replaced(sampler="ddim", steps=steps)
            return sr3.restore(lq)

        return restore

    restorers = {f"RDDM, {n} step{'s' if n > 1 else ''}": rddm_at(n) for n in (1, 2, 5, 10)}
    restorers |= {f"SR3 DDIM, {n} steps": sr3_at(n) for n in (10, 50, 100)}
    scores, _ = evaluate(batches, restorers)
    print(
        f"\nEMA weights after {args.steps} training steps each; U-Net parameters: SR3 {n_params['sr3']:,}, "
        f"RDDM {n_params['rddm']:,}"
    )
    print(table(scores, ["astronaut", "coffee", "chelsea"]))
    best_rddm = max(np.mean(scores[f"RDDM, {n} step{'s' if n > 1 else ''}"]["psnr"]) for n in (1, 2, 5))
    sr3_50 = np.mean(scores["SR3 DDIM, 50 steps"]["psnr"])
    verdict = "met" if best_rddm >= sr3_50 else "not met"
    print(
        f"\ntarget: best RDDM PSNR at <= 5 steps ({best_rddm:.2f} dB) >= SR3 DDIM 50 steps ({sr3_50:.2f} dB): {verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
