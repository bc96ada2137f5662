"""Importing Janspiry's SR3 files (`sr3-janspiry`): detection, the network's layout read from the weights, the
schedule buffers turned into `train_schedule`, the pairing with a method and a recipe, and the refusals, each
naming the keys. The official files are the fixture's (tests/fixtures/official/sr3/make_fixture.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ir_lightning.class_paths import allowed_class
from ir_lightning.importing import ImportRefused, official_formats
from ir_lightning.importing.base import strip_prefix
from ir_lightning.importing.sr3 import FORMATS, NET_CLASS, KeyMap, identify_schedule, read_layout
from ir_lightning.methods.settings import NoiseSchedule

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "official" / "sr3" / "sr3_janspiry.pt"
FORMAT = FORMATS[0]
FLOAT32_ROUNDING = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def gen_file(fixture: dict, case: str = "conditional") -> dict[str, torch.Tensor]:
    """A copy of the fixture's `*_gen.pth` (the wrapper's plain state dict, as `save_network` writes it)."""
    return dict(fixture[case]["gen"])


def opt_file() -> dict:
    """A `*_opt.pth` as `model/model.py` `save_network` writes it: epoch, iter, scheduler and the Adam state."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=1e-4)
    weight.sum().backward()
    optimizer.step()
    return {"epoch": 37, "iter": 640000, "scheduler": None, "optimizer": optimizer.state_dict()}


def test_the_format_is_registered_and_detects_its_files_only(fixture):
    assert official_formats()["sr3-janspiry"] is FORMAT and FORMAT.variants == ("16_128", "64_512")
    assert FORMAT.detect(gen_file(fixture)) and FORMAT.detect(gen_file(fixture, "unconditional"))
    assert FORMAT.detect(opt_file())  # recognised, to be refused with what to pass instead
    others = [
        {"state_dict": {}},
        {"params_ema": {"conv_first.weight": torch.zeros(1)}},
        {"denoise_fn.input_blocks.0.0.weight": torch.zeros(1)},  # Palette's U-Net, not this one
        {"epoch": 1, "iter": 2, "optimizer": {}},
        [],
        None,
        torch.zeros(2),
    ]
    assert not any(FORMAT.detect(obj) for obj in others)


def test_the_optimizer_file_is_refused_asking_for_the_gen_file():
    with pytest.raises(ImportRefused, match=r"optimizer state \(\*_opt\.pth.*pass the \*_gen\.pth"):
        FORMAT.convert(opt_file(), None)


def test_a_conditional_file_becomes_sr3_x8_with_its_schedule_network_and_recipe(fixture):
    imported = FORMAT.convert(gen_file(fixture), None)
    assert imported.method == "ir_lightning.methods.SR3" and imported.recipe == "sr3_16_128_faces"
    assert imported.settings == {
        "train_schedule": {"kind": "linear", "n_steps": 200, "linear_start": 1e-6, "linear_end": 1e-2},
        "scale": 8,
    }
    assert imported.networks == {
        "net": {
            "class_path": NET_CLASS,
            "init_args": {
                "in_channel": 6,
                "out_channel": 3,
                "inner_channel": 4,
                "norm_groups": 32,  # not in the weights: 16_128's
                "channel_mults": [1, 2, 2],
                "attn_res": [64],  # level 1 of a 128 px image, as 8 px of the fixture's 16
                "res_blocks": 2,
                "dropout": 0.2,
                "image_size": 128,
            },
        }
    }
    net_keys = [key for key in fixture["conditional"]["gen"] if key.startswith("denoise_fn.")]
    assert len(imported.state_dict) == len(net_keys) == 238 and all(k.startswith("net.") for k in imported.state_dict)
    assert imported.trained_state_dict is None and (REPO / "recipes" / f"{imported.recipe}.yaml").is_file()
    assert any("schedule buffers" in line and "linear 1e-06 .. 0.01, T = 200" in line for line in imported.report)


def test_the_variant_chooses_the_release_and_unknown_ones_are_refused(fixture):
    imported = FORMAT.convert(gen_file(fixture), "64_512")
    args = imported.networks["net"]["init_args"]
    assert imported.recipe == "sr3_64_512" and imported.settings["scale"] == 8
    assert (args["norm_groups"], args["dropout"], args["image_size"], args["attn_res"]) == (16, 0.0, 512, [256])
    with pytest.raises(ImportRefused, match="unknown variant '32_256'"):
        FORMAT.convert(gen_file(fixture), "32_256")


