"""Two real DDP processes (gloo on the CPU): through the command line on shards of uneven sizes
(5, 2 and 1 samples), no rank waits on another, ranks see different samples, weights stay in
sync, and validation (2 samples split per sample over 2 ranks) completes; and on a fixed global
batch, two processes end with the weights (and EMA) of one process, to float tolerance, even
across a step that one rank alone found non-finite."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from tests.conftest import REPO
from tests.processes import run_group
from tests.test_cli import RECIPE, data_args, run

pytestmark = pytest.mark.slow


def test_two_process_ddp_on_uneven_shards(tmp_path, sr_shards):
    probe = tmp_path / "probe"
    run(
        [
            "fit",
            *RECIPE,
            *data_args(sr_shards),
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            "--trainer.max_steps=5",
            "--trainer.val_check_interval=5",
            "--trainer.callbacks+=tests.ddp_probe.RankProbe",
            f"--trainer.callbacks.out_dir={probe}",
        ],
        tmp_path,
        timeout=300,
    )
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [len(r["steps"]) for r in ranks] == [5, 5]  # a fixed number of steps on every rank
    for a, b in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert a["checksum"] != b["checksum"]  # different crops on the two ranks at every step
    assert [s["keys"] for s in ranks[0]["steps"]] != [s["keys"] for s in ranks[1]["steps"]]
    assert ranks[0]["param_sum"] == pytest.approx(ranks[1]["param_sum"], rel=0, abs=1e-9)  # gradients all-reduced
    assert (tmp_path / "runs/sr3_x4_demo/checkpoints/last.ckpt").exists()


def test_two_processes_end_with_the_weights_of_one_process_on_the_same_global_batch(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for devices in (1, 2):
        done = run_group(
            [sys.executable, "-m", "tests.ddp_equivalence", str(devices), str(tmp_path / f"d{devices}")],
            cwd=REPO,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-4000:]
    one, two = (torch.load(tmp_path / f"d{n}/weights.pt", weights_only=True) for n in (1, 2))
    assert one["nonfinite"]["total"] == two["nonfinite"]["total"] == 1  # step 2 skipped by both ranks together
    for part in ("trained", "ema"):
        assert one[part].keys() == two[part].keys()
        for key in one[part]:
            torch.testing.assert_close(two[part][key], one[part][key], rtol=0, atol=1e-6)
    assert not torch.equal(one["trained"]["net.0.weight"], one["ema"]["net.0.weight"])
    seen = [set(json.loads((tmp_path / f"d2/seen{r}.json").read_text())) for r in (0, 1)]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(40))  # disjoint halves of every global batch
