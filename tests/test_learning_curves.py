"""bench/learning_curves.py reads real offline W&B runs: the validation points in step order across a resumed run's
files, and the colour space its PSNR was computed on, from the run's own `y_channel` setting (DA and DeqIR's CPU
overlay score RGB; SR3, RDDM and DiffIR score Y): a curve labelled Y for an RGB run would misstate its protocol."""

from __future__ import annotations

import pytest

from bench.learning_curves import psnr_space, validation_points

pytestmark = pytest.mark.usefixtures("wandb_service_stopped")


def offline_run(run_dir, config: dict, psnrs: list[tuple[int, float]]) -> None:
    """One offline W&B run under `run_dir/wandb` that logs `val/psnr` at the given steps, as training does."""
    import wandb

    run = wandb.init(
        mode="offline", dir=str(run_dir), config=config, reinit="create_new", settings=wandb.Settings(silent=True)
    )
    for step, psnr in psnrs:
        run.log({"val/psnr": psnr, "trainer/global_step": step})
    run.finish()


@pytest.mark.parametrize(
    ("config", "space"),
    [
        ({"y_channel": False}, "RGB"),
        ({"model": {"init_args": {"y_channel": True}}}, "Y"),
        ({"lr": 1e-4}, None),
    ],
)
def test_the_psnr_s_colour_space_and_points_come_from_the_run_itself(tmp_path, monkeypatch, config, space):
    monkeypatch.setenv("WANDB_MODE", "offline")
    offline_run(tmp_path, config, [(299, 21.5), (599, 23.25)])
    offline_run(tmp_path, config, [(899, 24.0)])  # resumed: a second run file in the same folder
    assert psnr_space(tmp_path) == space
    points = validation_points(tmp_path)
    assert [(p["step"], p["psnr"]) for p in points] == [(299, 21.5), (599, 23.25), (899, 24.0)]
