"""Callbacks and helpers shared by every method: grids, PNG bytes, the EMA fix, the config saver."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from ir_lightning.io.atomic import atomic_write_text
from ir_lightning.training.callbacks import EMA
from ir_lightning.training.image_grid import comparison_row, png_bytes, stack_rows, to_uint8_hwc


def test_comparison_row_has_four_panels_and_the_restored_image_in_place():
    lq, restored, gt = torch.rand(3, 4, 4), torch.rand(3, 16, 16), torch.rand(3, 16, 16)
    row = comparison_row(lq, restored, gt, gap=2)
    assert row.shape == (3, 16, 4 * 16 + 3 * 2)
    assert torch.equal(row[:, :, 2 * 18 : 2 * 18 + 16], restored)  # third panel
    assert torch.equal(row[:, :, :16], lq.repeat_interleave(4, 1).repeat_interleave(4, 2))  # pixel replication


def test_stack_rows_pads_narrow_rows_with_white():
    grid = stack_rows([torch.zeros(3, 2, 5), torch.zeros(3, 2, 3)], gap=1)
    assert grid.shape == (3, 5, 5)
    assert torch.equal(grid[:, 3:, 3:], torch.ones(3, 2, 2))


def test_png_bytes_round_trip_to_rounded_uint8():
    img = torch.tensor([0.0, 0.5 / 255, 0.51 / 255, 1.0]).reshape(1, 1, 4).repeat(3, 1, 1)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(img))))
    assert decoded[0, :, 0].tolist() == [0, 0, 1, 255]
    assert np.array_equal(decoded, to_uint8_hwc(img))


def test_ema_writes_the_trained_weights_into_the_end_of_fit_checkpoint():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

    module = Tiny()
    ema = EMA(decay=0.5)
    ema._average_model = torch.optim.swa_utils.AveragedModel(module)
    module.w.data.fill_(1.0)
    ema._average_model.update_parameters(module)  # first update copies: average = 1
    module.w.data.fill_(3.0)
    ema._average_model.update_parameters(module)  # 0.5 * 1 + 0.5 * 3 = 2
    ema.on_train_end(SimpleNamespace(), module)  # Lightning copies the average into the module here
    assert module.w.tolist() == [2.0, 2.0]
    checkpoint = {"state_dict": module.state_dict()}
    ema.on_save_checkpoint(SimpleNamespace(), module, checkpoint)
    assert checkpoint["state_dict"]["w"].tolist() == [2.0, 2.0]  # the average, for restoring
    assert checkpoint["current_model_state"]["w"].tolist() == [3.0, 3.0]  # the trained weights, for resuming


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    target = atomic_write_text(tmp_path / "sub" / "config.yaml", "a: 1\n")
    assert target.read_text() == "a: 1\n"
    assert [p.name for p in target.parent.iterdir()] == ["config.yaml"]
