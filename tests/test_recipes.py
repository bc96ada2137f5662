"""Every recipe in recipes/ (found by glob: a new recipe is tested without a list to edit) parses and validates
with the suite's CLI, given by its installed name, and builds: its method, its data module and its trainer, with
the suite's callbacks and logger from recipes/base.yaml. Every CPU overlay does the same on top of the recipe its
first line names. Networks are built without their weight initialisation (`skip_init`), so a paper-size network
costs its allocation only; what is checked is that every class path and argument constructs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from torch.overrides import TorchFunctionMode

from ir_lightning import cli, packaged
from ir_lightning.errors import ConfigurationError
from ir_lightning.losses import vgg19_features_stack
from ir_lightning.training.callbacks import EMA, ImageGridLogger, Throughput, WandbSummaries

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
BASE = packaged.BASE_RECIPE.name  # the shared settings, read before every recipe: not a recipe itself
BASES = sorted(p.stem for p in RECIPES.glob("*.yaml") if p.name != BASE)
OVERLAYS = sorted(p.stem for p in (RECIPES / "demo").glob("*.yaml"))
MODELS = sorted(p.stem for p in (RECIPES / "models").glob("*.yaml"))
SUITE = (EMA, ModelCheckpoint, LearningRateMonitor, ImageGridLogger, Throughput, WandbSummaries)


def print_config(capsys, *configs: str, flags: tuple[str, ...] = ()) -> dict:
    """The config `fit -c ... --print_config` prints (exit 0), as a dict."""
    arguments = [word for config in configs for word in ("-c", config)]
    with pytest.raises(SystemExit) as done:
        cli.main(["fit", *arguments, *flags, "--print_config"])
    assert done.value.code == 0, capsys.readouterr().err[-2000:]
    return yaml.safe_load(capsys.readouterr().out)


def recipe_of(overlay: str) -> str:
    first_line = (RECIPES / "demo" / f"{overlay}.yaml").read_text().splitlines()[0]
    base = re.fullmatch(r"# CPU overlay for recipes/(\w+)\.yaml: .*", first_line)
    assert base is not None, f"demo/{overlay}.yaml: the first line must name its recipe, got {first_line!r}"
    assert base.group(1) in BASES
    return base.group(1)


def _untouched(tensor, *args, **kwargs):
    return tensor


class skip_init(TorchFunctionMode):
    """Within it, `torch.nn.init.*` return their tensor untouched: modules allocate their weights but skip
    initialising them (most of the time a paper-size network takes to build). The mode catches the initialisers
    torch dispatches through `__torch_function__`; the others (`orthogonal_`: a QR decomposition per layer, 34 of
    the 35 s building the paper-size SR3 of sr3_64_512 took) are replaced in `torch.nn.init` for the while. Denormal floats
    in the memory left as it was are flushed to zero, or a constructor's own arithmetic on them (spectral norm's
    power iteration in a GAN discriminator) crawls."""

    def __enter__(self):
        self.flushed = torch.set_flush_denormal(True)
        self.replaced = {
            name: getattr(torch.nn.init, name)
            for name in dir(torch.nn.init)
            if name.endswith("_") and not name.startswith("_") and callable(getattr(torch.nn.init, name))
        }
        for name in self.replaced:
            setattr(torch.nn.init, name, _untouched)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, function in self.replaced.items():
            setattr(torch.nn.init, name, function)
        if self.flushed:
            torch.set_flush_denormal(False)
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else next(iter(kwargs.values()))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory) -> str:
    """A VGG19 features file with torchvision's layout (uninitialised values) for recipes with a perceptual loss,
    which name a local copy of torchvision's weights."""
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    with skip_init():
        torch.save(vgg19_features_stack().state_dict(), path)
    return str(path)


