"""Deployment export (`ir_lightning.deploy`): the written TorchScript and ONNX graphs restore as `module.restore` at
the export's size and at other sizes and batch sizes; the refusals say what to export instead; a graph that fails
the parity check leaves no file behind."""

from __future__ import annotations

import json
import sys

import onnxruntime
import pytest
import torch

from ir_lightning import deploy
from ir_lightning.diffusion.deq import SolverSettings
from ir_lightning.errors import ConfigurationError
from ir_lightning.methods import RDDM, SR3, DenoisingAsAdaptation, DiffIRS1, DiffIRS2, RDDMSchedule, Sampling
from ir_lightning.nets.padding import pad_to_multiple
from ir_lightning.nets.rddm import TwoHeadUNet
from ir_lightning.nets.restorer import ResidualUNet
from tests.helpers.checkpoints import small_deqir
from tests.helpers.nets import TINY_UNET, tiny_diffir, tiny_two_unets, tiny_unet

EXAMPLE = (1, 3, 16, 16)
OTHER = (2, 3, 24, 20)
"""A batch and size the export never saw: 20 is no multiple of DiffIR's 8 nor of the restorer's 4."""


def diffir_s2() -> DiffIRS2:
    torch.manual_seed(0)
    return DiffIRS2(**tiny_diffir(scale=1), scale=1)


def adaptation() -> DenoisingAsAdaptation:
    torch.manual_seed(0)
    return DenoisingAsAdaptation(restorer=ResidualUNet(width=8, depth=3), diffusion=tiny_unet(9))


def rddm(**settings) -> RDDM:
    """RDDM's default objective (I_res and eps) from the one-U-Net layout (the smallest graph), 2 steps unrolled."""
    torch.manual_seed(0)
    settings = dict(sampling=Sampling(steps=2), schedule=RDDMSchedule(n_steps=50)) | settings
    return RDDM(net=TwoHeadUNet(**TINY_UNET), **settings)


