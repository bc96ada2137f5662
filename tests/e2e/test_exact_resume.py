"""Exact resume of every method through the real command line (SR3's is tests/test_resume.py): a run started
afresh with `--ckpt_path` at the checkpoint an 8-step run wrote at step 4 (the file a run killed after step 4
leaves) ends at step 8 with the bits of that uninterrupted run: every tensor of state_dict (EMA weights),
current_model_state (trained weights), averaging_state and optimizer_states (the GAN's two optimizers),
global_step, lr_schedulers and the data loader's position.

The runs cross epoch boundaries (3-step epochs) with a loader worker; RDDM and DeqIR train with dropout (torch's
global generator must replay too); DiffIR stage 2 resumes after its prior-only phase (steps 0-2) with both
parameter groups' moments; the GAN stage counts 2 optimizer steps per iteration (resumed after its second
iteration). The stacks are in tests/e2e/stacks.py.

That a SIGKILLed or SIGUSR1-warned run leaves that checkpoint and `--ckpt_path auto` finds it does not depend on
the method: tests/test_resume.py proves it for SR3. Here every method starts from its uninterrupted run's own
step-4 file, which saves a third run per method (the suite's time budget)."""

from __future__ import annotations

import pytest
import torch

from tests.e2e.rank_probe import differing
from tests.e2e.stacks import LAST, METHODS, fit
from tests.test_cli import load
from tests.test_resume import assert_same_training_state

pytestmark = pytest.mark.slow

RESUMED_FROM = "ckpt/step00000004.ckpt"


@pytest.mark.parametrize("name", list(METHODS))
def test_run_resumed_at_step_4_ends_with_the_bits_of_the_uninterrupted_run(name, uninterrupted, sr_shards, tmp_path):
    method = METHODS[name]
    previous = uninterrupted(method.previous) if method.previous else None
    reference = uninterrupted(name)
    checkpoint = load(reference / RESUMED_FROM)
    assert checkpoint["global_step"] == 4 and len(checkpoint["optimizer_states"]) == method.steps_per_iteration
    fit(method, tmp_path, sr_shards, previous, f"--ckpt_path={reference / RESUMED_FROM}")
    resumed, probe = load(tmp_path / LAST), torch.load(tmp_path / "ranks/rank0.pt", weights_only=True)
    # it did resume (a run that ignored the checkpoint and trained 8 steps afresh would end with the same bits)
    assert probe["start_step"] == 4 and len(probe["logged"]) == 4 // method.steps_per_iteration
    assert not differing(probe["initial"], checkpoint["current_model_state"])  # from the checkpoint's trained weights
    assert resumed["hyper_parameters"]["_class_path"] == f"ir_lightning.methods.{name}"
    assert_same_training_state(resumed, load(reference / LAST))