def build(configs: list[str], printed: dict, vgg19_file: str, monkeypatch) -> cli.IRLightningCLI:
    """The recipe's classes, built by the suite's CLI (without running a subcommand)."""
    words = [word for config in configs for word in ("-c", config)]
    perceptual = (printed["model"]["init_args"].get("perceptual") or {}).get("init_args", {})
    if "weights" in perceptual:  # a local file the recipe asks the user for
        words.append(f"--model.init_args.perceptual.init_args.weights={vgg19_file}")
    monkeypatch.setattr(sys, "argv", ["ir-lightning"])  # LightningCLI reads sys.argv beside `args`
    with skip_init():
        return cli.IRLightningCLI(args=packaged.resolve_configs(words), run=False)


def check_built(built: cli.IRLightningCLI, printed: dict) -> None:
    assert built.model.__class__.__name__ == printed["model"]["class_path"].rsplit(".", 1)[-1]
    assert built.datamodule.__class__.__name__ == printed["data"]["class_path"].rsplit(".", 1)[-1]
    run_dir = Path("runs") / printed["run_name"]
    assert Path(built.trainer.default_root_dir).resolve() == run_dir.resolve()
    (logger,) = built.trainer.loggers
    assert isinstance(logger, WandbLogger) and Path(logger.save_dir).resolve() == run_dir.resolve()
    assert built.config.trainer.logger[0].init_args.name == printed["run_name"]  # the W&B run's (logger.name: project)
    assert Path(built.trainer.checkpoint_callback.dirpath) == (run_dir / "checkpoints").resolve()
    for kind in SUITE:
        assert sum(type(c) is kind for c in built.trainer.callbacks) == 1, kind.__name__


@pytest.mark.parametrize("name", BASES)
def test_every_recipe_parses_by_its_installed_name_and_builds(name, capsys, tmp_path, monkeypatch, vgg19_file):
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the name must reach the installed recipe
    written = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    printed = print_config(capsys, name)
    assert printed["model"]["class_path"] == written["model"]["class_path"]
    assert printed["data"]["class_path"] == written["data"]["class_path"]
    assert printed["run_name"] == name  # its W&B run and runs/<name>: a recipe's runs never mix with another's
    check_built(build([name], printed, vgg19_file, monkeypatch), printed)


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_cpu_overlay_parses_on_the_recipe_it_names_and_builds(name, capsys, tmp_path, monkeypatch, vgg19_file):
    monkeypatch.chdir(tmp_path)
    base = recipe_of(name)
    printed = print_config(capsys, base, f"demo/{name}")
    overlay = yaml.safe_load((RECIPES / "demo" / f"{name}.yaml").read_text())
    scalars = {key: value for key, value in overlay.get("trainer", {}).items() if isinstance(value, (int, float, str))}
    assert scalars and all(printed["trainer"][key] == value for key, value in scalars.items()), scalars
    assert printed["run_name"] != base  # a demo run never writes into (or resumes) the full recipe's run
    check_built(build([base, f"demo/{name}"], printed, vgg19_file, monkeypatch), printed)


def stack_of(model: str) -> list[str]:
    """The configs a shipped model's training stacks, as its comment's `ir-lightning fit -c ... -c ...` names them."""
    text = (RECIPES / "models" / f"{model}.yaml").read_text()
    command = re.search(r"ir-lightning fit((?: -c [\w/]+)+)", text)
    assert command is not None, f"models/{model}.yaml: its comment must give the fit command that trains it"
    stack = command.group(1).split(" -c ")[1:]
    assert stack[-1] == f"models/{model}" and stack[0] in BASES, stack
    return stack


@pytest.mark.parametrize("name", MODELS)
def test_every_shipped_models_recipe_parses_on_its_stack_and_builds(name, capsys, tmp_path, monkeypatch, vgg19_file):
    monkeypatch.chdir(tmp_path)
    stack = stack_of(name)
    printed = print_config(capsys, *stack)
    assert printed["run_name"] == name  # its own runs/<name>, apart from the demo's and the recipe's
    check_built(build(stack, printed, vgg19_file, monkeypatch), printed)


