"""The command line destroys the torch.distributed process group its run made, before the interpreter's exit."""

from __future__ import annotations

import os

import pytest

from tests.test_cli import RECIPE, data_args


@pytest.mark.filterwarnings("ignore")  # Lightning's notes on a one-process DDP run, in this process
def test_the_command_line_destroys_the_gloo_group_its_ddp_run_made(tmp_path, sr_shards, monkeypatch):
    """A gloo group left to the interpreter's exit can abort a finished run (exit -6, `terminate called without
    an active exception`; seen in this suite): the command line destroys it itself, here in a one-process DDP
    run made in this process."""
    import torch.distributed as dist

    from ir_lightning.cli import run_lightning

    destroyed = []
    destroy = dist.destroy_process_group
    monkeypatch.setattr(
        dist, "destroy_process_group", lambda *a: destroyed.append(dist.is_initialized()) or destroy(*a)
    )
    monkeypatch.chdir(tmp_path)
    environment = dict(os.environ)  # Lightning sets MASTER_ADDR and MASTER_PORT here: later tests must not see them
    try:
        code = run_lightning(
            [
                "fit",
                *RECIPE,
                *data_args(sr_shards),
                "--trainer.accelerator=cpu",
                "--trainer.devices=1",
                "--trainer.strategy=ddp",
                "--trainer.max_steps=1",
                "--trainer.limit_val_batches=0",
                "--trainer.logger=false",
                "--lr_monitor=null",
                "--image_grid=null",
                "--wandb_summaries=null",
            ],
            from_sys_argv=False,
        )
    finally:
        os.environ.clear()
        os.environ.update(environment)
    assert code == 0
    assert destroyed == [True]  # a group existed, and the command line destroyed it
    assert not dist.is_initialized()