def test_without_a_variant_the_published_network_picks_the_release_and_a_contradicting_one_is_refused(fixture):
    shapes = fixture["released"]["sr_sr3_64_512"]["shapes"]  # the full-size official layout, no values
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items() if key.startswith("denoise_fn.")}
    assert FORMAT.convert(state, None).recipe == "sr3_64_512"
    assert FORMAT.convert(state, "64_512").recipe == "sr3_64_512"
    with pytest.raises(ImportRefused, match="--variant 16_128: the weights have the published 64_512 network"):
        FORMAT.convert(state, "16_128")  # GroupNorm 32 and dropout 0.2 on 64->512 weights: another function


def test_an_unconditional_file_becomes_a_deqir_prior(fixture):
    imported = FORMAT.convert(gen_file(fixture, "unconditional"), "16_128")
    assert imported.method == "ir_lightning.methods.DeqIR" and imported.recipe == "deqir_faces64"
    assert imported.settings == {
        "train_schedule": {"kind": "quad", "n_steps": 100, "linear_start": 1e-4, "linear_end": 2e-2}
    }
    args = imported.networks["net"]["init_args"]
    assert (args["in_channel"], args["channel_mults"], args["res_blocks"], args["attn_res"]) == (3, [1, 2], 1, [64])
    assert any("'16_128' ignored" in line for line in imported.report)


@pytest.mark.parametrize("case", ["conditional", "unconditional"])
def test_the_weights_load_strictly_into_the_method_which_computes_the_official_output(fixture, case):
    official = fixture[case]
    imported = FORMAT.convert(gen_file(fixture, case), None)
    spec = imported.networks["net"]
    # norm_groups is not in the weights: the fixture's tiny configuration gives it
    net = allowed_class(spec["class_path"])(**(spec["init_args"] | {"norm_groups": official["unet"]["norm_groups"]}))
    method = allowed_class(imported.method)(net=net, **imported.settings)
    method.load_state_dict(imported.state_dict, strict=True)
    gammas = method.train_gammas if case == "conditional" else method.alpha_bars
    assert bool((gammas.float() == official["gen"]["alphas_cumprod"]).all())  # the schedule, to float32 rounding
    with torch.no_grad():
        out = method.net.eval()(official["x"], official["level"][:, 0])  # the method's (B,) levels
    assert float((out - official["out"]).abs().max()) <= 1e-5


@pytest.mark.parametrize("kind", ["linear", "quad", "cosine", "const"])
def test_the_official_buffers_of_each_schedule_kind_are_identified(fixture, kind):
    record = fixture["schedules"][kind]
    official = record["schedule"]
    schedule = identify_schedule(record["buffers"])
    assert (schedule["kind"], schedule["n_steps"]) == (kind, official["n_timestep"])
    if kind != "cosine":  # the cosine schedule has no end points
        assert (schedule["linear_start"], schedule["linear_end"]) == (official["linear_start"], official["linear_end"])
    gammas = NoiseSchedule(**schedule).gammas()
    relative = (record["buffers"]["alphas_cumprod"].double() - gammas).abs() / gammas
    assert float(relative.max()) <= FLOAT32_ROUNDING


def test_a_schedule_the_suite_lacks_is_refused_naming_the_buffer(fixture):
    with pytest.raises(ImportRefused, match="warmup10.*linear: 'betas' differs by up to"):
        identify_schedule(fixture["schedules"]["warmup10"]["buffers"])


def test_a_changed_schedule_buffer_is_refused_by_name(fixture):
    state = gen_file(fixture)
    state["posterior_mean_coef2"] = state["posterior_mean_coef2"] * (1 + 1e-5)
    with pytest.raises(ImportRefused, match="linear: 'posterior_mean_coef2' differs by up to"):
        FORMAT.convert(state, None)


def test_missing_schedule_buffers_are_refused_and_a_file_without_any_takes_the_release_schedule(fixture):
    state = gen_file(fixture)
    del state["posterior_variance"]
    with pytest.raises(ImportRefused, match="schedule buffers missing .*11 of 12.*posterior_variance"):
        FORMAT.convert(state, None)
    bare = {key: value for key, value in gen_file(fixture).items() if key.startswith("denoise_fn.")}
    imported = FORMAT.convert(bare, "64_512")
    assert imported.settings["train_schedule"] == {
        "kind": "linear",
        "n_steps": 2000,
        "linear_start": 1e-6,
        "linear_end": 1e-2,
    }
    assert any("no schedule buffers" in line and "sr_sr3_64_512.json" in line for line in imported.report)


def renamed(state: dict, old: str, new: str) -> dict:
    state = dict(state)
    state[new] = state.pop(old)
    return state


def reshaped(state: dict, key: str) -> dict:
    state = dict(state)
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    return state


