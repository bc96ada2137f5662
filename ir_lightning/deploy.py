"""Deployment export: a method's whole restoration as one graph (TorchScript or ONNX) that runs without the suite.

Exported are the methods whose `restore(lq)` is one fixed computation (`deployable` says which, and why not):

- DiffIR stage 2 (and its GAN variant): CPEN_S2 on the padded LQ, the prior's 4 reverse steps, the DIRformer,
  the crop and the clamp. The chain's start is the noise `restore` draws from `sample_seed`, drawn here once for
  up to `MAX_BATCH` images and stored in the graph (the first B rows are the draw for B images);
- Denoising as Adaptation: the restorer alone (D only shaped the training loss), its padding, crop and clamp;
- RDDM: the deterministic (eta = 0) sampler unrolled for `sampling.steps` steps. Its start I_T = I_in +
  beta_bar_T noise needs image-sized noise, which no graph draws as torch's seeded generator does: the graph
  takes it as a second input, `noise` (B x 3 x H x W at the output's size, standard normal), and
  `restore_noise(module, lq)` gives the one `restore` draws (with it the graph returns `restore`'s image).

A graph takes `lq` (B x 3 x H x W in [0, 1]; batch, H and W dynamic) and returns the restored image in [0, 1],
clamped as `restore` clamps. TorchScript comes from `torch.jit.trace` (frozen), which records sizes as graph
values; ONNX from torch's TorchScript-based exporter (`dynamo=False`, the same trace; `dynamo=True` takes the
`torch.export` one, same graph, many times slower). The suite pads with `pad_to_multiple`, whose `if` (pad only
when needed) a tracer would freeze at the example's size: while tracing, `traceable_padding` swaps in
`pad_always`, the same function without the branch (it pads by 0 where nothing is needed).

Every export is written atomically, then checked: the written file (`torch.jit.load`; onnxruntime's CPU
provider) restores the example and an image of another size, and must agree with `module.restore` to
`PARITY_TOLERANCE`; otherwise the file is deleted and `ExportParityError` gives the largest difference. Exports
run on the CPU (the stored start noise is the CPU generator's; a traced TorchScript graph keeps the CPU as the
device of its constants, ONNX has none). No Lightning import here at module level: the methods are imported
where they are inspected.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ir_lightning.errors import ConfigurationError
from ir_lightning.io.atomic import atomic_write_bytes
from ir_lightning.nets import padding

PARITY_TOLERANCE = 1e-4
"""Largest absolute difference (images in [0, 1]) allowed between an exported graph and `module.restore`."""

DEFAULT_OPSET = 18
"""ONNX opset of `export_onnx` (onnxruntime 1.14 and later run it)."""

MAX_BATCH = 16
"""Images per batch a DiffIR graph takes: it stores the start noise `restore` draws for this many."""

MAX_UNROLLED_STEPS = 10
"""Most RDDM sampling steps unrolled into one graph (the paper restores in 2 to 5)."""

CHECK_OFFSET = (9, 5)
"""The parity check's second image is the example's size plus this (odd: for an even example no side is a
multiple of 2, so every padding in the graph runs)."""

Run = Callable[..., Tensor]
"""An exported graph loaded for the parity check: `run(*inputs) -> restored`."""


class ExportParityError(ConfigurationError):
    """An exported graph restores differently from `module.restore` (beyond `PARITY_TOLERANCE`); its file was
    deleted. One line on the command line, as a refused setting."""


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how it checked: the file, its format and exporter, its size in bytes, the
    seconds the whole export took (trace, write, check), the graph's inputs, and the largest difference from
    `module.restore` at each checked size (H, W)."""

    path: Path
    format: str
    exporter: str
    n_bytes: int
    seconds: float
    inputs: tuple[str, ...]
    differences: dict[tuple[int, int], float]

    def lines(self) -> list[str]:
        checks = ", ".join(f"{h}x{w} {d:.1e}" for (h, w), d in self.differences.items())
        return [
            f"{self.path}: {self.format} by {self.exporter}, {self.n_bytes / 2**20:.1f} MiB in {self.seconds:.1f} s; "
            f"inputs {', '.join(self.inputs)}",
            f"largest difference from restore: {checks} (allowed {PARITY_TOLERANCE:g})",
        ]


