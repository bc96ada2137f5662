"""`ir-lightning restore` on hand-made checkpoints of a small DeqIR prior: the method comes from the
checkpoint, the outputs are what the method restores, overrides reach the method, unreadable inputs
are named and skipped, existing outputs are kept, and a checkpoint whose pickle would run code is
refused without running it."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from PIL import Image

from ir_lightning.commands.restore import main
from ir_lightning.inference.tiling import restore_tiled
from ir_lightning.io.atomic import host_tag
from ir_lightning.methods.deqir import DeqIR
from ir_lightning.nets.unet import UNet
from ir_lightning.training.image_grid import to_uint8_hwc
from tests.conftest import REPO
from tests.helpers.checkpoints import NET, RunsCode, save_checkpoint, small_deqir


def write_inputs(folder: Path) -> Path:
    generator = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(generator.integers(0, 256, (8, 6, 3), dtype=np.uint8)).save(folder / "sub/a.png")
    Image.fromarray(generator.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "b.jpg")  # grey JPEG
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def expected(model: DeqIR, source: Path) -> np.ndarray:
    """What the method restores from the file (read by Pillow), as 8-bit pixels; grey stays grey."""
    with Image.open(source) as image:
        grey = image.mode == "L"
        lq = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        restored = model.restore(lq)[0].clamp(0, 1)
    if grey:
        return np.rint(restored.mean(0).numpy() * 255).astype(np.uint8)
    return to_uint8_hwc(restored)


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_restores_every_readable_input_as_the_method_does_and_names_the_broken_one(tmp_path, capsys):
    model = small_deqir()
    ckpt = save_checkpoint(model, tmp_path / "deqir.ckpt")
    inputs, out = write_inputs(tmp_path / "in"), tmp_path / "out"
    status = main(
        ["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(out), "--method", "deqir", "--device", "cpu"]
    )
    assert status == 1  # one input failed
    captured = capsys.readouterr()
    assert f"error: {inputs / 'broken.png'}: not an image file" in captured.err
    assert "2 restored, 0 skipped (already there), 1 failed" in captured.out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["b.png", "sub/a.png"]
    assert read(out / "sub/a.png").shape == (16, 12, 3)  # sr2: twice the input's size
    np.testing.assert_array_equal(read(out / "sub/a.png"), expected(model, inputs / "sub/a.png"))
    np.testing.assert_array_equal(read(out / "b.png"), expected(model, inputs / "b.jpg"))
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary file left


def test_settings_reach_the_method(tmp_path):
    ckpt = save_checkpoint(small_deqir(), tmp_path / "deqir.ckpt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(inputs / "x.png")
    args = ["--ckpt", str(ckpt), "--input", str(inputs / "x.png"), "--device", "cpu"]
    assert (
        main([*args, "--output", str(tmp_path / "o1"), "--operator", "sr4", "--steps", "2", "--sampler", "picard"]) == 0
    )
    changed = small_deqir(operator="sr4", steps=2, solver="picard")  # the same weights: seed 0
    np.testing.assert_array_equal(read(tmp_path / "o1/x.png"), expected(changed, inputs / "x.png"))
    assert read(tmp_path / "o1/x.png").shape == (32, 32, 3)
    assert main([*args, "--output", str(tmp_path / "o2"), "--set", "operator=colorization"]) == 0
    assert read(tmp_path / "o2/x.png").shape == (8, 8, 3)


def test_no_ema_uses_the_trained_weights(tmp_path):
    ema, trained = small_deqir(seed=0), small_deqir(seed=1)
    ckpt = save_checkpoint(ema, tmp_path / "deqir.ckpt", trained=trained)
    inputs = write_inputs(tmp_path / "in")
    args = ["--ckpt", str(ckpt), "--input", str(inputs / "sub/a.png"), "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "ema")]) == 0
    assert main([*args, "--output", str(tmp_path / "trained"), "--no-ema"]) == 0
    np.testing.assert_array_equal(read(tmp_path / "ema/a.png"), expected(ema, inputs / "sub/a.png"))
    np.testing.assert_array_equal(read(tmp_path / "trained/a.png"), expected(trained, inputs / "sub/a.png"))
    exported = save_checkpoint(ema, tmp_path / "exported.ckpt")
    assert (
        main(
            ["--ckpt", str(exported), "--input", str(inputs / "sub/a.png"), "--output", str(tmp_path / "x"), "--no-ema"]
        )
        == 2
    )


def test_skip_existing_keeps_finished_outputs(tmp_path, capsys):
    ckpt = save_checkpoint(small_deqir(), tmp_path / "deqir.ckpt")
    inputs, out = write_inputs(tmp_path / "in"), tmp_path / "out"
    (inputs / "broken.png").unlink()
    (out / "sub").mkdir(parents=True)
    (out / "sub/a.png").write_bytes(b"finished earlier")
    status = main(
        ["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(out), "--skip-existing", "--device", "cpu"]
    )
    assert status == 0 and "1 restored, 1 skipped (already there), 0 failed" in capsys.readouterr().out
    assert (out / "sub/a.png").read_bytes() == b"finished earlier" and (out / "b.png").is_file()


def test_a_checkpoint_whose_pickle_runs_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"payload": RunsCode(marker)}}, crafted)
    with open(tmp_path / "plain.pkl", "wb") as f:  # the payload is real: plain unpickling runs it
        pickle.dump(RunsCode(marker), f)
    with open(tmp_path / "plain.pkl", "rb") as f:
        pickle.load(f)  # noqa: S301
    assert marker.exists()
    marker.unlink()
    inputs = write_inputs(tmp_path / "in")
    status = main(["--ckpt", str(crafted), "--input", str(inputs), "--output", str(tmp_path / "out")])
    assert status == 2 and not marker.exists()
    err = capsys.readouterr().err
    assert f"error: {crafted}: refused, not a checkpoint of this suite" in err and "system" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "sr3"], "--method sr3: {ckpt} holds a DeqIR checkpoint"),
        (["--set", "sample_step=5"], "--set sample_step: DeqIR has no such setting; its settings: net, "),
        (["--set", "sampling.steps"], "--set 'sampling.steps': expected KEY=VALUE"),
        (
            ["--set", "sampling.stepz=5"],
            "--set sampling.stepz: sampling has no field 'stepz'; its fields: steps, sampler, eta, seed",
        ),
        (
            ["--set", "sampling.solver.tol=0.1"],
            "--set sampling.solver.tol: sampling.solver has no field 'tol'; its fields: method, memory, ",
        ),
        (["--set", "operator.name=sr4"], "--set operator.name: DeqIR's operator has no fields to set"),
        (["--steps", "0"], "error: sampling: sampling.steps must be an integer >= 1, got 0\n"),
        (
            ["--sampler", "picard", "--set", "sampling.eta=0.5"],
            "error: sampling: sampling.solver.method=picard solves the",
        ),
        (["--operator", "sr"], "unknown operator 'sr'"),
        (
            ["--set", "sampling.solver.method=newton"],
            "error: sampling: solver.method must be one of sequential, anderson, picard, anderson_official, got 'newton'\n",
        ),
    ],
)
def test_bad_arguments_name_the_key_and_value(tmp_path, capsys, extra, message):
    ckpt = save_checkpoint(small_deqir(), tmp_path / "deqir.ckpt")
    inputs = write_inputs(tmp_path / "in")
    assert main(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(tmp_path / "out"), *extra]) == 2
    assert message.format(ckpt=ckpt) in capsys.readouterr().err


def test_inputs_that_would_share_an_output_are_refused_before_any_work(tmp_path, capsys):
    ckpt = save_checkpoint(small_deqir(), tmp_path / "deqir.ckpt")
    inputs = write_inputs(tmp_path / "in")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(inputs / "b.png")  # beside b.jpg
    assert main(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(tmp_path / "out")]) == 2
    assert (
        f"{inputs / 'b.jpg'} and {inputs / 'b.png'} would both be written to {tmp_path / 'out' / 'b.png'}"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


def test_missing_inputs_and_checkpoints_are_named(tmp_path, capsys):
    ckpt = save_checkpoint(small_deqir(), tmp_path / "deqir.ckpt")
    assert main(["--ckpt", str(ckpt), "--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]) == 2
    assert f"--input {tmp_path / 'nothing'}: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        main(["--ckpt", str(tmp_path / "no.ckpt"), "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")])
        == 2
    )
    assert "no image files" in capsys.readouterr().err
    inputs = write_inputs(tmp_path / "in")
    assert main(["--ckpt", str(tmp_path / "no.ckpt"), "--input", str(inputs), "--output", str(tmp_path / "o")]) == 2
    assert f"--ckpt {tmp_path / 'no.ckpt'}: no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_restore_leaves_only_complete_images_and_skip_existing_finishes_it(tmp_path):
    ckpt = save_checkpoint(small_deqir(steps=30), tmp_path / "deqir.ckpt")
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    pixels = np.random.default_rng(3).integers(0, 256, (30, 24, 24, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(inputs / f"{i:02d}.png")
    command = [
        sys.executable,
        "-m",
        "ir_lightning",
        "restore",
        "--ckpt",
        str(ckpt),
        "--input",
        str(inputs),
        "--output",
        str(out),
        "--device",
        "cpu",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # a few tenths of a second per image
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("[0-9]*.png"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()  # SIGKILL: no handler runs, a write may be cut anywhere
    process.wait()
    finished = sorted(out.glob("[0-9]*.png"))
    assert 3 <= len(finished) < 30, len(finished)
    for path in finished:  # every visible file is a whole image
        assert np.asarray(Image.open(path)).shape == (48, 48, 3)
    before = {path.name: path.read_bytes() for path in finished}
    leftover = out / f".29.png.partial-{host_tag()}-{process.pid}-0a1b2c3d.tmp"  # what a kill inside a write leaves
    leftover.write_bytes(b"\x89PNG half")
    running = out / f".28.png.partial-{host_tag()}-{os.getpid()}-0a1b2c3d.tmp"  # a live writer's: kept
    running.write_bytes(b"\x89PNG being written")
    done = subprocess.run([*command, "--skip-existing"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{30 - len(finished)} restored, {len(finished)} skipped (already there), 0 failed" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{i:02d}.png" for i in range(30)] + [running.name])
    assert all((out / name).read_bytes() == data for name, data in before.items())


def test_large_images_are_restored_in_tiles_and_inpainting_whole(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(inputs / "big.png")
    ckpt = save_checkpoint(small_deqir(), tmp_path / "deqir.ckpt")
    args = ["--ckpt", str(ckpt), "--input", str(inputs), "--device", "cpu", "--tile", "16", "--overlap", "8"]
    assert main([*args, "--output", str(tmp_path / "tiled"), "--tile-batch", "3"]) == 0
    assert read(tmp_path / "tiled/big.png").shape == (80, 72, 3)
    model = small_deqir()
    lq = torch.from_numpy(np.array(Image.open(inputs / "big.png"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        tiled = restore_tiled(lambda t: model.restore(t).clamp(0, 1), lq, tile=16, overlap=8, batch=3)
    np.testing.assert_array_equal(read(tmp_path / "tiled/big.png"), to_uint8_hwc(tiled[0]))  # written band by band
    assert "restores whole images only" not in capsys.readouterr().err
    assert main([*args, "--output", str(tmp_path / "whole"), "--operator", "inpaint_box"]) == 0
    assert "DeqIR with these settings restores whole images only (--tile ignored)" in capsys.readouterr().err
    np.testing.assert_array_equal(
        read(tmp_path / "whole/big.png"), expected(small_deqir(operator="inpaint_box"), inputs / "big.png")
    )
    assert main([*args, "--output", str(tmp_path / "x"), "--overlap", "16"]) == 2
    assert "0 <= --overlap < --tile" in capsys.readouterr().err


def test_a_class_path_outside_the_suite_is_refused_without_importing_it(tmp_path, capsys):
    model = small_deqir()
    ckpt = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"_class_path": "this.Anything"}}, ckpt)
    assert "this" not in sys.modules
    inputs = write_inputs(tmp_path / "in")
    assert main(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(tmp_path / "out")]) == 2
    assert (
        "hyper_parameters._class_path names 'this.Anything', which is not a class of this suite"
        in capsys.readouterr().err
    )
    assert "this" not in sys.modules  # importing it would have run its code


def test_whole_images_with_tile_0_a_corrupt_16_bit_png_is_skipped_and_outputs_are_world_readable(tmp_path, capsys):
    ckpt = save_checkpoint(small_deqir(), tmp_path / "deqir.ckpt")
    inputs = write_inputs(tmp_path / "in")
    (inputs / "broken.png").unlink()
    buffer = io.BytesIO()
    png.Writer(8, 8, greyscale=True, bitdepth=16).write(buffer, np.zeros((8, 8), np.uint16))
    (inputs / "cut16.png").write_bytes(buffer.getvalue()[:60])  # a 16-bit PNG cut short
    status = main(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(tmp_path / "out"), "--tile", "0"])
    assert status == 1 and f"error: {inputs / 'cut16.png'}: not a readable 16-bit PNG" in capsys.readouterr().err
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out/b.png").stat().st_mode & 0o777 == 0o666 & ~umask


def fixed_size_deqir(image_size: int) -> tuple[DeqIR, dict]:
    """small_deqir's network behind a TimestepPrior of one image size (a pretrained prior's), with its net spec."""
    from ir_lightning.nets.timestep_prior import TimestepPrior

    schedule = {"schedule": "linear", "n_steps": 100, "linear_start": 1e-4, "linear_end": 0.02}
    net = {
        "class_path": "ir_lightning.nets.timestep_prior.TimestepPrior",
        "init_args": {"prior": NET, **schedule, "image_size": image_size},
    }
    model = small_deqir()
    torch.manual_seed(0)
    model.net = TimestepPrior(UNet(**NET["init_args"]), **schedule, image_size=image_size).eval()
    return model, net


def test_a_prior_of_one_size_is_tiled_at_it_and_smaller_images_are_refused(tmp_path, capsys):
    """A 16 px prior restoring x2 SR: `restore` tiles at 8 input pixels whatever --tile says, and says so."""
    model, net = fixed_size_deqir(16)
    assert model.native_tile() == 8
    ckpt = tmp_path / "prior16.ckpt"
    save_checkpoint(model, ckpt)
    checkpoint = torch.load(ckpt, weights_only=False)
    checkpoint["hyper_parameters"]["net"] = net
    torch.save(checkpoint, ckpt)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(inputs / "big.png")
    args = ["--ckpt", str(ckpt), "--input", str(inputs), "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "out")]) == 0  # --tile 256 by default
    assert "restoring in tiles of 8 input pixels (--tile 8, --overlap 4" in capsys.readouterr().err
    lq = torch.from_numpy(np.array(Image.open(inputs / "big.png"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        tiled = restore_tiled(lambda t: model.restore(t).clamp(0, 1), lq, tile=8, overlap=4, batch=4)
    np.testing.assert_array_equal(read(tmp_path / "out/big.png"), to_uint8_hwc(tiled[0]))
    Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(inputs / "small.png")
    (inputs / "big.png").unlink()
    assert main([*args, "--output", str(tmp_path / "small")]) == 1
    assert (
        "6 x 6 pixels is too small: this DeqIR checkpoint restores images of at least 8 x 8" in capsys.readouterr().err
    )
