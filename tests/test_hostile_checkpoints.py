"""Hostile checkpoints (issue 15, points 2 and 3): a file from the internet can neither make the suite import a
module nor end in a traceback. Every class path a checkpoint names is checked against the allow-list
before anything is imported, in every command that reads one (`restore`, `fit/validate --ckpt_path`,
`load_from_checkpoint`, the Trainer's own loads); and a fuzz of a few hundred byte strings (random bytes,
truncations, bit flips, text, archives, pickles of the wrong shape) gets one clear refusal each."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ir_lightning.class_paths import UntrustedClassPathError, allowed_class, check_class_paths, named_imports
from ir_lightning.commands.restore import RestoreError, load_method, parser
from ir_lightning.io.weights import WeightsError as UnsafeCheckpointError
from ir_lightning.io.weights import read_checkpoint
from ir_lightning.methods.deqir import DeqIR
from ir_lightning.training.checkpoint_io import AtomicCheckpointIO
from ir_lightning.training.run_checks import ConfigurationError, check_checkpoint_fits
from tests.conftest import REPO
from tests.helpers.checkpoints import save_checkpoint, small_deqir

DEQIR = {"class_path": "ir_lightning.methods.DeqIR", "init_args": {}}
TRAINING_STATE = {"optimizer_states": [], "lr_schedulers": [], "loops": {}, "global_step": 3, "epoch": 0}
FUZZ_SEED = 15


def restore_args(ckpt: Path):
    return parser().parse_args(["--ckpt", str(ckpt), "--input", "in", "--output", "out"])


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A small DeqIR training checkpoint laid out as Lightning writes one from the CLI."""
    path = save_checkpoint(small_deqir(), tmp_path_factory.mktemp("good") / "good.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    torch.save(checkpoint | TRAINING_STATE, path)
    return path


@pytest.fixture
def probe_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A module on sys.path whose import writes a marker file: importing it is what must never happen."""
    marker = tmp_path / "imported.marker"
    name = f"hostile_probe_{random.Random().randrange(10**9)}"
    (tmp_path / f"{name}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\nclass Net:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


def tampered(good: Path, folder: Path, edit) -> Path:
    checkpoint = torch.load(good, weights_only=True)
    edit(checkpoint["hyper_parameters"])
    path = folder / "tampered.ckpt"
    torch.save(checkpoint, path)
    return path


# --- the allow-list ---------------------------------------------------------------------------------


def test_the_allow_list_holds_the_suites_classes_and_torch_optimizers_only():
    assert allowed_class("ir_lightning.methods.SR3") is allowed_class("ir_lightning.methods.sr3.SR3") is not None
    assert allowed_class("ir_lightning.nets.unet.UNet") is not None
    assert allowed_class("torch.optim.AdamW") is torch.optim.AdamW
    assert allowed_class("torch.optim.lr_scheduler.CosineAnnealingLR") is torch.optim.lr_scheduler.CosineAnnealingLR
    for refused in (
        "os.system",
        "subprocess.Popen",
        "builtins.eval",
        "this.Nope",
        "ir_lightning.methods.base.Path",
        "ir_lightning.methods.base.torch",
        "torch.nn.Module",
        "pathlib.Path",
    ):
        assert allowed_class(refused) is None, refused


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        ({"net": {"class_path": "this.Nope", "init_args": {}}}, "hyper_parameters.net.class_path"),
        ({"_class_path": "os.system"}, "hyper_parameters._class_path"),
        ({"_instantiator": "subprocess.run"}, "hyper_parameters._instantiator"),
        ({"optimizer": "builtins.exec"}, "hyper_parameters.optimizer"),  # a callable setting given as a string
        (
            {"net": {"class_path": "ir_lightning.nets.unet.UNet", "init_args": {"act": {"class_path": "os.system"}}}},
            "hyper_parameters.net.init_args.act.class_path",
        ),
        (
            {"steps": [{"class_path": "ir_lightning.degradations.JPEG"}, {"class_path": "pty.spawn"}]},
            "hyper_parameters.steps[1].class_path",
        ),
        ({"net": "{class_path: this.Nope}"}, "hyper_parameters.net.class_path"),  # a config written as text
        ({"net": "class_path: this.Nope\ninit_args: {}"}, "hyper_parameters.net.class_path"),  # block YAML
        ({"steps": "[{class_path: pty.spawn}]"}, "hyper_parameters.steps[0].class_path"),  # a list as text
        ({"net": {"class_path": 7}}, "hyper_parameters.net.class_path"),  # not even a string
        ({"net": {"class_path": "Popen"}}, "hyper_parameters.net.class_path"),  # a bare name outside the suite
    ],
)
def test_names_outside_the_allow_list_are_refused_with_the_file_and_setting(settings, where):
    with pytest.raises(UntrustedClassPathError) as refusal:
        check_class_paths(settings, "x.ckpt")
    assert str(refusal.value).startswith(f"x.ckpt: {where} names ")


def test_plain_strings_file_names_and_the_suites_bare_names_pass():
    check_class_paths(
        {
            "init_weights": "runs/a/last.ckpt",
            "loss": "l1",
            "sampler": "ddim",
            "lr": "1.0e-4",
            "name": "weights.ckpt",
            "net": {"class_path": "UNet"},
            "_class_path": "ir_lightning.methods.SR3",
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
        },
        "x.ckpt",
    )
    assert list(named_imports("test.ckpt")) == [("", "test.ckpt", None)]  # documented: the stdlib's `test` package


def _model_sections() -> list[tuple[str, dict]]:
    sections = []
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        if recipe.name == "base.yaml":  # the shared settings read before every recipe: no model
            continue
        config = yaml.safe_load(recipe.read_text())
        sections.append((recipe.name, config["model"]))
    return sections


@pytest.mark.parametrize(("name", "model"), _model_sections())
def test_every_recipes_model_passes_the_check(name, model):
    """No false refusal: what the suite's own recipes write into a checkpoint is allowed."""
    check_class_paths({"_class_path": model["class_path"], **model.get("init_args", {})}, name)


def test_the_shipped_checkpoints_pass():
    from ir_lightning.shipped import SHIPPED

    for model in SHIPPED:
        read_checkpoint(model.path)
    read_checkpoint(REPO / "tests/fixtures/shipped_2026_11/sr3_x4_demo.ckpt")  # the first shipped SR3


# --- nothing named is imported, in every reader ------------------------------------------------------


def _names_in_text(checkpoint: dict, name: str) -> None:
    checkpoint["hyper_parameters"]["net"] = f"{{class_path: {name}.Net}}"  # jsonargparse parses it as YAML


def _names_in_past_key(checkpoint: dict, name: str) -> None:
    del checkpoint["hyper_parameters"]["net"]  # Lightning merges its older `hparams` key into the settings
    checkpoint["hparams"] = {"net": {"class_path": f"{name}.Net", "init_args": {}}}


def _names_a_class_path(checkpoint: dict, name: str) -> None:
    checkpoint["hyper_parameters"]["net"]["class_path"] = f"{name}.Net"


@pytest.mark.parametrize("plant", [_names_a_class_path, _names_in_text, _names_in_past_key])
def test_no_reader_imports_what_a_checkpoint_names(good, tmp_path, probe_module, plant):
    name, marker = probe_module
    checkpoint = torch.load(good, weights_only=True)
    plant(checkpoint, name)
    evil = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, evil)
    readers = {
        "restore": (lambda: load_method(evil, restore_args(evil), torch.device("cpu")), RestoreError),
        "fit --ckpt_path": (lambda: check_checkpoint_fits(evil, DEQIR, resume=True), ConfigurationError),
        "load_from_checkpoint": (lambda: DeqIR.load_from_checkpoint(evil), UnsafeCheckpointError),
        "Trainer": (lambda: AtomicCheckpointIO().load_checkpoint(evil), UnsafeCheckpointError),
    }
    for reader, (read, error) in readers.items():
        with pytest.raises(error, match=rf"{evil}.*(hyper_parameters|hparams)\.net\.class_path names '{name}\.Net'"):
            read()
        assert not marker.exists(), f"{reader} imported the module the checkpoint names"
    assert name not in sys.modules


