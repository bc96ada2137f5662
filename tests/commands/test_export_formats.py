"""`ir-lightning export --format ckpt|safetensors|folder` (issue 20): for every method, the three exports of one
training checkpoint restore exactly what the trained module does with its EMA weights; a safetensors file or model
folder records the settings and history (metadata as text, `config.json`, a model card with its licence), is read
by every reader of `--ckpt` (detected by content, not by name), and one naming a class outside the suite is refused
without importing it."""

from __future__ import annotations

import copy
import json
import random
import socket
import sys
from pathlib import Path

import lightning
import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_module
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import ir_lightning
from ir_lightning.class_paths import allowed_class
from ir_lightning.commands import export
from ir_lightning.commands import restore as restore_command
from ir_lightning.inference.loading import RestoreError
from ir_lightning.io.weights import WeightsError, read_checkpoint
from ir_lightning.training.run_checks import ConfigurationError, check_checkpoint_fits
from tests.helpers.checkpoints import TINY_UNET_ARGS as TINY_UNET
from tests.helpers.checkpoints import net_spec as net

INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
UNET = "ir_lightning.nets.unet.UNet"
CPEN = "ir_lightning.nets.diffir.CPEN"


METHODS = {
    "sr3": {
        "_class_path": "ir_lightning.methods.SR3",
        "scale": 2,
        "net": net(UNET, in_channels=6, **TINY_UNET),
        "sampling": {"steps": 1, "sampler": "ddim"},
    },
    "rddm": {
        "_class_path": "ir_lightning.methods.RDDM",
        "net": net("ir_lightning.nets.rddm.TwoUNets", **TINY_UNET),
        "sampling": {"steps": 1},
    },
    "diffir_s2": {
        "_class_path": "ir_lightning.methods.DiffIRS2",
        "scale": 1,
        "restorer": net(
            "ir_lightning.nets.diffir.DIRformer",
            dim=8,
            num_blocks=[1, 1, 1, 1],
            num_refinement_blocks=1,
            heads=[1, 1, 1, 1],
            ipr_dim=32,
        ),
        "cpen_s1": net(CPEN, scale=1, with_gt=True, res_blocks=1, features=8),
        "cpen_s2": net(CPEN, scale=1, with_gt=False, res_blocks=1, features=8),
        "denoiser": net("ir_lightning.nets.diffir.IPRDenoiser", ipr_dim=32),
    },
    "da": {
        "_class_path": "ir_lightning.methods.DenoisingAsAdaptation",
        "restorer": net("ir_lightning.nets.restorer.ResidualUNet", width=8, depth=2),
        "diffusion": net(UNET, in_channels=9, **TINY_UNET),
    },
    "deqir": {
        "_class_path": "ir_lightning.methods.DeqIR",
        "net": net(UNET, in_channels=3, **TINY_UNET),
        "operator": "sr2",
        "train_schedule": {"kind": "linear", "n_steps": 100, "linear_start": 1e-4, "linear_end": 0.02},
        "sampling": {"steps": 1, "sampler": "ddim", "clip": False, "solver": {"method": "sequential"}},
    },
}
"""Each method at a tiny size, as LightningCLI records it in a checkpoint (networks as class paths)."""

VALIDATION_CALLBACK = "ModelCheckpoint{'monitor': 'val/psnr', 'mode': 'max'}"


def built(name: str, seed: int):
    torch.manual_seed(seed)
    settings = copy.deepcopy(METHODS[name])
    return instantiate_module(allowed_class(settings["_class_path"]), settings).eval()


