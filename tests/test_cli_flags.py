"""The `--model.*` flags that validate, test and predict put over a `--ckpt_path` checkpoint's settings (the
end-to-end check is tests/test_deqir_cli.py: the flags reach the method and its saved config)."""

from __future__ import annotations

import torch

from ir_lightning.cli import kept_network_flags, merged, model_flags


def test_model_flags_are_read_in_both_spellings_with_yaml_values_and_the_network_left_out():
    words = [
        "validate",
        "-c",
        "deqir_faces64.yaml",
        "--model.init_args.operator=inpaint_box",
        "--model.init_args.sampling.steps",
        "2",
        "--model.sampling.solver.method=sequential",
        "--model.init_args.net.init_args.base_channels=8",  # the weights must fit: the checkpoint's network stays
        "--model.class_path=ir_lightning.methods.SR3",
        "--trainer.max_steps=3",
        "--model.init_args.sigma_y=0.05",
    ]
    assert model_flags(words) == {
        "operator": "inpaint_box",
        "sampling": {"steps": 2, "solver": {"method": "sequential"}},
        "sigma_y": 0.05,
    }
    assert model_flags(["--model.init_args.operator"]) == {}  # a flag without its value is the parser's to refuse


def test_a_flag_changes_one_field_of_a_setting_and_keeps_the_others():
    stored = {"operator": "sr4", "sampling": {"steps": 25, "eta": 0.0, "solver": {"method": "anderson", "memory": 5}}}
    changed = merged(stored, {"sampling": {"solver": {"method": "sequential"}}, "operator": "colorization"})
    assert changed == {
        "operator": "colorization",
        "sampling": {"steps": 25, "eta": 0.0, "solver": {"method": "sequential", "memory": 5}},
    }
    assert stored["sampling"]["solver"]["method"] == "anderson"  # the checkpoint's settings are not changed in place


def test_the_flags_that_would_change_the_checkpoint_s_network_are_named_as_ignored():
    words = ["--model.init_args.net.init_args.base_channels=8", "--model.init_args.operator=sr4", "--model.net=x"]
    assert kept_network_flags(words) == [words[0], words[2]]


def test_a_safetensors_export_or_model_folder_as_ckpt_path_is_refused_naming_what_to_give(tmp_path, capsys):
    from safetensors.torch import save_file

    from ir_lightning import cli

    exported = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(1)}, exported)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, folder / "model.safetensors")
    for path in (exported, folder):
        assert cli.main(["validate", "-c", "deqir_faces64.yaml", f"--ckpt_path={path}"]) == 2
        error = capsys.readouterr().err
        assert f"--ckpt_path {path}: a safetensors export or model folder" in error and "--format ckpt" in error
