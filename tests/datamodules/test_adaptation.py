"""Tests of LQ-only training shards and of AdaptationDataModule (two training streams, real-domain
evaluation) on tiny shards written in tmp_path; one slow test runs two real DDP processes.

Run as a module (``python -m tests.datamodules.test_adaptation SHARD_DIR OUT_DIR``), this file is
the DDP probe that test starts: a 2-process CPU fit that records what each rank trained on.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import AdaptationDataModule, ShardDataModule
from datamodules.adaptation import DomainStreams
from ir_lightning.cli import release_process_group
from ir_lightning.degradations import CameraNoise, GaussianNoise, Pipeline
from tests.processes import run_group

REPO = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 32
"""Side of the tiny shard images: 25 x 25 crop positions of 8 pixels x 8 symmetries per image."""
CROP, STEPS = 8, 4


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, files: list[tuple[str, bytes]]) -> None:
    """A tar archive holding ``(name, data)`` members in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, keys: list[str], seed: int, members: tuple[str, ...] = ("gt",)) -> dict[str, np.ndarray]:
    """A shard whose samples hold one random RGB image as ``<key>.<member>.png`` for each of
    ``members`` (the same pixels in each); returns the images by key."""
    rng = np.random.default_rng(seed)
    images, files = {}, []
    for key in keys:
        images[key] = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8)
        files += [(f"{key}.{member}.png", png_bytes(images[key])) for member in members]
    write_tar(path, files)
    return images


