"""`ir-lightning export`: a training checkpoint -> a small file for restoring.

A training checkpoint holds the EMA weights (`state_dict`), the trained weights, the optimizer
and scheduler states and the callbacks' states. Restoring needs only the EMA weights of the
networks restoration runs (the method's `TRAINING_ONLY` submodules, listed in the checkpoint, are
left out: a diffusion network that only shaped the loss, a teacher, a discriminator) and the
hyperparameters that rebuild the method (`SR3.load_from_checkpoint` reads such a file as it
reads a full checkpoint, with `weights_only=True`).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from ir_lightning.io.atomic import atomic_write_bytes

KEPT = (
    "state_dict",
    "hyper_parameters",
    "hparams_name",
    "pytorch-lightning_version",
    "global_step",
    "epoch",
    "imported_from",
)


def export_weights(src: str | Path, dst: str | Path, half: bool = False) -> dict[str, int]:
    """Writes the restoring part of checkpoint `src` to `dst` (atomically); returns sizes in bytes."""
    import torch  # here, not above: `ir-lightning export --help` imports no torch

    from ir_lightning.io.weights import read_checkpoint

    checkpoint = read_checkpoint(src)  # refused, naming the file, unless a checkpoint of this suite
    if "hyper_parameters" not in checkpoint:
        raise ValueError(f"{src} is not a Lightning checkpoint of this suite (no state_dict/hyper_parameters)")
    slim = {k: checkpoint[k] for k in KEPT if k in checkpoint}
    dropped = list(checkpoint.get("training_only", ()))  # e.g. a diffusion network that only shaped the loss
    if dropped:
        prefixes = tuple(f"{name}." for name in dropped)
        slim["state_dict"] = {k: v for k, v in slim["state_dict"].items() if not k.startswith(prefixes)}
    left_out = list(dict.fromkeys([*checkpoint.get("exported_without", ()), *dropped]))  # an import's, then ours
    if left_out:
        slim["exported_without"] = left_out
    if half:
        slim["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in slim["state_dict"].items()}
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    atomic_write_bytes(dst, buffer.getvalue())
    return {"source": Path(src).stat().st_size, "exported": Path(dst).stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ir-lightning export",
        description="Keep only the EMA weights and the hyperparameters of a training checkpoint, for restoring.",
    )
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (e.g. runs/<run>/checkpoints/last.ckpt)")
    parser.add_argument("output", type=Path, help="where to write the small checkpoint")
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    args = parser.parse_args(argv)
    try:
        sizes = export_weights(args.checkpoint, args.output, half=args.half)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.output}: {sizes['exported'] / 1e6:.1f} MB (from {sizes['source'] / 1e6:.1f} MB)")
    return 0