def training_checkpoint(name: str, path: Path):
    """A training checkpoint laid out as the CLI writes one (EMA and trained weights, training state, a checkpoint
    callback that monitored val/psnr); returns the module holding its EMA weights."""
    ema, trained = built(name, 0), built(name, 1)
    checkpoint = {
        "state_dict": ema.state_dict(),
        "current_model_state": trained.state_dict(),
        "hyper_parameters": {**METHODS[name], "_instantiator": INSTANTIATOR},
        "hparams_name": "kwargs",
        "pytorch-lightning_version": lightning.__version__,
        "global_step": 12,
        "epoch": 1,
        "optimizer_states": [],
        "lr_schedulers": [],
        "loops": {},
        "training_only": list(type(ema).TRAINING_ONLY),
        "callbacks": {
            VALIDATION_CALLBACK: {
                "monitor": "val/psnr",
                "best_model_score": torch.tensor(21.5),
                "current_score": torch.tensor(20.25),
            }
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return ema


def exports(source: Path, folder: Path) -> dict[str, Path]:
    """The three exports of `source`, written by the command as a user types it."""
    paths = {"ckpt": folder / "m.ckpt", "safetensors": folder / "m.safetensors", "folder": folder / "model"}
    for fmt, path in paths.items():
        assert export.main([str(source), str(path), "--format", fmt]) == 0
    return paths


@pytest.mark.parametrize("name", list(METHODS))
def test_every_format_of_every_method_restores_exactly_what_the_trained_module_does(name, tmp_path):
    ema = training_checkpoint(name, tmp_path / "last.ckpt")
    lq = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = ema.restore(lq)
    for fmt, path in exports(tmp_path / "last.ckpt", tmp_path).items():
        model = ir_lightning.load(path, device="cpu", tile=0)
        recorded = "not recorded" if fmt == "ckpt" else "ema"  # a ckpt export stays today's file: no record
        assert model.info()["format"] == fmt and model.info()["weights"] == recorded, fmt
        assert torch.equal(model.restore(lq), expected), f"{name}: the {fmt} export restores otherwise"
    left_out = read_checkpoint(tmp_path / "m.safetensors").get("exported_without", [])
    assert left_out == list(type(ema).TRAINING_ONLY)  # DA's diffusion network, DiffIR's teacher: not exported


def test_an_export_lists_what_an_import_left_out_before_what_training_only_drops(tmp_path):
    """A DA model imported from official weights (whose record lists what the import left out) and trained on: its
    export lists both, the import's first, in every format that keeps the record."""
    training_checkpoint("da", tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    checkpoint["exported_without"] = ["official optimizer state"]
    torch.save(checkpoint, tmp_path / "last.ckpt")
    expected = ["official optimizer state", *checkpoint["training_only"]]
    assert len(expected) == 2
    assert export.exported_checkpoint(tmp_path / "last.ckpt")["exported_without"] == expected
    assert read_checkpoint(exports(tmp_path / "last.ckpt", tmp_path)["safetensors"])["exported_without"] == expected


def test_the_safetensors_metadata_records_the_settings_and_history_as_text(tmp_path):
    training_checkpoint("deqir", tmp_path / "run/checkpoints/last.ckpt")
    data = {"class_path": "datamodules.ShardDataModule", "init_args": {"train_shards": "/scratch/me/faces-{0..9}.tar"}}
    config = {"run_name": "deqir_tiny", "seed_everything": 7, "trainer": {"max_steps": 12}, "data": data}
    (tmp_path / "run/config.yaml").write_text(yaml.safe_dump(config))  # as `ir-lightning fit` saves it
    target = tmp_path / "m.safetensors"
    assert export.main([str(tmp_path / "run/checkpoints/last.ckpt"), str(target), "--format", "safetensors"]) == 0
    with safe_open(target, "pt") as file:
        metadata = file.metadata()
    assert metadata["format"] == "pt" and metadata["class_path"] == "ir_lightning.methods.DeqIR"
    assert metadata["ir_lightning_version"] == ir_lightning.__version__ and metadata["weights"] == "ema"
    assert json.loads(metadata["global_step"]) == 12 and "exported_without" not in metadata  # DeqIR: all restores
    hparams = json.loads(metadata["hyper_parameters"])
    assert hparams["operator"] == "sr2" and hparams["net"]["class_path"] == UNET
    assert json.loads(metadata["validation"])["scores"] == {"val/psnr": {"best": 21.5, "last": 20.25}}
    training = json.loads(metadata["training"])
    assert training["run_name"] == "deqir_tiny" and training["seed"] == 7 and training["max_steps"] == 12
    assert training["data"] == {"class": "ShardDataModule", "train_shards": "faces-{0..9}.tar"}  # no local folders
    assert metadata["license"] == "unknown"
    assert (
        export.main([str(tmp_path / "run/checkpoints/last.ckpt"), str(tmp_path / "model"), "--format", "folder"]) == 0
    )
    card = (tmp_path / "model/README.md").read_text()
    assert "- recipe and overlays: run/config.yaml (the run's resolved recipe, overlays and flags)" in card
    assert "- run: deqir_tiny, seed 7, max_steps 12" in card and "train_shards: faces-{0..9}.tar" in card
    assert "Y channel" not in card and "RGB, 0 pixels cropped per side" in card  # DeqIR's protocol: RGB, no crop


def test_a_model_folder_has_config_weights_and_a_model_card_and_loads_from_pretrained(tmp_path, monkeypatch):
    ema = training_checkpoint("sr3", tmp_path / "last.ckpt")
    folder = tmp_path / "sr3_tiny"
    assert export.main([str(tmp_path / "last.ckpt"), str(folder), "--format", "folder", "--license", "cc-by-4.0"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["class_path"] == "ir_lightning.methods.SR3" and config["hyper_parameters"]["scale"] == 2
    assert config["license"] == "cc-by-4.0" and set(config["versions"]) == {
        "ir_lightning",
        "torch",
        "lightning",
        "safetensors",
    }
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-4.0\n")
    assert '"Image Super-Resolution via Iterative Refinement", Saharia et al., IEEE TPAMI 2023' in card
    assert "- steps: 12 (epoch 1)" in card and "- weights: EMA" in card and "| val/psnr | 21.5 | 20.25 |" in card
    assert "recipe and overlays: not recorded" in card and "Y channel (BT.601), 2 pixels cropped per side" in card
    assert 'ir_lightning.load("sr3_tiny")' in card and "ir-lightning restore --ckpt sr3_tiny" in card

    def no_network(*args, **kwargs):
        raise AssertionError("from_pretrained touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = ir_lightning.RestorationModel.from_pretrained(folder, device="cpu", tile=0)
    lq = torch.rand(1, 3, 8, 8)
    assert torch.equal(model.restore(lq), ema.restore(lq))
    assert model.info()["license"] == "cc-by-4.0" and model.info()["validation"]["scores"]["val/psnr"]["best"] == 21.5
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        ir_lightning.RestorationModel.from_pretrained("someone/sr3-x4")  # a hub name: never looked up
    for remote in ({"token": "hf_x"}, {"revision": "main"}, {"local_files_only": False}, {"force_download": True}):
        with pytest.raises(ValueError, match="local model folders only"):
            ir_lightning.RestorationModel.from_pretrained(folder, **remote)


def test_a_folder_s_config_json_sets_how_it_restores(tmp_path):
    training_checkpoint("deqir", tmp_path / "last.ckpt")
    folder = tmp_path / "model"
    assert export.main([str(tmp_path / "last.ckpt"), str(folder), "--format", "folder"]) == 0
    config = json.loads((folder / "config.json").read_text())
    config["hyper_parameters"]["operator"] = "sr4"
    (folder / "config.json").write_text(json.dumps(config))
    model = ir_lightning.load(folder, device="cpu", tile=0)
    assert model.info()["operator"] == "sr4" and model.restore(torch.rand(1, 3, 4, 4)).shape == (1, 3, 16, 16)


@pytest.fixture
def probe_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A module on sys.path whose import writes a marker file: importing it is what must never happen."""
    marker = tmp_path / "imported.marker"
    name = f"hostile_probe_{random.Random().randrange(10**9)}"
    (tmp_path / f"{name}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\nclass Net:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


def hostile_safetensors(path: Path, class_path: str, net_class_path: str = UNET) -> Path:
    hparams = {"_class_path": class_path, "net": {"class_path": net_class_path, "init_args": {}}}
    metadata = {"format": "pt", "class_path": class_path, "hyper_parameters": json.dumps(hparams)}
    save_file({"net.weight": torch.zeros(2)}, path, metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("class_path", "net_class_path", "named"),
    [
        ("os.system", UNET, "metadata.class_path names 'os.system'"),
        ("builtins.eval", UNET, "metadata.class_path names 'builtins.eval'"),
        ("ir_lightning.methods.DeqIR", "{probe}.Net", "hyper_parameters.net.class_path names '{probe}.Net'"),
    ],
)
def test_a_safetensors_file_naming_a_class_outside_the_suite_is_refused_without_importing_it(
    tmp_path, probe_module, capsys, class_path, net_class_path, named
):
    probe, marker = probe_module
    evil = hostile_safetensors(tmp_path / "evil.ckpt", class_path, net_class_path.format(probe=probe))  # any name
    message = named.format(probe=probe)
    with pytest.raises(WeightsError, match=f"{evil}: {message}"):
        read_checkpoint(evil)
    with pytest.raises(RestoreError, match=message):
        ir_lightning.load(evil, device="cpu")
    with pytest.raises(ConfigurationError, match=message):
        check_checkpoint_fits(evil, {"class_path": "ir_lightning.methods.DeqIR"}, resume=False, flag="--init_weights")
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in/a.png")
    status = restore_command.main(
        ["--ckpt", str(evil), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")]
    )
    assert status == 2 and message in capsys.readouterr().err
    assert not marker.exists() and probe not in sys.modules


def test_every_reader_of_ckpt_takes_safetensors_by_content_and_refuses_weights_without_settings(tmp_path):
    training_checkpoint("deqir", tmp_path / "last.ckpt")
    export.main([str(tmp_path / "last.ckpt"), str(tmp_path / "m.safetensors"), "--format", "safetensors"])
    renamed = tmp_path / "weights.ckpt"  # a safetensors file under a torch file's name, and the other way round
    renamed.write_bytes((tmp_path / "m.safetensors").read_bytes())
    export.main([str(tmp_path / "last.ckpt"), str(tmp_path / "torch.safetensors")])
    lq = torch.rand(1, 3, 6, 6)
    expected = ir_lightning.load(tmp_path / "last.ckpt", device="cpu").restore(lq)
    for path in (renamed, tmp_path / "torch.safetensors"):
        assert torch.equal(ir_lightning.load(path, device="cpu").restore(lq), expected), path.name
    model_config = {"class_path": "ir_lightning.methods.DeqIR", "init_args": {}}
    fits = check_checkpoint_fits(renamed, model_config, resume=False, flag="--init_weights")  # fit --init_weights
    assert set(fits["state_dict"]) == set(read_checkpoint(tmp_path / "last.ckpt")["state_dict"])
    with pytest.raises(ConfigurationError, match="holds weights only .* cannot resume"):
        check_checkpoint_fits(renamed, model_config, resume=True)
    with pytest.raises(RestoreError, match="--no-ema: .* holds only one set of weights"):
        ir_lightning.load(renamed, device="cpu", ema=False)
    save_file({"w": torch.zeros(1)}, tmp_path / "bare.safetensors")  # someone else's weights: no settings
    with pytest.raises(RestoreError, match="bare.safetensors: refused, .*no hyper_parameters"):
        ir_lightning.load(tmp_path / "bare.safetensors", device="cpu")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((tmp_path / "m.safetensors").read_bytes()[:-100])
    with pytest.raises(RestoreError, match=r"truncated\.safetensors: refused, not a checkpoint of this suite"):
        ir_lightning.load(truncated, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RestoreError, match="not a model folder"):
        ir_lightning.load(tmp_path / "empty", device="cpu")


def test_export_reads_any_layout_keeps_half_precision_and_ckpt_stays_today_s_file(tmp_path):
    training_checkpoint("deqir", tmp_path / "last.ckpt")
    folder = tmp_path / "model"
    assert export.main([str(tmp_path / "last.ckpt"), str(folder), "--format", "folder", "--half"]) == 0
    again = tmp_path / "again.safetensors"
    assert export.main([str(folder), str(again), "--format", "safetensors"]) == 0  # a folder is a source too
    checkpoint = read_checkpoint(again)
    assert {t.dtype for t in checkpoint["state_dict"].values()} == {torch.float16}
    assert checkpoint["validation"]["scores"]["val/psnr"]["best"] == 21.5  # the record travels with the weights
    assert export.main([str(tmp_path / "last.ckpt"), str(tmp_path / "m.ckpt")]) == 0  # --format ckpt, the default
    slim = torch.load(tmp_path / "m.ckpt", weights_only=True)
    today = ["epoch", "global_step", "hparams_name", "hyper_parameters", "pytorch-lightning_version", "state_dict"]
    assert sorted(slim) == today  # what the export wrote before the formats came: no record keys added


def test_export_writes_a_deployment_graph_of_a_single_pass_restorer_and_refuses_a_sampler(tmp_path, capsys):
    """`--format torchscript` through the command: the graph restores what the checkpoint's method restores, at a
    size other than the traced one; SR3's sampling loop is refused naming the network to export instead."""
    source = tmp_path / "run/checkpoints/last.ckpt"
    module = training_checkpoint("da", source)
    graph = tmp_path / "da.pt"
    assert export.main([str(source), str(graph), "--format", "torchscript", "--example-size", "16"]) == 0
    assert "largest difference from restore: 16x16" in capsys.readouterr().out
    lq = torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module.restore(lq)
        got = torch.jit.load(str(graph))(lq)
    assert float((got - expected).abs().max()) <= 1e-5
    sr3 = tmp_path / "sr3/checkpoints/last.ckpt"
    training_checkpoint("sr3", sr3)
    assert export.main([str(sr3), str(tmp_path / "sr3.onnx"), "--format", "onnx"]) == 2
    assert "export the network alone" in capsys.readouterr().err and not (tmp_path / "sr3.onnx").exists()


def test_a_model_folder_whose_settings_name_a_config_file_is_refused_before_it_is_read(
    tmp_path, probe_module, monkeypatch
):
    """jsonargparse reads a string given for a class-typed setting (`net`) as a config file's path, which could
    name any class (the folder's own module, imported from the current folder): such a string is refused, while a
    plain setting (`operator`) that happens to name a folder here is a value like any other."""
    probe, marker = probe_module
    training_checkpoint("deqir", tmp_path / "last.ckpt")
    folder = tmp_path / "model"
    assert export.main([str(tmp_path / "last.ckpt"), str(folder), "--format", "folder"]) == 0
    (folder / "net.yaml").write_text(f"class_path: {probe}.Net\n")
    config = json.loads((folder / "config.json").read_text())
    config["hyper_parameters"]["net"] = "model/net.yaml"
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RestoreError, match=r"hyper_parameters.net names the file 'model/net.yaml', which the setting"):
        ir_lightning.load("model", device="cpu")
    assert not marker.exists() and probe not in sys.modules
    config["hyper_parameters"]["net"] = METHODS["deqir"]["net"]
    config["hyper_parameters"]["operator"] = "sr2"
    (folder / "config.json").write_text(json.dumps(config))
    (tmp_path / "sr2").mkdir()  # a folder named like the operator: a str setting is never read as a file
    assert ir_lightning.load("model", device="cpu").module.operator_name == "sr2"