BUILDERS = {"diffir_s2": diffir_s2, "adaptation": adaptation, "rddm": rddm}
EXPORTS = {"torchscript": deploy.export_torchscript, "onnx": deploy.export_onnx}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`exported(method, format) -> (module, report)`: each made once (built in training mode, as built) for the
    tests of this module."""
    made = {}

    def export(name: str, fmt: str) -> tuple[torch.nn.Module, deploy.ExportReport]:
        if (name, fmt) not in made:
            module, path = BUILDERS[name](), tmp_path_factory.mktemp(f"{name}_{fmt}") / f"model.{fmt}"
            made[name, fmt] = module, EXPORTS[fmt](module, path, random_image(EXAMPLE, seed=1))
        return made[name, fmt]

    return export


def random_image(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def run_file(path, fmt: str, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The written graph run here, independently of the export's own check."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path))(*inputs)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {spec.name: x.numpy() for spec, x in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feed)[0])


SLOW = pytest.mark.slow  # the ONNX exporter takes 2 to 4 s for these two graphs (their TorchScript about 1 s)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("diffir_s2", "torchscript"),
        pytest.param("diffir_s2", "onnx", marks=SLOW),
        ("adaptation", "torchscript"),
        ("adaptation", "onnx"),
        ("rddm", "torchscript"),
        pytest.param("rddm", "onnx", marks=SLOW),
    ],
)
def test_the_written_graph_restores_as_restore_at_other_sizes_and_batches(exported, name, fmt):
    module, report = exported(name, fmt)
    assert report.path.stat().st_size == report.n_bytes > 0
    assert list(report.path.parent.iterdir()) == [report.path]  # no temporary file left
    assert list(report.differences) == [(16, 16), (25, 21)]  # the example, then odd sides
    assert max(report.differences.values()) <= deploy.PARITY_TOLERANCE
    assert module.training  # the export put it back as it was
    lq = random_image(OTHER, seed=2)
    restored = run_file(report.path, fmt, deploy.graph_inputs(module, lq))
    assert restored.shape == OTHER
    assert (restored - module.restore(lq)).abs().max() <= deploy.PARITY_TOLERANCE
    assert 0.0 <= float(restored.min()) and float(restored.max()) <= 1.0  # clamped, as restore clamps


def test_rddm_graph_takes_the_start_noise_as_its_second_input(exported):
    """The noise is an input, not baked in: restore's noise gives restore's image, other noise another image."""
    module, report = exported("rddm", "torchscript")
    extra = {"ir_lightning.json": ""}
    graph = torch.jit.load(str(report.path), _extra_files=extra)
    assert json.loads(extra["ir_lightning.json"])["inputs"] == "lq, noise"
    lq = random_image(EXAMPLE, seed=3)
    noise = deploy.restore_noise(module, lq)
    assert noise.shape == lq.shape
    with torch.no_grad():
        same, other = graph(lq, noise), graph(lq, torch.randn(noise.shape))
    assert (same - module.restore(lq)).abs().max() <= deploy.PARITY_TOLERANCE
    assert (other - module.restore(lq)).abs().max() > 100 * deploy.PARITY_TOLERANCE


def test_refusals_name_what_to_export_instead(tmp_path):
    refused = {
        "sr3": SR3(net=tiny_unet(6), scale=2),
        "deqir": small_deqir(),
        "diffir_s1": DiffIRS1(**tiny_diffir(scale=1, stage=1), scale=1),
        "rddm_eta": rddm(sampling=Sampling(steps=2, eta=0.5)),
        "rddm_solver": rddm(sampling=Sampling(steps=2, solver=SolverSettings(method="anderson"))),
        "rddm_steps": rddm(sampling=Sampling(steps=deploy.MAX_UNROLLED_STEPS + 1)),
        "rddm_mask": RDDM(net=tiny_two_unets(in_channels=7), use_mask=True, schedule=RDDMSchedule(n_steps=50)),
    }
    says = {name: deploy.deployable(module) for name, module in refused.items()}
    assert "torch.onnx.export of module.net" in says["sr3"] and "ir_lightning.nets.unet.UNet" in says["sr3"]
    assert "100-step ddpm loop" in says["sr3"]
    assert "fixed-point" in says["deqir"] and "torch.onnx.export of module.net" in says["deqir"]
    assert (
        "ground truth" in says["diffir_s1"]
        and "DiffIRS2" in says["diffir_s1"]
        and "module.restorer" in says["diffir_s1"]
    )
    assert "sampling.eta: 0" in says["rddm_eta"]
    assert "sampling.solver.method: sequential" in says["rddm_solver"]
    assert f"at most {deploy.MAX_UNROLLED_STEPS}" in says["rddm_steps"]
    assert "mask" in says["rddm_mask"] and "module.net" in says["rddm_mask"]
    assert all("\n" not in line for line in says.values())
    assert deploy.deployable(diffir_s2()) is None and deploy.deployable(adaptation()) is None
    assert deploy.deployable(rddm()) is None
    with pytest.raises(ConfigurationError, match="export the network alone"):
        deploy.export_onnx(refused["sr3"], tmp_path / "sr3.onnx", torch.rand(1, 3, 8, 8))
    assert not any(tmp_path.iterdir())


def off_by(run, inputs):
    return run(*inputs) + 3e-4


def fails_at_other_sizes(run, inputs):
    if inputs[0].shape[-2:] != EXAMPLE[-2:]:
        raise RuntimeError("Sizes of tensors must match")
    return run(*inputs)


@pytest.mark.parametrize(
    ("fault", "message"),
    [(off_by, r"differs .* by up to 0\.0003"), (fails_at_other_sizes, r"fails at 25x21: RuntimeError: Sizes")],
    ids=["off_by_3e-4", "fails_at_other_sizes"],
)
def test_a_graph_that_fails_the_parity_check_is_deleted(tmp_path, monkeypatch, fault, message):
    load = deploy.LOADERS["torchscript"]

    def faulty(path):
        run = load(path)
        return lambda *inputs: fault(run, inputs)

    monkeypatch.setitem(deploy.LOADERS, "torchscript", faulty)
    with pytest.raises(deploy.ExportParityError, match=f"{message}.*the file was deleted"):
        deploy.export_torchscript(adaptation(), tmp_path / "model.pt", random_image(EXAMPLE, seed=1))
    assert not any(tmp_path.iterdir())


def test_padding_is_swapped_for_the_branch_free_one_only_while_tracing():
    for height, width, factor in [(16, 16, 8), (17, 13, 8), (9, 30, 4)]:
        x = torch.rand(1, 3, height, width)
        assert torch.equal(deploy.pad_always(x, factor), pad_to_multiple(x, factor))
    users = [sys.modules[name] for name in ("ir_lightning.nets.unet", "ir_lightning.methods.diffir")]
    with deploy.traceable_padding():
        assert all(module.pad_to_multiple is deploy.pad_always for module in users)
    assert all(module.pad_to_multiple is pad_to_multiple for module in users)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export's own, about its tree specs
def test_the_dynamo_exporter_gives_the_same_graph(tmp_path):
    """torch.onnx.export(dynamo=True), symbolic batch, H and W (about 8 s for this restorer)."""
    module = adaptation()
    report = deploy.export_onnx(module, tmp_path / "da.onnx", random_image((2, 3, 16, 16), seed=1), dynamo=True)
    assert max(report.differences.values()) <= deploy.PARITY_TOLERANCE
    lq = random_image(OTHER, seed=2)
    restored = run_file(tmp_path / "da.onnx", "onnx", (lq,))
    assert (restored - module.restore(lq)).abs().max() <= deploy.PARITY_TOLERANCE