# --- which methods export ---------------------------------------------------------------------------------------
def deployable(module: nn.Module) -> str | None:
    """None when `module.restore(lq)` exports as one graph; else one line saying why not and what to export instead."""
    from ir_lightning.methods import RDDM, SR3, DenoisingAsAdaptation, DeqIR, DiffIRS1, DiffIRS2

    if getattr(module, "color_fix", "none") != "none" or getattr(module, "consistency", None) is not None:
        return (
            f"the checkpoint post-processes its restorations (color_fix {module.color_fix}, consistency "
            f"{module.consistency}), which the graph would leave out: export with --set color_fix=none "
            "--set consistency=none and run ir_lightning.inference.postprocess on the graph's output"
        )
    if isinstance(module, (DiffIRS2, DenoisingAsAdaptation)):
        return None
    if isinstance(module, RDDM):
        return _rddm_refusal(module)
    if isinstance(module, DiffIRS1):
        return (
            "DiffIR stage 1 restores with the ground truth's prior (it is stage 2's teacher): export a stage-2 "
            f"(DiffIRS2) checkpoint, or the DIRformer alone: {_class_name(module.restorer)} via torch.onnx.export "
            "of module.restorer (inputs lq and the 256-number IPR)"
        )
    if isinstance(module, SR3):
        sampling = module.sampling
        return (
            f"SR3 restores with a {sampling.steps}-step {sampling.sampler} loop from image-sized noise, not one "
            f"graph: export the network alone: {_class_name(module.net)} via torch.onnx.export of module.net "
            "(inputs concat([upsampled lq, y_t]) and the noise level), and run the sampler around it"
        )
    if isinstance(module, DeqIR):
        return (
            "DeqIR restores by a fixed-point solve over its whole sampling chain, not one graph: export the prior "
            f"alone: {_class_name(module.net)} via torch.onnx.export of module.net (inputs x_t and the noise level)"
        )
    return f"{type(module).__name__} has no deployment export: export its network alone with torch.onnx.export"


def _rddm_refusal(module: nn.Module) -> str | None:
    sampling, net = module.sampling, _class_name(module.net)
    if module.use_mask or module.generation:
        what = "a mask input (shadow removal)" if module.use_mask else "generation (I_in = 0)"
        return (
            f"RDDM with {what} has no deployment export: export the network alone: {net} via torch.onnx.export "
            "of module.net"
        )
    if sampling.parallel:
        return (
            f"RDDM's solver {sampling.solver.method} solves the chain as one fixed point: export with "
            "sampling.solver.method: sequential (the same chain, step after step)"
        )
    if sampling.eta != 0:
        return f"RDDM with sampling.eta {sampling.eta} draws noise at every step: export with sampling.eta: 0"
    if sampling.steps > MAX_UNROLLED_STEPS:
        return (
            f"RDDM with {sampling.steps} sampling steps: at most {MAX_UNROLLED_STEPS} unroll into one graph; set "
            f"sampling.steps lower, or export the network alone: {net} via torch.onnx.export of module.net"
        )
    return None


def _class_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


# --- the graphs -------------------------------------------------------------------------------------------------
def pad_always(x: Tensor, factor: int) -> Tensor:
    """`pad_to_multiple` without its branch: pads H and W (reflect, bottom and right) by (-size) mod `factor`, 0
    included, so that a tracer records the amounts as functions of the size."""
    height, width = x.shape[-2:]
    return F.pad(x, (0, (-width) % factor, 0, (-height) % factor), mode="reflect")


@contextlib.contextmanager
def traceable_padding() -> Iterator[None]:
    """Within the block, every module of the suite that calls `pad_to_multiple` calls `pad_always` instead."""
    original = padding.pad_to_multiple
    users = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("ir_lightning.") and getattr(module, "pad_to_multiple", None) is original
    ]
    for module in users:
        module.pad_to_multiple = pad_always
    try:
        yield
    finally:
        for module in users:
            module.pad_to_multiple = original


