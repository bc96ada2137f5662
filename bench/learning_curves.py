"""Learning curves of training runs: validation PSNR against the step and against wall time, one PNG per run.

Reads the offline W&B run files a run wrote under `<run dir>/wandb` (`ir_lightning.io.wandb_records`; a run
resumed several times has several, their wall times laid end to end) and plots `val/psnr` (and `val/color_error`
where logged, on a second axis) against `trainer/global_step` and against the training's wall time in minutes.
A horizontal line marks the task's trivial baseline when given.

    pip install matplotlib     # only this script needs it
    python bench/learning_curves.py --run "SR3 x4=runs/sr3_x4_photos" --baseline "SR3 x4=27.24" \\
        --out docs/models/curves
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ir_lightning.io.wandb_records import config, history, offline_runs


def validation_points(run_dir: Path) -> list[dict]:
    """(step, minutes, psnr, color_error) of every validation the run logged, oldest first."""
    points, offset = [], 0.0
    for path in offline_runs(Path(run_dir) / "wandb"):
        rows = history(path)
        last_runtime = 0.0
        for row in rows:
            last_runtime = max(last_runtime, float(row.get("_runtime", 0.0)))
            if "val/psnr" in row:
                points.append(
                    {
                        "step": int(row.get("trainer/global_step", row.get("_step", 0))),
                        "minutes": (offset + float(row.get("_runtime", 0.0))) / 60,
                        "psnr": float(row["val/psnr"]),
                        "color_error": row.get("val/color_error"),
                    }
                )
        offset += last_runtime
    return sorted(points, key=lambda p: p["step"])


def psnr_space(run_dir: Path) -> str | None:
    """The colour space the run's validation PSNR was computed on, "Y" or "RGB": its method's `y_channel` as the
    run's W&B config recorded it (SR3, RDDM and DiffIR validate on Y; DA and DeqIR's CPU overlay on RGB); None if
    not recorded."""
    for path in offline_runs(Path(run_dir) / "wandb"):
        settings = config(path)
        value = settings.get("y_channel", settings.get("model", {}).get("init_args", {}).get("y_channel"))
        if isinstance(value, bool):
            return "Y" if value else "RGB"
    return None


def plot(title: str, points: list[dict], baseline: float | None, target: Path, space: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for axis, key, label in ((axes[0], "step", "training step"), (axes[1], "minutes", "wall time (minutes)")):
        axis.plot(
            [p[key] for p in points],
            [p["psnr"] for p in points],
            "o-",
            color="tab:blue",
            label=f"val PSNR ({space})" if space else "val PSNR",
        )
        if baseline is not None:
            axis.axhline(baseline, color="tab:gray", linestyle="--", label=f"baseline {baseline:.2f} dB")
        axis.set_xlabel(label)
        axis.set_ylabel("PSNR (dB)")
        axis.grid(alpha=0.3)
        colours = [(p[key], p["color_error"]) for p in points if p["color_error"] is not None]
        if colours:
            twin = axis.twinx()
            twin.plot(*zip(*colours), "s:", color="tab:red", label="colour error")
            twin.set_ylabel("colour error (levels)", color="tab:red")
        axis.legend(loc="lower right", fontsize=8)
    figure.suptitle(f"{title}: validation on the held-out photos")
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100)
    plt.close(figure)


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="TITLE=DIR", help="a run's folder")
    parser.add_argument("--baseline", action="append", default=[], metavar="TITLE=DB", help="a run's baseline PSNR")
    parser.add_argument("--out", type=Path, default=Path("docs/models/curves"))
    args = parser.parse_args()
    baselines = {title: float(value) for title, value in (item.split("=", 1) for item in args.baseline)}
    summary = {}
    for item in args.run:
        title, folder = item.split("=", 1)
        points = validation_points(Path(folder))
        if not points:
            raise SystemExit(f"error: {folder} logged no val/psnr")
        target = args.out / f"{slug(title)}.png"
        plot(title, points, baselines.get(title), target, psnr_space(Path(folder)))
        summary[title] = points
        print(
            f"{title}: {len(points)} validations, last {points[-1]['psnr']:.2f} dB at step {points[-1]['step']} -> {target}"
        )
    (args.out / "curves.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
