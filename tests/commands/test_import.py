"""`ir-lightning import` as a user runs it, on a file of every official format (the official code's fixtures,
wrapped as each repository releases them): the format is detected, the checkpoint restores, `export` of it
restores the same image, `fit --init_weights` takes its weights, and files that are not what they claim are
refused in one line naming the file and the keys."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ir_lightning.commands.export import export_weights
from ir_lightning.commands.import_ import main
from ir_lightning.inference.loading import load_method
from ir_lightning.training.run_checks import check_checkpoint_fits
from tests.importing import test_diffir_import, test_noise_da_import, test_rddm_import, test_sr3_import

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def sr3_file() -> dict:
    return test_sr3_import.gen_file(torch.load(test_sr3_import.FIXTURE, weights_only=True))


def rddm_file() -> dict:
    return test_rddm_import.released(test_rddm_import.fixture("derain")["state_dict"])


def diffir_file() -> dict:
    return torch.load(test_diffir_import.FIXTURE, weights_only=True)["cases"]["deblur_s2"]["file"]


def noise_da_file() -> dict:
    return test_noise_da_import.wrapper(test_noise_da_import.official_fixture(), with_d=False)


# (released file, its name, the format detected, what --variant needs, the LQ restore gets, settings for restoring)
CASES = {
    "sr3": (sr3_file, "I640000_E37_gen.pth", "sr3-janspiry", None, (1, 3, 4, 4), ["sampling.steps=2"]),
    "rddm": (rddm_file, "model-90.pt", "rddm", None, (1, 3, 8, 8), ["sampling.steps=2"]),
    "diffir": (diffir_file, "net_g_latest.pth", "diffir-s2", None, (1, 3, 16, 16), []),
    "noise_da": (noise_da_file, "derain.pth", "noise-da", "derain", (1, 3, 16, 16), []),
}


def options(settings: list[str]) -> SimpleNamespace:
    return SimpleNamespace(method=None, no_ema=False, set=settings, steps=None, sampler=None, operator=None)


def restored(path: Path, settings: list[str], shape: tuple[int, ...]) -> torch.Tensor:
    model = load_method(path, options(settings), torch.device("cpu"))
    lq = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    return model.restore(lq)


@pytest.mark.parametrize("name", list(CASES))
def test_import_restore_export_restore_gives_the_same_image(name, tmp_path, capsys):
    make, file_name, fmt, variant, shape, settings = CASES[name]
    source, imported, exported = tmp_path / file_name, tmp_path / f"{name}.ckpt", tmp_path / f"{name}_export.ckpt"
    torch.save(make(), source)
    code = main([str(source), str(imported), *(["--variant", variant] if variant else [])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith(f"{source}: format {fmt} (") and f"{imported}: " in out and "restore with:" in out
    first = restored(imported, settings, shape)
    assert first.min() >= 0 and first.max() <= 1 and first.std() > 0
    export_weights(imported, exported)
    torch.testing.assert_close(restored(exported, settings, shape), first, rtol=0, atol=0)
    again = tmp_path / f"{name}_export_again.ckpt"  # an export keeps what it left out, so exporting it again works
    export_weights(exported, again)
    torch.testing.assert_close(restored(again, settings, shape), first, rtol=0, atol=0)


def test_the_imported_weights_start_a_run_but_cannot_resume_one(tmp_path):
    """`fit --init_weights` accepts an imported checkpoint (the method's recipe) and loads exactly its weights;
    `--ckpt_path` refuses it (no training state) saying to use --init_weights."""
    from ir_lightning.class_paths import allowed_class
    from ir_lightning.errors import ConfigurationError

    source, imported = tmp_path / "deblur.pth", tmp_path / "da.ckpt"
    torch.save(noise_da_file(), source)
    assert main([str(source), str(imported), "--variant", "deblur"]) == 0
    checkpoint = torch.load(imported, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    model_config = {"class_path": hparams["_class_path"], "init_args": {}}
    check_checkpoint_fits(imported, model_config, resume=False, flag="--init_weights")
    with pytest.raises(ConfigurationError, match="holds weights only .* give --init_weights"):
        check_checkpoint_fits(imported, model_config, resume=True)
    cls = allowed_class(hparams["_class_path"])
    bare = {key: value for key, value in checkpoint.items() if key != "exported_without"}
    bare["state_dict"] = {}  # the module `fit` builds from the recipe: D included, fresh weights
    buffer = io.BytesIO()
    torch.save(bare, buffer)
    buffer.seek(0)
    fresh = cls.load_from_checkpoint(buffer, map_location="cpu", strict=False)
    assert fresh.diffusion is not None
    diffusion_before = {k: v.clone() for k, v in fresh.diffusion.state_dict().items()}
    fresh.load_initial_weights(checkpoint, str(imported))  # what `fit --init_weights` runs
    state = fresh.state_dict()
    assert all(torch.equal(state[key], value) for key, value in checkpoint["state_dict"].items())
    assert all(torch.equal(fresh.diffusion.state_dict()[k], v) for k, v in diffusion_before.items())  # D kept fresh


def test_list_formats_names_every_format_and_its_files(capsys):
    assert main(["--list-formats"]) == 0
    out = capsys.readouterr().out
    for fmt in ("sr3-janspiry", "rddm", "diffir-s1", "diffir-s2", "noise-da"):
        assert f"  {fmt} " in out
    assert "--variant denoise|derain|deblur" in out


def test_a_file_no_format_recognises_is_refused_naming_its_keys(tmp_path, capsys):
    source = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(1)}, source)
    assert main([str(source), str(tmp_path / "out.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {source}: no official format recognises it (top-level keys encoder.weight, ")
    assert "name one with --format (sr3-janspiry, rddm, " in err
    assert not (tmp_path / "out.ckpt").exists()


def test_a_file_of_another_format_is_refused_when_named_and_nothing_is_written(tmp_path, capsys):
    source, output = tmp_path / "I640000_E37_gen.pth", tmp_path / "out.ckpt"
    torch.save(sr3_file(), source)
    assert main([str(source), str(output), "--format", "noise-da", "--variant", "denoise"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {source} (noise-da): ") and "RestorationNet." in err
    assert not output.exists()


def test_bad_format_variant_and_recipe_are_named(tmp_path, capsys):
    source = tmp_path / "derain.pth"
    torch.save(noise_da_file(), source)
    out = str(tmp_path / "x.ckpt")
    assert main([str(source), out, "--format", "nope"]) == 2
    assert "--format nope: no such format; the formats: sr3-janspiry" in capsys.readouterr().err
    assert main([str(source), out, "--variant", "rain"]) == 2
    assert "--variant rain: format noise-da has variants denoise, derain, deblur" in capsys.readouterr().err
    assert main([str(source), out, "--variant", "derain", "--recipe", "sr3_x4"]) == 2
    assert "--recipe sr3_x4: it trains ir_lightning.methods.SR3, the file holds a" in capsys.readouterr().err
    assert main([str(source), out, "--variant", "derain", "--recipe", "no_such_recipe"]) == 2
    assert "--recipe no_such_recipe: no packaged recipe or file of that name" in capsys.readouterr().err


def test_an_unsafe_or_broken_file_is_refused_before_anything_runs(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    source = tmp_path / "evil.pth"
    torch.save({"RestorationNet.x": Evil()}, source)
    assert main([str(source), str(tmp_path / "x.ckpt")]) == 2
    captured = capsys.readouterr()
    assert "ran" not in captured.out and "weights_only=True" in captured.err
    (tmp_path / "text.pth").write_text("{}")
    assert main([str(tmp_path / "text.pth"), str(tmp_path / "x.ckpt")]) == 2
    assert "a JSON or other text file" in capsys.readouterr().err


def test_an_existing_output_is_kept_without_force_and_the_source_never_overwritten(tmp_path, capsys):
    source, output = tmp_path / "derain.pth", tmp_path / "da.ckpt"
    torch.save(noise_da_file(), source)
    output.write_bytes(b"mine")
    assert main([str(source), str(output), "--variant", "derain"]) == 2
    assert f"error: {output} exists: give --force to replace it" in capsys.readouterr().err
    assert output.read_bytes() == b"mine"
    assert main([str(source), str(source), "--variant", "derain", "--force"]) == 2
    assert "exists: it is the file to import" in capsys.readouterr().err
    assert main([str(source), str(output), "--variant", "derain", "--force"]) == 0
    assert "state_dict" in torch.load(output, weights_only=True)


def test_an_import_says_what_export_leaves_out():
    """An imported checkpoint names the method's training-only submodules, as a training checkpoint does, so that
    `export` of an import that holds Noise-DA's D (or DiffIR's teacher) leaves them out."""
    for name in ("noise_da", "diffir"):
        make, file_name, _, variant, _, _ = CASES[name]
        with tempfile.TemporaryDirectory() as folder:
            source, imported = Path(folder) / file_name, Path(folder) / "x.ckpt"
            torch.save(make(), source)
            assert main([str(source), str(imported), *(["--variant", variant] if variant else [])]) == 0
            expected = {"noise_da": ["diffusion"], "diffir": ["cpen_s1"]}[name]
            assert torch.load(imported, weights_only=True)["training_only"] == expected