class DiffIRGraph(nn.Module):
    """`DiffIRS2.restoration` with the start of the prior's chain stored (`diffir_start_noise`)."""

    def __init__(self, method: nn.Module, max_batch: int = MAX_BATCH) -> None:
        super().__init__()
        self.restorer, self.cpen_s2, self.denoiser = method.restorer, method.cpen_s2, method.denoiser
        self.__dict__["method"] = method  # not a submodule: the teacher and the metrics stay out of the graph
        self.register_buffer("start", diffir_start_noise(method, max_batch))

    def forward(self, lq: Tensor) -> Tensor:
        method = self.method
        padded, _ = method.padded(lq)
        ipr = method.predict_ipr(padded, start=self.start[: lq.shape[0]])
        return method.cropped(self.restorer(padded, ipr), None, lq)


def diffir_start_noise(method: nn.Module, max_batch: int) -> Tensor:
    """The start z_{T-1} that `DiffIRS2.restoration` draws on the CPU for `max_batch` images; its first B rows are
    the draw for B images (torch's CPU normal draws come in blocks of 16 numbers: checked for every B)."""
    with torch.no_grad():
        width = method.cpen_s2(torch.zeros(1, 3, method.multiple, method.multiple)).shape[1]

    def drawn(batch: int) -> Tensor:
        return torch.randn(batch, width, generator=torch.Generator().manual_seed(method.sample_seed))

    full = drawn(max_batch)
    if not all(torch.equal(drawn(batch), full[:batch]) for batch in range(1, max_batch)):
        raise ConfigurationError(f"DiffIR's start noise of {width} numbers per image changes with the batch size")
    return full


class AdaptationGraph(nn.Module):
    """`DenoisingAsAdaptation.restoration`: the restorer alone."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.restorer = method.restorer
        self.__dict__["method"] = method  # D, where the checkpoint still holds it, stays out of the graph

    def forward(self, lq: Tensor) -> Tensor:
        return self.method.restoration(lq).image


class RDDMGraph(nn.Module):
    """`RDDM.restoration` with the sequential eta = 0 sampler and the start's `noise` an input."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.net = method.net
        self.__dict__["method"] = method

    def forward(self, lq: Tensor, noise: Tensor) -> Tensor:
        from ir_lightning.diffusion.ranges import to_unit
        from ir_lightning.diffusion.rddm import sample

        method = self.method
        i_in = method.input_image({"lq": lq}, noise)  # upsampled to the noise's (the output's) size
        out = sample(method.predictor(i_in, None), i_in, method.schedule, method.sampling.steps, noise=noise)
        return to_unit(out)


def restore_noise(module: nn.Module, lq: Tensor) -> Tensor:
    """The start noise `RDDM.restore(lq)` draws on the CPU (seeded by `sampling.seed`), B x 3 x (H scale) x
    (W scale): given to an RDDM graph as `noise`, the graph returns `restore`'s image."""
    generator = torch.Generator().manual_seed(module.sampling.seed)
    size = (lq.shape[-2] * module.scale, lq.shape[-1] * module.scale)
    return torch.randn(lq.shape[0], 3, *size, generator=generator, dtype=lq.dtype)


def deploy_graph(module: nn.Module) -> nn.Module:
    """The module (in eval mode) computing `module.restore`; ConfigurationError with the refusal otherwise."""
    from ir_lightning.methods import RDDM, DiffIRS2

    refusal = deployable(module)
    if refusal is not None:
        raise ConfigurationError(refusal)
    if any(p.device.type != "cpu" for p in module.parameters()):
        raise ConfigurationError("the deployment export runs on the CPU: move the method there first (module.cpu())")
    if isinstance(module, DiffIRS2):
        return DiffIRGraph(module).eval()
    if isinstance(module, RDDM):
        return RDDMGraph(module).eval()
    return AdaptationGraph(module).eval()


