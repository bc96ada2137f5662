"""The `--model.*` flags that validate, test and predict put over a `--ckpt_path` checkpoint's settings (the
end-to-end check is tests/test_deqir_cli.py: the flags reach the method and its saved config)."""

from __future__ import annotations

from ir_lightning.cli import merged, model_flags


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
