"""The one safe reader of weight files (`ir_lightning.io.weights`): one error class for every way a file fails,
a missing file that is also a FileNotFoundError, the key report, and Lightning's settings keys written out.
(Checkpoints against hostile files: tests/test_hostile_checkpoints.py; LPIPS, FID and VGG19 files: their tests.)"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.core.saving import CHECKPOINT_PAST_HPARAMS_KEYS

from ir_lightning.errors import ConfigurationError
from ir_lightning.io.weights import (
    LIGHTNING_PAST_HPARAMS_KEYS,
    MissingWeightsFile,
    WeightsError,
    check_keys,
    key_report,
    read_checkpoint,
    read_state_dict,
)


def test_the_settings_keys_are_lightnings():
    assert LIGHTNING_PAST_HPARAMS_KEYS == tuple(CHECKPOINT_PAST_HPARAMS_KEYS)


def test_every_failure_is_one_error_class_and_a_missing_file_is_also_not_found(tmp_path):
    assert issubclass(WeightsError, ConfigurationError) and issubclass(WeightsError, ValueError)
    for read in (read_checkpoint, read_state_dict):
        with pytest.raises(MissingWeightsFile, match=r"absent\.pt: no such file") as missing:
            read(tmp_path / "absent.pt")
        assert isinstance(missing.value, WeightsError) and isinstance(missing.value, FileNotFoundError)
    (tmp_path / "text.pt").write_text("hello\n")
    with pytest.raises(WeightsError, match=r"text\.pt: refused, not a checkpoint of this suite \(it is a text file\)"):
        read_checkpoint(tmp_path / "text.pt")
    with pytest.raises(
        WeightsError, match=r"text\.pt: not a PyTorch weights file that loads with weights_only=True \(it is a text"
    ):
        read_state_dict(tmp_path / "text.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "state.pt")
    assert torch.equal(read_state_dict(tmp_path / "state.pt")["w"], torch.ones(2))
    with pytest.raises(
        WeightsError, match=r"state\.pt: refused, not a checkpoint of this suite \(no state_dict of named tensors\)"
    ):
        read_checkpoint(tmp_path / "state.pt")


def test_the_key_report_names_missing_unexpected_and_mis_shaped_keys_in_order():
    found = {"b": torch.zeros(2, 3), "x": torch.zeros(1), "a": torch.zeros(4)}
    expected = {"a": torch.Size([4]), "b": torch.zeros(3, 2), "c": (5,)}
    report = key_report(found, expected)
    assert report.missing == ["c"] and report.unexpected == ["x"] and report.mismatched == [("b", (2, 3), (3, 2))]
    assert report.text() == "missing keys c; unexpected keys x; mis-shaped b (2, 3) (expected (3, 2))"
    assert not key_report(found, {k: v.shape for k, v in found.items()})
    with pytest.raises(
        WeightsError, match=r"^f\.pt: not a test network: missing keys c; unexpected keys x; mis-shaped b"
    ):
        check_keys("f.pt", found, expected, "a test network")