def input_names(module: nn.Module) -> tuple[str, ...]:
    """The graph's inputs: ("lq",), or ("lq", "noise") for RDDM."""
    from ir_lightning.methods import RDDM

    return ("lq", "noise") if isinstance(module, RDDM) else ("lq",)


def graph_inputs(module: nn.Module, lq: Tensor) -> tuple[Tensor, ...]:
    """The inputs with which `module`'s graph restores `lq` as `module.restore(lq)` does."""
    return (lq, restore_noise(module, lq)) if "noise" in input_names(module) else (lq,)


# --- export and check -------------------------------------------------------------------------------------------
def export_torchscript(
    module: nn.Module, path: str | Path, example: Tensor, *, check_size: tuple[int, int] | None = None
) -> ExportReport:
    """Write `module`'s restoration (`deploy_graph`) as TorchScript to `path`, traced with `example` (B x 3 x H x W
    in [0, 1]) and frozen, atomically; then check it (`check_parity`, `check_size` its second size)."""

    def build(graph: nn.Module, inputs: tuple[Tensor, ...]) -> bytes:
        # frozen: what the trace computed from constants (the schedule's length) is folded; unfrozen, the
        # interpreter without optimisations (torch.jit.optimized_execution(False)) mistypes it and fails
        traced = torch.jit.freeze(torch.jit.trace(graph, inputs, check_trace=False))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"ir_lightning.json": json.dumps(graph_metadata(module))})
        return buffer.getvalue()

    return _export(module, Path(path), example, "torchscript", "torch.jit.trace", build, check_size)


def export_onnx(
    module: nn.Module,
    path: str | Path,
    example: Tensor,
    opset: int = DEFAULT_OPSET,
    *,
    dynamo: bool = False,
    check_size: tuple[int, int] | None = None,
) -> ExportReport:
    """Write `module`'s restoration (`deploy_graph`) as ONNX at `opset` to `path`, batch, H and W dynamic,
    atomically; then check it with onnxruntime (`check_parity`, `check_size` its second size).

    `dynamo=False` (default): torch's TorchScript-based exporter, which traces as `export_torchscript` does
    (deprecated by torch, seconds). `dynamo=True`: the `torch.export`-based one with `Dim`s for batch, H and W:
    the same graph, tens of times slower (a minute for a tiny RDDM); give it an example batch of 2 or more, as
    torch.export specialises a dimension of size 1."""

    def build(graph: nn.Module, inputs: tuple[Tensor, ...]) -> bytes:
        import onnx  # an optional dependency: only this export needs it

        names = list(input_names(module))
        if dynamo:
            proto = torch.onnx.export(
                graph,
                inputs,
                dynamo=True,
                opset_version=opset,
                input_names=names,
                output_names=["restored"],
                dynamic_shapes=tuple(_symbolic_dims() for _ in inputs),
                verbose=False,
            ).model_proto
        else:
            buffer = io.BytesIO()
            axes = {0: "batch", 2: "height", 3: "width"}
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
                torch.onnx.export(
                    graph,
                    inputs,
                    buffer,
                    dynamo=False,
                    opset_version=opset,
                    input_names=names,
                    output_names=["restored"],
                    dynamic_axes={name: axes for name in [*names, "restored"]},
                )
            proto = onnx.load_from_string(buffer.getvalue())
        onnx.helper.set_model_props(proto, {key: str(value) for key, value in graph_metadata(module).items()})
        return proto.SerializeToString()

    exporter = f"torch.onnx.export(dynamo={dynamo}) at opset {opset}"
    return _export(module, Path(path), example, "onnx", exporter, build, check_size)


def _symbolic_dims() -> dict[int, Any]:
    """torch.export's dynamic dimensions of an input: batch (up to `MAX_BATCH`), H and W."""
    dim = torch.export.Dim
    return {0: dim("batch", max=MAX_BATCH), 2: dim.DYNAMIC, 3: dim.DYNAMIC}