def write_domain_shards(root: Path) -> dict[str, str]:
    """Clean shards (``c*`` keys), LQ-only real shards (``r*``), real clean and real paired val shards."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(2):
        write_shard(root / f"clean-{index}.tar", [f"c{index}x{k}" for k in range(4)], seed=index)
        write_shard(root / f"real-{index}.tar", [f"r{index}x{k}" for k in range(4)], seed=10 + index, members=("lq",))
    write_shard(root / "realval-0.tar", ["v0", "v1", "v2"], seed=20)
    write_shard(root / "realpair-0.tar", ["p0", "p1"], seed=21, members=("gt", "lq"))
    return {
        "clean": str(root / "clean-{0..1}.tar"),
        "real": str(root / "real-{0..1}.tar"),
        "real_val": str(root / "realval-0.tar"),
        "real_paired": str(root / "realpair-0.tar"),
    }


@pytest.fixture()
def shards(tmp_path: Path) -> dict[str, str]:
    return write_domain_shards(tmp_path / "shards")


def trainer_stub(rank: int = 0, world_size: int = 1, training: bool = True, step: int = 0) -> SimpleNamespace:
    """The trainer attributes the data modules read."""
    return SimpleNamespace(
        global_rank=rank, world_size=world_size, current_epoch=0, training=training, global_step=step
    )


def child(**kwargs) -> ShardDataModule:
    settings = dict(crop_size=CROP, batch_size=2, steps_per_epoch=STEPS, num_workers=0, shuffle_buffer=4, seed=7)
    return ShardDataModule(**{**settings, **kwargs})


def noise(sigma: float) -> Pipeline:
    return Pipeline([GaussianNoise(sigma=(sigma, sigma))], quantize=False, clamp=False)


def adaptation(
    shards: dict[str, str], real: str = "lq_only", num_workers: int = 0, **real_kwargs
) -> AdaptationDataModule:
    """Synthetic: clean shards + Gaussian noise. Real: LQ-only shards (``lq_only``) or the clean
    shards through camera noise (``camera``), batches of 3 (other than the synthetic 2)."""
    real_kwargs["num_workers"] = num_workers
    synthetic = child(train_shards=shards["clean"], degradation=noise(25.0), num_workers=num_workers)
    if real == "lq_only":
        real_child = child(train_shards=shards["real"], require_gt=False, batch_size=3, seed=8, **real_kwargs)
    else:
        real_child = child(
            train_shards=shards["clean"], degradation=Pipeline([CameraNoise()]), batch_size=3, seed=8, **real_kwargs
        )
    return AdaptationDataModule(synthetic, real_child)


def set_up(datamodule, stage: str = "fit", **trainer_kwargs):
    datamodule.trainer = trainer_stub(**trainer_kwargs)
    datamodule.setup(stage)
    return datamodule


def digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------- LQ-only training shards


@pytest.mark.parametrize(("scale", "lq_side"), [(1, 8), (2, 4)])
def test_lq_only_shards_stream_crops_of_the_requested_size(tmp_path, scale, lq_side):
    """An LQ-only sample is cropped on its own grid to crop_size // scale (the LQ crop of a paired
    sample), and each crop is a flipped/rotated window of its source image."""
    sources = write_shard(tmp_path / "lqonly.tar", ["a", "b"], seed=3, members=("lq",))
    datamodule = child(train_shards=str(tmp_path / "lqonly.tar"), require_gt=False, scale=scale)
    datamodule.trainer = trainer_stub()
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert len(batches) == STEPS
    for batch in batches:
        assert "gt" not in batch and batch["lq"].shape == (2, 3, lq_side, lq_side)
        assert int(batch["n_skipped"]) == 0
        for key, crop in zip(batch["__key__"], batch["lq"]):
            source = torch.from_numpy(sources[key]).permute(2, 0, 1).float() / 255
            windows = source.unfold(1, lq_side, 1).unfold(2, lq_side, 1)  # C x H' x W' x side x side
            candidates = [
                torch.rot90(crop.flip(-1) if mirror else crop, -turns, dims=(1, 2))
                for mirror in (False, True)
                for turns in range(4)
            ]  # the 8 symmetries of the square
            assert any((windows == c[:, None, None]).all(dim=(0, 3, 4)).any() for c in candidates)


def test_lq_only_samples_need_require_gt_false(shards):
    """By default a training sample must hold gt: an LQ-only stream is all skips, and the error says why."""
    datamodule = child(train_shards=shards["real"], max_consecutive_skips=3)
    datamodule.trainer = trainer_stub()
    datamodule.setup("fit")
    with pytest.warns(UserWarning, match="has no gt image"), pytest.raises(RuntimeError, match="require_gt: false"):
        next(iter(datamodule.train_dataloader()))


def test_a_sample_with_neither_gt_nor_lq_is_skipped_counted_and_named(tmp_path):
    path = tmp_path / "holes.tar"
    lq = png_bytes(np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
    write_tar(path, [("a.lq.png", lq), ("hole.meta.json", b"{}"), ("c.lq.png", lq)])
    datamodule = child(train_shards=str(path), require_gt=False, batch_size=1, shuffle_buffer=0)
    datamodule.trainer = trainer_stub()
    datamodule.setup("fit")
    with pytest.warns(UserWarning, match=r"'hole' of shard '.*holes\.tar' has neither a gt nor an lq"):
        batches = list(datamodule.train_dataloader())
    # the one shard read twice: a, (hole skipped) c, a, (hole skipped) c
    assert [batch["__key__"][0] for batch in batches] == ["a", "c", "a", "c"]
    assert [int(batch["n_skipped"]) for batch in batches] == [0, 1, 0, 1]


# ---------------------------------------------------------------- the two streams


@pytest.mark.parametrize("real", ["lq_only", "camera"])
def test_training_batches_hold_both_domains_and_never_the_real_gt(shards, real):
    datamodule = set_up(adaptation(shards, real), step=3)
    for loaded in itertools.islice(datamodule.train_dataloader(), 2):
        assert ("real_gt" in loaded) == (real == "camera")  # clean real images exist only until the transfer hook
        batch = datamodule.on_after_batch_transfer(loaded, 0)
        assert batch["gt"].shape == batch["lq"].shape == (2, 3, CROP, CROP)
        assert batch["real_lq"].shape == (3, 3, CROP, CROP)
        assert len(batch["__key__"]) == 2 and len(batch["real___key__"]) == 3
        assert not any(
            name.startswith("real_") and name not in ("real_lq", "real___key__", "real_n_skipped") for name in batch
        )  # no real gt, no real mask
        assert all(key.startswith("c") for key in batch["__key__"])
        assert all(key.startswith("r" if real == "lq_only" else "c") for key in batch["real___key__"])
        assert int(batch["n_skipped"]) == int(batch["real_n_skipped"]) == 0
        residual = batch["lq"] - batch["gt"]
        assert float(residual.std()) == pytest.approx(25 / 255, rel=0.2)  # the synthetic child's noise
    datamodule.teardown("fit")


def test_the_two_streams_differ_even_over_the_same_shards(shards):
    """Both children read the clean shards through the same noise: other seeds, so other keys, other
    crops (no crop of one stream is a crop of the other) and other noise at the same step."""
    synthetic = child(train_shards=shards["clean"], degradation=noise(25.0))
    real = child(train_shards=shards["clean"], degradation=noise(25.0), seed=8)
    datamodule = set_up(AdaptationDataModule(synthetic, real), step=5)
    loaded = list(datamodule.train_dataloader())
    real_gt = [batch["real_gt"].clone() for batch in loaded]  # looked at here only; the hook drops it
    crops = {
        side: {(key, digest(image)) for b in loaded for key, image in zip(b[f"{side}__key__"], b[f"{side}gt"])}
        for side in ("", "real_")
    }
    assert len(crops[""]) == len(crops["real_"]) == 2 * STEPS and not crops[""] & crops["real_"]
    assert [b["__key__"] for b in loaded] != [b["real___key__"] for b in loaded]
    for batch, clean in zip((datamodule.on_after_batch_transfer(b, 0) for b in loaded), real_gt):
        synthetic_noise, real_noise = batch["lq"] - batch["gt"], batch["real_lq"] - clean
        assert float((synthetic_noise - real_noise).abs().min()) > 0  # not one draw at any pixel


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("taken", [1, STEPS])
def test_a_resumed_combined_loader_continues_like_an_uninterrupted_one(shards, num_workers, taken):
    """Epochs of STEPS batches; the state is taken after ``taken`` batches of epoch 1 (STEPS = its end)."""

    def loader():
        datamodule = set_up(adaptation(shards, "lq_only", num_workers=num_workers))
        datamodule.trainer = None  # without a trainer, epochs count the iter() calls
        return datamodule.train_dataloader()

    def ids(batches):
        return [(tuple(b["__key__"]), digest(b["gt"]), tuple(b["real___key__"]), digest(b["real_lq"])) for b in batches]

    uninterrupted = loader()
    epochs = [ids(uninterrupted) for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]
    interrupted = loader()
    list(interrupted)  # epoch 0
    partial = iter(interrupted)
    assert ids(itertools.islice(partial, taken)) == epochs[1][:taken]
    state = interrupted.state_dict()
    partial.close()  # release the half-read epoch's workers now, not at a later garbage collection
    assert state == {side: {"epoch": 1, "batches": taken, "steps": STEPS} for side in ("synthetic", "real")}
    resumed = loader()
    resumed.load_state_dict(state)
    rest = ids(resumed)
    if taken < STEPS:
        assert rest == epochs[1][taken:]
        rest = ids(resumed)
    assert rest == epochs[2]
    for stream in (uninterrupted, interrupted, resumed):
        stream.close()


def test_mismatched_steps_per_epoch_raise_naming_both_values(shards):
    with pytest.raises(ValueError, match=r"synthetic.steps_per_epoch \(4\) and data.real.steps_per_epoch \(6\)"):
        AdaptationDataModule(
            child(train_shards=shards["clean"]), child(train_shards=shards["real"], steps_per_epoch=6, seed=8)
        )


def test_equal_seeds_and_unread_synthetic_eval_shards_raise(shards):
    with pytest.raises(ValueError, match="seed are both 7"):
        AdaptationDataModule(child(train_shards=shards["clean"]), child(train_shards=shards["real"]))
    with pytest.raises(ValueError, match="data.synthetic sets val_shards"):
        AdaptationDataModule(
            child(train_shards=shards["clean"], val_shards=shards["real_val"]),
            child(train_shards=shards["real"], seed=8),
        )


def test_a_missing_real_shard_is_named_with_its_child(shards, tmp_path):
    datamodule = AdaptationDataModule(
        child(train_shards=shards["clean"]), child(train_shards=str(tmp_path / "none-*.tar"), seed=8)
    )
    with pytest.raises(FileNotFoundError, match=r"data.real: data.train_shards: pattern .*none-"):
        set_up(datamodule)


def test_real_clean_shards_without_a_degradation_raise(shards):
    datamodule = set_up(
        AdaptationDataModule(
            child(train_shards=shards["clean"], degradation=noise(5.0)), child(train_shards=shards["clean"], seed=8)
        )
    )
    with pytest.raises(ValueError, match="real training batch .* has no lq"):
        datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)


@pytest.mark.parametrize("paired", [False, True])
def test_validation_batches_come_from_the_real_domain(shards, paired):
    """Clean real val images degraded by the real child's camera noise (the same each epoch), or
    paired real val shards passed through; the synthetic child's Gaussian noise is never used."""
    real = child(
        train_shards=shards["real"],
        require_gt=False,
        seed=8,
        val_batch_size=1,
        val_shards=shards["real_paired" if paired else "real_val"],
        degradation=Pipeline([CameraNoise(photons=(30.0, 30.0))]),
    )
    datamodule = AdaptationDataModule(child(train_shards=shards["clean"], degradation=noise(25.0)), real)
    set_up(datamodule, "validate", training=False)

    def epoch():
        return [datamodule.on_after_batch_transfer(batch, 0) for batch in datamodule.val_dataloader()]

    batches = epoch()
    assert [b["__key__"][0] for b in batches] == (["p0", "p1"] if paired else ["v0", "v1", "v2"])
    for batch, again in zip(batches, epoch()):
        assert batch["gt"].shape == batch["lq"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        if paired:
            assert torch.equal(batch["lq"], batch["gt"])  # the stored LQ (same pixels here), not re-degraded
        else:
            # camera noise at 30 photons: per-pixel std sqrt(v / 30) ~ 0.13 at mid grey, not AWGN's 25/255 ~ 0.1
            assert float((batch["lq"] - batch["gt"]).abs().mean()) > 0.05
            assert torch.equal(batch["lq"], again["lq"])


def test_only_the_real_child_is_set_up_to_evaluate(shards):
    """`validate` needs no synthetic training shards: the synthetic child is not touched."""
    real = child(train_shards=shards["real"], seed=8, val_shards=shards["real_val"])
    datamodule = AdaptationDataModule(child(train_shards="/nonexistent/clean-{0..1}.tar"), real)
    set_up(datamodule, "validate", training=False)
    assert datamodule.synthetic.urls == {} and "val_shards" in datamodule.real.urls


RECIPE = """
data:
  class_path: datamodules.AdaptationDataModule
  init_args:
    real_key_prefix: real_
    synthetic:
      class_path: datamodules.ShardDataModule
      init_args:
        train_shards: {clean}
        crop_size: 8
        batch_size: 2
        steps_per_epoch: 4
        seed: 0
        degradation:
          class_path: ir_lightning.degradations.Pipeline
          init_args:
            steps:
              - class_path: ir_lightning.degradations.GaussianNoise
                init_args: {{sigma: [0, 75]}}
    real:
      class_path: datamodules.ShardDataModule
      init_args:
        train_shards: {real}
        val_shards: {real_val}
        require_gt: false
        crop_size: 8
        batch_size: 2
        steps_per_epoch: 4
        seed: 1
"""


def test_jsonargparse_builds_it_from_a_recipe_as_lightning_cli_does(shards):
    """LightningCLI's subclass mode adds the data module as `add_subclass_arguments(LightningDataModule, 'data')`."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(pl.LightningDataModule, "data", fail_untyped=False, required=True)
    config = parser.parse_string(RECIPE.format(**shards))
    built = parser.instantiate_classes(config).data
    assert isinstance(built, AdaptationDataModule) and built.real_key_prefix == "real_"
    assert isinstance(built.synthetic, ShardDataModule) and isinstance(built.real, ShardDataModule)
    assert built.synthetic.degradation.steps[0].sigma == (0, 75) and built.real.degradation is None
    assert (built.synthetic.seed, built.real.seed, built.real.require_gt) == (0, 1, False)
    datamodule = set_up(built)
    stream = iter(datamodule.train_dataloader())  # 2 loader workers per stream (the recipe's default)
    batch = next(stream)
    stream.close()  # stop the workers now, not at a later garbage collection (a 5 s join each)
    datamodule.teardown("fit")
    assert batch["real_lq"].shape == (2, 3, 8, 8)


@pytest.mark.slow
def test_the_command_line_prints_the_nested_config(shards, tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text(RECIPE.format(**shards))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ir_lightning",
            "fit",
            "--model",
            "ir_lightning.methods.SR3",
            "-c",
            str(config),
            "--print_config",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="offline"),
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert "class_path: datamodules.AdaptationDataModule" in printed
    assert printed.count("class_path: datamodules.ShardDataModule") == 2 and "require_gt: false" in printed


# ---------------------------------------------------------------- through a Trainer


class StreamRecorder(pl.LightningModule):
    """One parameter whose loss reads both domains; records what each step and validation saw."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.steps: list[dict] = []
        self.val_keys: list[str] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        assert "real_gt" not in batch, "the real domain's clean images reached the method"
        self.steps.append(
            {
                "keys": list(batch["__key__"]),
                "real_keys": list(batch["real___key__"]),
                "gt": [digest(img) for img in batch["gt"]],
                "lq": [digest(img) for img in batch["lq"]],
                "real_lq": [digest(img) for img in batch["real_lq"]],
            }
        )
        return (self.weight - batch["lq"].mean() - batch["real_lq"].mean()) ** 2

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        assert batch["lq"].shape == batch["gt"].shape
        self.val_keys.extend(batch["__key__"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(shards: dict[str, str], root: Path, max_steps: int, ckpt_path: str | None = None, **trainer_kwargs):
    """Fit StreamRecorder on camera-noise real data (val on the real clean val shard); return it."""
    datamodule = adaptation(shards, "camera", val_shards=shards["real_val"])
    model = StreamRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return model


def test_trainer_fit_validates_on_the_real_domain_and_resumes_both_streams_from_a_checkpoint(shards, tmp_path):
    """6 steps across an epoch boundary (4 per epoch) against 3 steps, a checkpoint, and 3 more from it:
    the same keys, crops, synthetic LQ and real LQ at every step (degradations are seeded by step)."""
    whole = fit(shards, tmp_path / "whole", max_steps=2 * STEPS - 2, enable_checkpointing=False)
    assert len(whole.steps) == 6 and whole.val_keys == ["v0", "v1", "v2"]  # one validation, at the epoch end
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    first = fit(shards, tmp_path / "first", max_steps=3, callbacks=[checkpoint], limit_val_batches=0)
    (saved,) = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    state = torch.load(saved, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state == [{side: {"epoch": 0, "batches": 3, "steps": STEPS} for side in ("synthetic", "real")}]
    rest = fit(shards, tmp_path / "rest", max_steps=6, ckpt_path=str(saved), enable_checkpointing=False)
    assert first.steps + rest.steps == whole.steps
    assert len({json.dumps(step) for step in whole.steps}) == 6  # no step repeats another


# ---------------------------------------------------------------- two DDP processes


@pytest.mark.slow
def test_two_process_ddp_with_both_streams(tmp_path):
    """Two gloo processes, 4 steps each: no hang, both streams in every step, weights in sync, and
    for each stream the ranks' training crops (key + pixels) are disjoint (each rank draws its own)."""
    shard_dir = tmp_path / "shards"
    write_domain_shards(shard_dir)
    done = run_group(
        [sys.executable, "-m", "tests.datamodules.test_adaptation", str(shard_dir), str(tmp_path / "out")],
        cwd=REPO,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="offline"),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"out/rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [len(r["steps"]) for r in ranks] == [STEPS, STEPS]
    for stream, image in (("keys", "gt"), ("real_keys", "real_lq")):
        crops = [{(k, d) for s in r["steps"] for k, d in zip(s[stream], s[image])} for r in ranks]
        assert len(crops[0]) == len(crops[1]) == 2 * STEPS  # batches of 2, no crop drawn twice on a rank
        assert not crops[0] & crops[1]
    assert all(k.startswith("r") for r in ranks for s in r["steps"] for k in s["real_keys"])
    assert ranks[0]["weight"] == ranks[1]["weight"] != 0.0  # gradients all-reduced


def ddp_probe(shard_dir: Path, out: Path) -> None:
    """The DDP run of the test above (this module run as a script): record per rank, write JSON."""
    torch.set_num_threads(1)
    names = {"clean": str(shard_dir / "clean-{0..1}.tar"), "real": str(shard_dir / "real-{0..1}.tar")}
    datamodule = adaptation(names, "lq_only")
    datamodule.real.batch_size = 2
    model = StreamRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=out,
    )
    trainer.fit(model, datamodule=datamodule)
    out.mkdir(parents=True, exist_ok=True)
    record = {"world": trainer.world_size, "steps": model.steps, "weight": float(model.weight)}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    ddp_probe(Path(sys.argv[1]), Path(sys.argv[2]))
    release_process_group()  # as the command line does: a gloo group left to the exit can abort it


def test_the_combined_batch_counts_the_samples_both_streams_skipped():
    """n_skipped (what the run logs) is the two streams' sum; real_n_skipped keeps the real share."""
    synthetic = [{"gt": torch.zeros(1), "n_skipped": torch.tensor(n)} for n in (0, 2, 5)]
    real = [{"lq": torch.ones(1), "n_skipped": torch.tensor(n)} for n in (1, 1, 7)]
    batches = list(DomainStreams(synthetic, real, "real_"))
    assert [int(b["n_skipped"]) for b in batches] == [1, 3, 12]
    assert [int(b["real_n_skipped"]) for b in batches] == [1, 1, 7]
    assert all(set(b) == {"gt", "n_skipped", "real_lq", "real_n_skipped"} for b in batches)