def without(state: dict, key: str) -> dict:
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda s: renamed(
                s,
                "denoise_fn.ups.2.res_block.block2.block.3.weight",
                "denoise_fn.ups.2.res_block.block2.block.4.weight",
            ),
            r"does not have: denoise_fn\.ups\.2\.res_block\.block2\.block\.4\.weight",
        ),
        (
            lambda s: without(s, "denoise_fn.final_conv.block.3.bias"),
            r"keys missing .*: denoise_fn\.final_conv\.block\.3\.bias",
        ),
        (
            lambda s: without(s, "denoise_fn.mid.0.attn.qkv.weight"),
            r"keys missing .*denoise_fn\.mid\.0\.attn\.qkv\.weight",
        ),
        (
            lambda s: without(s, "denoise_fn.ups.5.attn.qkv.weight"),
            r"keys missing .*denoise_fn\.ups\.5\.attn\.qkv\.weight",
        ),
        (
            lambda s: reshaped(s, "denoise_fn.ups.4.attn.out.weight"),
            r"shapes .*denoise_fn\.ups\.4\.attn\.out\.weight \(9, 8, 1, 1\) \(expected \(8, 8, 1, 1\)\)",
        ),
        (lambda s: s | {"step": torch.tensor(3)}, r"neither under denoise_fn\. nor schedule buffers: step"),
        (lambda s: s | {"denoise_fn.note": "v2"}, r"entries that are not tensors: denoise_fn\.note"),
        (
            lambda s: without(s, "denoise_fn.noise_level_mlp.1.weight"),
            r"key 'denoise_fn\.noise_level_mlp\.1\.weight' is missing",
        ),
        (
            lambda s: {k: v for k, v in s.items() if not k.startswith("denoise_fn.downs.2.")},
            r"denoise_fn\.downs\.\* skip indices",
        ),
        (
            lambda s: s | {"denoise_fn.noise_level_mlp.1.weight": torch.zeros(16)},
            r"key 'denoise_fn\.noise_level_mlp\.1\.weight' has shape \(16,\), expected 2 dimensions",
        ),
        (
            lambda s: s | {"denoise_fn.downs.0.weight": torch.zeros(4, 9, 3, 3)},
            r"denoise_fn\.downs\.0\.weight: 9 input channels",
        ),
    ],
    ids=[
        "renamed",
        "missing",
        "missing-attention",
        "missing-up-attention",
        "shape",
        "stray",
        "not-a-tensor",
        "no-embedding",
        "rank",
        "index-gap",
        "in-channels",
    ],
)
def test_weights_that_do_not_fit_are_refused_naming_the_keys(fixture, edit, message):
    with pytest.raises(ImportRefused, match=message):
        FORMAT.convert(edit(gen_file(fixture)), None)


def test_the_other_network_of_the_repository_is_refused_with_what_it_is():
    ddpm_network = {"denoise_fn.time_mlp.1.weight": torch.zeros(16, 4), "denoise_fn.downs.0.weight": torch.zeros(4)}
    assert FORMAT.detect(ddpm_network)
    with pytest.raises(ImportRefused, match=r"denoise_fn\.time_mlp\.1\.weight: the repository's DDPM network"):
        FORMAT.convert(ddpm_network, None)


@pytest.mark.parametrize("case", ["conditional", "unconditional"])
def test_the_key_map_names_every_official_key_both_ways(fixture, case):
    net = strip_prefix(fixture[case]["gen"], "denoise_fn.")
    keys = KeyMap(read_layout(net))
    ours = [keys.ours(key) for key in net]
    assert None not in ours and len(set(ours)) == len(net)
    assert [keys.official(key) for key in ours] == list(net)


@pytest.mark.filterwarnings("ignore:Found keys that are in the model state dict", "ignore:The state dict in")
@pytest.mark.parametrize(
    "case,recipe,method", [("conditional", "sr3_16_128_faces", "SR3"), ("unconditional", "deqir_faces64", "DeqIR")]
)
def test_the_import_command_writes_a_checkpoint_of_the_paired_recipe(fixture, tmp_path, case, recipe, method):
    from ir_lightning.commands.import_ import import_checkpoint

    source, output = tmp_path / "I640000_E37_gen.pth", tmp_path / "imported.ckpt"
    torch.save(fixture[case]["gen"], source)
    lines = import_checkpoint(source, output)
    assert any(f"settings from recipe {recipe}" in line for line in lines)
    hparams = torch.load(output, weights_only=True)["hyper_parameters"]
    assert hparams["_class_path"] == f"ir_lightning.methods.{method}" and hparams["net"]["class_path"] == NET_CLASS
    assert hparams["train_schedule"] == FORMAT.convert(fixture[case]["gen"], None).settings["train_schedule"]