def graph_metadata(module: nn.Module) -> dict[str, Any]:
    """What a graph file records about itself (ONNX metadata_props, TorchScript extra file `ir_lightning.json`)."""
    meta: dict[str, Any] = {
        "method": _class_name(module),
        "inputs": ", ".join(input_names(module)),
        "range": "[0, 1]",
        "parity_tolerance": PARITY_TOLERANCE,
    }
    if "noise" in input_names(module):
        meta["noise"] = (
            f"standard normal, B x 3 x H x W at the output's size; restore draws it with seed {module.sampling.seed}"
        )
    return meta


def _export(
    module: nn.Module,
    path: Path,
    example: Tensor,
    fmt: str,
    exporter: str,
    build: Callable[[nn.Module, tuple[Tensor, ...]], bytes],
    check_size: tuple[int, int] | None,
) -> ExportReport:
    """Build the graph's bytes, write them atomically to `path`, check the file; restores `module`'s mode."""
    started, training = time.perf_counter(), module.training
    try:
        graph = deploy_graph(module.eval())
        with torch.no_grad(), traceable_padding(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the parity check below is the arbiter
            data = build(graph, graph_inputs(module, example))
        atomic_write_bytes(path, data)
        differences = check_parity(module, path, fmt, example, check_size)
    finally:
        module.train(training)
    seconds = time.perf_counter() - started
    return ExportReport(path, fmt, exporter, len(data), seconds, input_names(module), differences)


def load_torchscript(path: Path) -> Run:
    """The TorchScript graph at `path`, loaded onto the CPU."""
    graph = torch.jit.load(str(path), map_location="cpu")

    def run(*inputs: Tensor) -> Tensor:
        with torch.no_grad():
            return graph(*inputs)

    return run


def load_onnx(path: Path) -> Run:
    """The ONNX graph at `path` in an onnxruntime session on the CPU provider."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [spec.name for spec in session.get_inputs()]

    def run(*inputs: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy() for name, x in zip(names, inputs)})[0])

    return run


LOADERS: dict[str, Callable[[Path], Run]] = {"torchscript": load_torchscript, "onnx": load_onnx}
"""How the parity check loads a written file, by format."""


def check_parity(
    module: nn.Module, path: Path, fmt: str, example: Tensor, check_size: tuple[int, int] | None = None
) -> dict[tuple[int, int], float]:
    """The largest difference between the graph at `path` and `module.restore`, on `example` and on a random image
    of `check_size` (default: the example's size plus `CHECK_OFFSET`), by (H, W). Deletes the file and raises
    `ExportParityError` when one exceeds `PARITY_TOLERANCE`, when the shapes differ, or when the graph fails to
    load or to run."""
    height, width = example.shape[-2:]
    size = tuple(check_size) if check_size is not None else (height + CHECK_OFFSET[0], width + CHECK_OFFSET[1])
    other = torch.rand(*example.shape[:2], *size, generator=torch.Generator().manual_seed(0), dtype=example.dtype)
    differences: dict[tuple[int, int], float] = {}
    where = "to load"
    try:
        run = LOADERS[fmt](path)
        for lq in (example, other):
            where = "at {}x{}".format(*lq.shape[-2:])
            expected, found = module.restore(lq), run(*graph_inputs(module, lq))
            fits = found.shape == expected.shape
            differences[tuple(lq.shape[-2:])] = float((found - expected).abs().max()) if fits else float("inf")
    except Exception as error:  # a graph that does not load or run at a size fails the check
        _refuse(path, f"the exported {fmt} graph fails {where}: {_first_line(error)}", error)
    worst = max(differences.values())
    if not worst <= PARITY_TOLERANCE:  # a NaN fails too
        checks = ", ".join(f"{h}x{w} {d:.3g}" for (h, w), d in differences.items())
        _refuse(
            path,
            f"the exported {fmt} graph differs from {type(module).__name__}.restore by up to {worst:.3g} "
            f"(allowed {PARITY_TOLERANCE:g}; {checks})",
        )
    return differences


def _refuse(path: Path, reason: str, cause: BaseException | None = None) -> NoReturn:
    path.unlink(missing_ok=True)
    raise ExportParityError(f"{path}: {reason}: the file was deleted") from cause


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"