def test_recipes_live_where_the_tests_and_the_package_data_look():
    """Recipes at the top, in demo/ or in models/ only: setup.cfg's package_data and the globs above cover those."""
    assert {path.parent for path in RECIPES.rglob("*.yaml")} == {RECIPES, RECIPES / "demo", RECIPES / "models"}
    assert (RECIPES / BASE).read_bytes() == packaged.BASE_RECIPE.read_bytes()


def test_the_base_recipe_holds_the_shared_settings_only():
    """No method, data or run name: those are each recipe's. No trainer.callbacks: the suite's callbacks are keys
    of their own, so a recipe's trainer.callbacks adds to them instead of replacing them."""
    base = yaml.safe_load(packaged.BASE_RECIPE.read_text())
    assert not {"model", "data", "run_name", "run_dir"} & set(base)
    assert "callbacks" not in base["trainer"] and "default_root_dir" not in base["trainer"]
    assert set(cli.SUITE_CALLBACKS) <= set(base)
    for recipe in [*BASES, *(f"demo/{name}" for name in OVERLAYS)]:
        written = yaml.safe_load((RECIPES / f"{recipe}.yaml").read_text())
        assert "logger" not in written.get("trainer", {}), f"{recipe}: the logger is the base's (name: run_name)"
        classes = [entry["class_path"] for entry in written.get("trainer", {}).get("callbacks") or []]
        assert not [c for c in classes if c.rsplit(".", 1)[-1] in {k.__name__ for k in SUITE}], (recipe, classes)


def test_print_config_shows_the_paths_and_name_that_run_name_and_run_dir_set(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    printed = print_config(capsys, "sr3_x4")
    assert printed["trainer"]["default_root_dir"] == "runs/sr3_x4"
    assert printed["checkpoint"]["init_args"]["dirpath"] == "runs/sr3_x4/checkpoints"
    assert printed["checkpoint"]["init_args"]["every_n_train_steps"] == 5000  # the base's
    assert printed["ema"]["init_args"]["decay"] == 0.9999  # the recipe's
    (logger,) = printed["trainer"]["logger"]
    assert logger["init_args"]["name"] == "sr3_x4" and logger["init_args"]["save_dir"] == "runs/sr3_x4"
    moved = print_config(capsys, "sr3_x4", flags=("--run_dir=elsewhere/a", "--ema.decay=0.5"))
    assert moved["trainer"]["default_root_dir"] == "elsewhere/a"
    assert moved["checkpoint"]["init_args"]["dirpath"] == "elsewhere/a/checkpoints"
    assert (
        moved["trainer"]["logger"][0]["init_args"] | {"name": "sr3_x4", "save_dir": "elsewhere/a"}
        == moved["trainer"]["logger"][0]["init_args"]
    )
    assert moved["ema"]["init_args"]["decay"] == 0.5
    kept = print_config(capsys, "sr3_x4", flags=("--checkpoint.dirpath=/ckpt", "--trainer.logger.init_args.name=mine"))
    assert kept["checkpoint"]["init_args"]["dirpath"] == "/ckpt"  # run_name fills what is unset, overrides nothing
    assert kept["trainer"]["logger"][0]["init_args"]["name"] == "mine"
    assert kept["trainer"]["default_root_dir"] == "runs/sr3_x4"


def test_a_suite_callback_is_left_out_by_null_others_follow_it_and_none_runs_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ir-lightning"])
    recipe = packaged.resolve_configs(["-c", "sr3_x4", "-c", "demo/sr3_x4_cpu"])
    probe = ["--trainer.callbacks+=tests.ddp_probe.RankProbe", "--trainer.callbacks.out_dir=probe"]
    with skip_init():
        built = cli.IRLightningCLI(args=[*recipe, "--image_grid=null", *probe], run=False)
    names = [type(c).__name__ for c in built.trainer.callbacks]
    assert "ImageGridLogger" not in names and names.index("RankProbe") > names.index("WandbSummaries")
    with pytest.raises(ConfigurationError, match=r"trainer.callbacks repeats EMA, the suite's `ema`"), skip_init():
        cli.IRLightningCLI(args=[*recipe, "--trainer.callbacks+=ir_lightning.callbacks.EMA"], run=False)