@pytest.mark.parametrize("net", ["{{class_path: {name}.Net}}", {"class_path": "{name}.Net"}])
def test_without_the_check_the_probe_would_be_imported(tmp_path, probe_module, net):
    """The probe is real: jsonargparse imports what a checkpoint names when nothing stops it, as a class path
    and as a config written in a string."""
    from lightning.pytorch.cli import instantiate_module

    name, marker = probe_module
    net = net.format(name=name) if isinstance(net, str) else {"class_path": net["class_path"].format(name=name)}
    with pytest.raises(Exception):  # noqa: B017 - the probe's class is no method; importing it is the point
        instantiate_module(DeqIR, {"_class_path": "ir_lightning.methods.DeqIR", "net": net})
    assert marker.exists()


@pytest.mark.slow
def test_commands_refuse_a_checkpoint_naming_a_module_without_importing_it(good, tmp_path, probe_module, sr_shards):
    """`restore`, `fit --ckpt_path` and `validate --ckpt_path`, as a user types them: exit 2, one line naming
    the file and the class path, and the module never imported (its import would write the marker)."""
    name, marker = probe_module
    evil = tampered(good, tmp_path, lambda h: h["net"].update(class_path=f"{name}.Net"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(inputs / "a.png")
    deqir = [
        "-c",
        str(REPO / "recipes/deqir_faces64.yaml"),
        "-c",
        str(REPO / "recipes/demo/deqir_cpu.yaml"),
        "-c",
        str(REPO / "tests/configs/deqir_tiny.yaml"),
        f"--data.init_args.train_shards={sr_shards['train']}",
        f"--data.init_args.val_shards={sr_shards['val']}",
        "--run_dir",
        str(tmp_path / "run"),
    ]
    commands = {
        "restore": ["restore", "--ckpt", str(evil), "--input", str(inputs), "--output", str(tmp_path / "out")],
        "fit": ["fit", *deqir, "--ckpt_path", str(evil)],
        "validate": ["validate", *deqir, "--ckpt_path", str(evil)],
    }
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"}
    for command, words in commands.items():
        result = subprocess.run(
            [sys.executable, "-m", "ir_lightning", *words],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, (command, result.stderr[-2000:])
        assert len(errors) == 1 and str(evil) in errors[0] and f"'{name}.Net'" in errors[0], (
            command,
            result.stderr[-2000:],
        )
        assert "Traceback" not in result.stderr, command
        assert not marker.exists(), f"{command} imported the module the checkpoint names"
    assert not (tmp_path / "out").exists()


# --- one clear refusal for every bad file -------------------------------------------------------------


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class RunsCode:
    """Unpickled without weights_only, this would run `true` in a shell."""

    def __reduce__(self):
        return (os.system, ("true",))


def fuzz_files(good: Path, folder: Path) -> list[Path]:
    """At least 300 files that are not usable checkpoints, or are bit-flipped copies of one, reproducibly."""
    rng = random.Random(FUZZ_SEED)
    data = good.read_bytes()
    png = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, format="PNG")
    weights = torch.load(good, weights_only=True)["state_dict"]
    fixed = {
        "empty": b"",
        "text": b"hello, I am a checkpoint\n",
        "yaml": b"model:\n  class_path: ir_lightning.methods.SR3\n",
        "json": json.dumps({"state_dict": {}}).encode(),
        "png": png.getvalue(),
        "shard": _tar_bytes({"0001.gt.png": png.getvalue()}),
        "legacy_tar": _tar_bytes(
            {"storages": b"\x80\x02]q\x00.", "tensors": b"\x80\x02]q\x00.", "pickle": b"\x80\x02}q\x00."}
        ),
        "zip_other_layout": _zip_bytes({"hello.txt": b"hi", "data/0": b"\x00" * 8}),
        "zip_empty": _zip_bytes({}),
        "gzip": b"\x1f\x8b\x08\x00" + bytes(rng.randrange(256) for _ in range(64)),
        "pickle_int": pickle.dumps(3),
        "pickle_list": pickle.dumps([1, 2, 3]),
        "pickle_runs_code": pickle.dumps(RunsCode(), protocol=2),
        "saved_tensor": _saved(torch.ones(3)),
        "saved_list": _saved([torch.ones(2)]),
        "no_state_dict": _saved({"hyper_parameters": {}}),
        "state_dict_not_tensors": _saved({"state_dict": {"w": [1.0]}, "hyper_parameters": {}}),
        "state_dict_int_keys": _saved({"state_dict": {1: torch.ones(1)}, "hyper_parameters": {}}),
        "hparams_list": _saved({"state_dict": weights, "hyper_parameters": [1, 2]}),
        "hparams_no_class": _saved({"state_dict": weights, "hyper_parameters": {"scale": 2}}),
        "hparams_bad_class": _saved({"state_dict": weights, "hyper_parameters": {"_class_path": "os.system"}}),
        "weights_only_export": _saved(
            {"state_dict": weights, "hyper_parameters": torch.load(good, weights_only=True)["hyper_parameters"]}
        ),
        "malformed_state": _saved(
            {
                "state_dict": weights,
                **TRAINING_STATE,
                "global_step": "3",
                "hyper_parameters": torch.load(good, weights_only=True)["hyper_parameters"],
            }
        ),
        "other_method": _saved(
            {
                "state_dict": weights,
                **TRAINING_STATE,
                "hyper_parameters": {"_class_path": "ir_lightning.methods.SR3", "scale": 4},
            }
        ),
    }
    blobs = dict(fixed)
    for i in range(80):
        blobs[f"random_{i}"] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 64, 513, 4096])))
    for i in range(80):
        blobs[f"truncated_{i}"] = data[: rng.randrange(1, len(data))]
    for i in range(80):  # half anywhere (mostly inside tensors: such a file still loads), half in the zip's
        flipped = bytearray(data)  # structure at either end (headers, the pickle, the central directory)
        for _ in range(rng.choice([1, 4, 32])):
            position = (
                rng.randrange(len(flipped))
                if i < 40
                else rng.choice([rng.randrange(1024), len(flipped) - 1 - rng.randrange(1024)])
            )
            flipped[position] ^= 1 << rng.randrange(8)
        blobs[f"bitflip_{i}"] = bytes(flipped)
    for i in range(40):
        cut = rng.randrange(len(data) // 2, len(data))
        blobs[f"overwritten_tail_{i}"] = data[:cut] + bytes(rng.randrange(256) for _ in range(len(data) - cut))
    paths = []
    for name, blob in blobs.items():
        path = folder / f"{name}.ckpt"
        path.write_bytes(blob)
        paths.append(path)
    return paths


def _one_clear_line(message: str, path: Path) -> None:
    assert "\n" not in message and str(path) in message, message
    assert "weights_only=False" not in message and "Traceback" not in message, message


def test_fuzz_every_bad_file_gets_one_clear_refusal_in_restore_fit_and_the_trainer(good, tmp_path):
    """Over 300 generated files through the code paths of `restore`, of `fit --ckpt_path` (and `--ckpt_path
    auto`'s reader) and of the Trainer's checkpoint IO: each is refused with the one error class of that
    path, in one line naming the file, never with torch's advice to load unsafely; a bit-flipped copy that
    still loads as a checkpoint may restore, but nothing else escapes."""
    files = fuzz_files(good, tmp_path)
    assert len(files) >= 300
    outcomes = {"refused": 0, "loaded": 0}
    for path in files:
        may_load = path.name.startswith(("bitflip_", "overwritten_tail_"))  # a flip inside a tensor still loads
        for name, read, error_class in (
            ("restore", lambda: load_method(path, restore_args(path), torch.device("cpu")), RestoreError),  # noqa: B023 (called within this iteration)
            ("fit --ckpt_path", lambda: check_checkpoint_fits(path, DEQIR, resume=True), ConfigurationError),  # noqa: B023 (called within this iteration)
            ("Trainer", lambda: AtomicCheckpointIO().load_checkpoint(path), UnsafeCheckpointError),  # noqa: B023 (called within this iteration)
        ):
            try:
                read()
            except error_class as error:
                _one_clear_line(str(error), path)
                outcomes["refused"] += 1
                continue
            assert may_load or name == "Trainer" and isinstance(read(), dict), f"{name} accepted {path.name}"
            outcomes["loaded"] += 1
    assert outcomes["refused"] >= 2 * 250, outcomes
    for name, reason in (
        ("empty", "the file is empty"),
        ("text", "it is a text file"),
        ("shard", "it is a tar archive"),
        ("png", "it is a PNG image"),
        ("zip_other_layout", "not in a subdirectory"),
        ("other_method", "is a checkpoint of SR3, but the recipe's model is DeqIR"),
        ("weights_only_export", "holds weights only"),
        ("malformed_state", "training state .* is malformed"),
        ("pickle_runs_code", "posix.system"),
    ):
        with pytest.raises(ConfigurationError, match=reason):
            check_checkpoint_fits(tmp_path / f"{name}.ckpt", DEQIR, resume=True)


def test_a_folder_or_unreadable_file_is_refused_and_a_missing_one_is_not_found(tmp_path):
    (tmp_path / "dir.ckpt").mkdir()
    with pytest.raises(UnsafeCheckpointError, match=r"dir\.ckpt: cannot be read"):
        read_checkpoint(tmp_path / "dir.ckpt")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.ckpt")
