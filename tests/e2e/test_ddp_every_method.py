"""Two real DDP processes (gloo on the CPU) for every method.

Through the command line (RDDM, DiffIR stage 2, the GAN stage, Denoising as Adaptation, DeqIR; SR3's is
tests/test_ddp.py): after 4 optimizer steps both ranks hold bit-identical trained weights and EMA weights, every
trained network moved from where it started (a frozen teacher did not), and every value a rank logged under
`train/` is finite. The GAN stage runs with `ddp_find_unused_parameters_true`, as its docstring says (each of its
two backward passes reaches one network).

Exact equality of a 1-process and a 2-process run on the same global batch is asserted for DiffIR stage 1 only,
through tests/e2e/diffir_s1_ddp_equivalence.py (the real `DiffIRS1`, tiny networks, a fixed global batch of 8 split
4 + 4), because its training step draws nothing at random. It is not expected of the others, by design:

- SR3, RDDM, DeqIR, DiffIR stage 2 and the GAN stage draw their noise (and noise levels) from a stream seeded by
  (seed, rank, step) (`RestorationModule.training_generator`), so that the ranks of a global batch draw different
  noise: with 2 processes, rank 1's half of the batch gets other noise than samples 4..7 of the 1-process run
  (and dropout, reseeded per (seed, rank, step), drops other units);
- Denoising as Adaptation pairs samples within the local batch (its triplet compares whole-batch mean distances
  through a ReLU, and the unpaired variant shifts GTs within the batch), so its loss is not the mean of per-sample
  losses: the average of two half-batch losses differs from the loss of the whole batch even with equal noise;
- through the command line each rank also reads its own part of the shard stream, with its own crops and
  degradation draws, so no two runs with different process counts see the same global batch anyway.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from tests.conftest import REPO
from tests.e2e.diffir_s1_ddp_equivalence import main as one_process
from tests.e2e.rank_probe import all_finite, differing
from tests.e2e.stacks import METHODS, ONE_THREAD, fit
from tests.processes import run_group

pytestmark = pytest.mark.slow

FROZEN = {"DiffIRS2": ("cpen_s1.",), "DiffIRGAN": ("cpen_s1.",)}  # the stage-1 teacher


def moved(record: dict, part: str) -> set[str]:
    return {key for key in record[part] if not torch.equal(record[part][key], record["initial"][key])}


@pytest.mark.parametrize("name", [name for name in METHODS if name != "DiffIRS1"])
def test_two_processes_hold_the_same_trained_and_ema_weights(name, uninterrupted, sr_shards, tmp_path):
    method = METHODS[name]
    previous = uninterrupted(method.previous) if method.previous else None
    strategy = "ddp_find_unused_parameters_true" if method.steps_per_iteration == 2 else "ddp"
    done = fit(
        method,
        tmp_path,
        sr_shards,
        previous,
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        f"--trainer.strategy={strategy}",
        "--trainer.max_steps=4",
    )
    assert "Starting with 2 processes" in done.stdout + done.stderr
    ranks = [torch.load(tmp_path / f"ranks/rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [(r["rank"], r["world"], r["start_step"], r["global_step"]) for r in ranks] == [(0, 2, 0, 4), (1, 2, 0, 4)]
    for part in ("initial", "trained", "ema"):
        different = differing(ranks[0][part], ranks[1][part])
        assert not different, f"{part}: {len(different)} tensors differ between the ranks, e.g. {different[:5]}"
    record = ranks[0]
    for part in ("trained", "ema"):
        changed = moved(record, part)
        for prefix in method.trained:
            assert any(key.startswith(prefix) for key in changed), f"{part}: nothing under {prefix} moved"
    for prefix in FROZEN.get(name, ()):
        assert not any(key.startswith(prefix) for key in moved(record, "trained")), f"the frozen {prefix} moved"
    for r in ranks:
        assert len(r["logged"]) == 4 // method.steps_per_iteration and all("train/loss" in step for step in r["logged"])
        assert all_finite(r["logged"]), r["logged"]


@pytest.mark.filterwarnings(
    "ignore:The `srun` command",
    "ignore:You defined a `validation_step`",
    "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated",
)  # Lightning's notes, in this process
def test_diffir_stage1_two_processes_end_with_the_weights_of_one_process(tmp_path):
    one_process(1, tmp_path / "d1")  # here, in this process
    done = run_group(
        [sys.executable, "-m", "tests.e2e.diffir_s1_ddp_equivalence", "2", str(tmp_path / "d2")],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), **ONE_THREAD),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    one = torch.load(tmp_path / "d1/weights0.pt", weights_only=True)
    two = [torch.load(tmp_path / f"d2/weights{r}.pt", weights_only=True) for r in (0, 1)]
    for part in ("initial", "trained", "ema"):
        assert not differing(two[0][part], two[1][part]), part  # the ranks agree bit for bit
        assert one[part].keys() == two[0][part].keys()
        for key in one[part]:
            torch.testing.assert_close(two[0][part][key], one[part][key], rtol=0, atol=1e-6)
    for part in ("trained", "ema"):
        assert {key.split(".")[0] for key in moved(one, part)} == {"restorer", "cpen_s1"}, part
    assert not torch.equal(one["trained"]["restorer.embed.weight"], one["ema"]["restorer.embed.weight"])
    seen = [set(json.loads((tmp_path / f"d2/seen{r}.json").read_text())) for r in (0, 1)]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(32))  # disjoint halves of every global batch
