"""Benchmark: DeqIR's parallel fixed-point sampling against the sequential chain, for T in {10, 25, 50, 100}.

For the DDNM chain of a trained DeqIR prior (default: the demo's, `recipes/demo/deqir_cpu.yaml`) on x4
super-resolution by average pooling of the held-out demo photos (64 x 64 centre crops, one image):

- sequential: T serial rounds of one network call on one state each;
- Picard and Anderson (memory 5, regularisation 1e-3, mixing 1, up to `--max-iter` iterations) to the relative residual
  `--tol`: serial rounds = solver iterations, each one batched call over the states not yet exact;
  each with DDNM's plain split ("none") and with the spectral preconditioner (the module's default).

Columns: serial rounds; total network evaluations (images through the network); peak memory of the
restoration (resident set size in a fresh subprocess, minus the same process's size just before it
starts); seconds on this CPU; the max-abs difference of the parallel result from the sequential one
([-1, 1] scale) and the PSNR of each against the clean crop; and, from a second run stopped after
T / 4 rounds, how close its x_0 is to the sequential one (PSNR, inf = identical). Target (issue 7):
the parallel solver reaches the tolerance in at most T / 4 serial rounds at T >= 50.

Run from the repository root after training the demo prior:
    ir-lightning fit -c recipes/deqir_faces64.yaml -c recipes/demo/deqir_cpu.yaml
    python bench/deqir_parallel.py [--ckpt runs/deqir_demo/checkpoints/last.ckpt]
It prints a markdown table; it asserts nothing. About 30 minutes on 2 idle cores (T = 100 dominates).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    """This process's current resident set size in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one_run(ckpt: str, n_steps: int, sampler: str, tol: float, max_iter: int, shards: str, crop: int) -> dict:
    """Restore once in this process and return the figures (called in a subprocess per configuration)."""
    warnings.filterwarnings("ignore")
    from datamodules import ShardDataModule
    from ir_lightning.diffusion.deq import SolverSettings
    from ir_lightning.methods.deqir import DeqIR
    from ir_lightning.metrics.psnr_ssim import RestorationMetrics

    model = DeqIR.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False).eval()
    solver, _, preconditioner = sampler.partition("+")
    settings = (
        SolverSettings(solver) if solver == "sequential" else SolverSettings(solver, tolerance=tol, max_iter=max_iter)
    )
    model.sampling = dataclasses.replace(model.sampling, steps=n_steps, solver=settings)
    model.preconditioner = preconditioner or "none"
    data = ShardDataModule(train_shards=shards, val_shards=shards, val_crop_size=crop, num_workers=0)
    data.setup("validate")
    gt = next(iter(data.val_dataloader()))["gt"]
    operator = model.operator_for(tuple(gt.shape[-2:]))
    lq = operator.forward(gt)
    calls = {"images": 0, "rounds": 0}
    forward = model.net.forward

    def counting(x, level):
        calls["images"] += x.shape[0]
        calls["rounds"] += 1
        return forward(x, level)

    model.net.forward = counting  # type: ignore[method-assign]
    before = rss_mib()
    start = time.perf_counter()
    restored, result = model.restoration(lq, size=tuple(gt.shape[-2:]))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    metric = RestorationMetrics(crop_border=0, y_channel=False)
    metric.update(restored, gt)
    return {
        "rounds": calls["rounds"],
        "images": calls["images"],
        "peak_mib": peak - before,
        "seconds": seconds,
        "psnr": float(metric.compute()["psnr"]),
        "iterations": result.iterations if result else n_steps,
        "stopped_by": result.stopped_by if result else "sequential",
        "residual": result.residuals[-1] if result else 0.0,
        "restored": restored.flatten().tolist(),
    }


def run_in_subprocess(args: argparse.Namespace, n_steps: int, sampler: str, tol: float, max_iter: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--one",
        json.dumps([args.ckpt, n_steps, sampler, tol, max_iter, args.shards, args.crop]),
    ]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def psnr_between(run: dict, reference: torch.Tensor) -> float:
    """PSNR of a run's restoration against the sequential one, both in [0, 1]."""
    mse = float(((torch.tensor(run["restored"]) - reference) ** 2).mean())
    if not math.isfinite(mse):
        return float("nan")  # the iterate overflowed: printed as "non-finite"
    return float("inf") if mse == 0 else -10 * math.log10(mse)


SAMPLERS = ("sequential", "picard", "anderson", "picard+spectral", "anderson+spectral")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default="runs/deqir_demo/checkpoints/last.ckpt")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=100, help="solver iteration cap (default 100; the paper's 15)")
    parser.add_argument(
        "--samplers",
        nargs="+",
        default=list(SAMPLERS),
        choices=SAMPLERS,
        help="sequential first: the others are compared with it; +spectral: preconditioned",
    )
    parser.add_argument("--shards", default="demo_out/shards/val-000000.tar")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.samplers[0] != "sequential":
        parser.error("--samplers must start with sequential, the reference the others are compared with")
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_run(*json.loads(args.one))))
        return
    if not Path(args.ckpt).exists():
        raise SystemExit(f"{args.ckpt}: no such checkpoint; train the demo prior first (see --help)")
    print(
        f"DeqIR parallel sampling, {args.ckpt}, x4 average-pooling SR of a {args.crop} x {args.crop} crop, "
        f"tol {args.tol:g}, torch {torch.__version__}, {args.threads} threads\n"
    )
    print(
        "| T | sampler | serial rounds | rounds / T | network evaluations | peak memory (MiB) | seconds | "
        "max abs diff to sequential | PSNR (dB) | stopped by | x_0 after T/4 rounds vs sequential (dB) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for n_steps in args.steps:
        reference = None
        for sampler in args.samplers:
            r = run_in_subprocess(args, n_steps, sampler, args.tol, args.max_iter)
            restored = torch.tensor(r.pop("restored"))
            if reference is None:
                reference = restored
            diff = float((restored - reference).abs().max()) * 2  # [0, 1] -> [-1, 1] scale
            early = (
                ""
                if sampler == "sequential"
                else f"{psnr_between(run_in_subprocess(args, n_steps, sampler, 1e-300, max(1, n_steps // 4)), reference):.1f}".replace(
                    "nan", "non-finite"
                )
            )
            print(
                f"| {n_steps} | {sampler} | {r['rounds']} | {r['rounds'] / n_steps:.2f} | {r['images']} | "
                f"{r['peak_mib']:.0f} | {r['seconds']:.1f} | {diff:.1e} | {r['psnr']:.2f} | "
                f"{r['stopped_by']}, residual {r['residual']:.1e} | {early} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
