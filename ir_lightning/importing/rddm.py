"""RDDM's official repository (nachifur/RDDM @e597481): the `model-<milestone>.pt` files its `Trainer.save` writes.

A file is `{'step', 'model', 'opt0', 'opt1', 'ema', 'scaler'}` (`opt0` alone with one U-Net; `opt` in experiment 2):
`model` is the state dict of the diffusion wrapper `ResidualDiffusion` (the network `UnetRes` under `model.` and
the 12 schedule buffers, `alpha_res` too in experiment 3), `ema` the state dict of ema-pytorch's `EMA` (`initted`,
`step`, `online_model.*` (a copy of `model`, absent in newer ema-pytorch), `ema_model.*` (the averaged wrapper)).
The EMA weights become the method's weights, the trained ones (`model`) its `trained_state_dict`.

The network is one of `ir_lightning.nets.rddm_official`'s layouts, read from the keys: `unet0.*` and `unet1.*` (two
U-Nets), `unet0.*` alone (one), `init_conv.*` with `ups_no_skip.*` (the shared encoder); its width, levels and input
channels from the shapes (3 input channels: generation; 6: I_t and I_in; 9: and the shadow mask). The attention has
4 heads (fixed in the official code; their width is read from the shapes); GroupNorm's 8 groups (every experiment
keeps the default) are not in the weights. The schedule buffers give the method's schedule (T, the DDIM conversion or
the linear shapes with sum_scale), each reproduced to float32 rounding, and T the network's `time_scale`.

The conditioning is read from the file too: experiment 0's code (and 5's) conditions the U-Nets on the coefficients
and hard-codes the DDIM conversion; experiment 2's (the shared encoder's only home) conditions on the step and has
no DDIM conversion; experiment 3's conditions on the step, with the DDIM conversion and AOSA's `alpha_res`. So the
DDIM conversion without `alpha_res` means coefficients (U-Net 0 on alpha_bar * T, U-Net 1 on beta_bar * T), anything
else the step (the official index t - 1 of the method's t).

The variant says the task (the experiment and its recipe); without one it is inferred from the keys:
- `generation` (experiment 0, partially path-independent generation: the released CelebA 64 model): unconditional
  (I_in = 0); recipe `rddm_generation`; inferred for 3 input channels.
- `derain` (experiment 2): recipe `rddm_derain`; inferred for 6 channels and two networks.
- `lowlight` (experiment 3, AOSA): the learnt `alpha_res` (> 0.5: residual) picks pred_res or pred_noise; recipe
  `rddm_lowlight`; inferred for 6 channels and one U-Net.
- `shadow` (experiment 2 with `input_condition=True`): the mask as an input; recipe `rddm_shadow`; inferred for 9
  channels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ir_lightning.diffusion.rddm import ResidualSchedule
from ir_lightning.importing.base import (
    WHOLE,
    Imported,
    ImportRefused,
    OfficialFormat,
    Parts,
    PrefixKeyMap,
    fitted_weights,
    indices,
    listed,
    meta_shapes,
    multiplier,
    shape_of,
    shortest_decimal,
    strip_prefix,
    tensors,
    with_prefix,
)
from ir_lightning.nets import rddm_official

NAME = "rddm"
METHOD = "ir_lightning.methods.RDDM"
NETWORK = "model."
EMA_WEIGHTS = "ema_model."
EMA_ONLINE = "online_model."
EMA_COUNTERS = ("initted", "step")
FILE_KEYS = ("step", "model", "opt", "opt0", "opt1", "ema", "scaler")
"""The entries `Trainer.save` writes (`opt` in experiment 2, `opt0`/`opt1` in the others)."""

BUFFER_NAMES = (
    "alphas",
    "alphas_cumsum",
    "one_minus_alphas_cumsum",
    "betas2",
    "betas",
    "betas2_cumsum",
    "betas_cumsum",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_mean_coef3",
    "posterior_variance",
    "posterior_log_variance_clipped",
)
"""The schedule buffers `ResidualDiffusion` registers."""
AOSA_WEIGHT = "alpha_res"
"""Experiment 3's learnt choice between residual (> 0.5) and noise prediction."""

HEADS = 4
"""Attention heads of every official U-Net (the defaults of `LinearAttention` and `Attention`, never changed)."""
GROUPS = 8
"""GroupNorm groups of every experiment (`resnet_block_groups` default)."""
SCHEDULE_TOLERANCE = 1e-6
"""Largest difference between a stored cumulative coefficient and ours (float32 rounding, and the official float32
cumulative product of the DDIM conversion: 1.5e-7 at T = 1000)."""
DEFAULT_STEPS = 1000
"""T of every experiment, for a file without schedule buffers."""


@dataclass(frozen=True)
class Experiment:
    """What an official experiment fixes that the weights do not show."""

    source: str
    recipe: str
    condition: str
    """What it conditions on; used for a file without schedule buffers (which would tell)."""
    generation: bool
    use_mask: bool
    channels: int
    """Input channels of its network."""


EXPERIMENTS = {
    "generation": Experiment(
        "experiments/0_Partially_path-independent_generation", "rddm_generation", "coefficients", True, False, 3
    ),
    "derain": Experiment(
        "experiments/2_Image_Restoration_deraing_raindrop_noise1", "rddm_derain", "t", False, False, 6
    ),
    "lowlight": Experiment(
        "experiments/3_AOSA_test_lol_timestep5_1e-2_reinit_weight", "rddm_lowlight", "t", False, False, 6
    ),
    "shadow": Experiment(
        "experiments/2_Image_Restoration_deraing_raindrop_noise1 (input_condition=True)",
        "rddm_shadow",
        "t",
        False,
        True,
        9,
    ),
}
VARIANTS = tuple(EXPERIMENTS)


# --- key names ---------------------------------------------------------------------------------------------------
RES_BLOCK: Parts = (
    ("mlp.1.", "film."),
    ("block1.proj.", "block1.conv."),
    ("block1.norm.", "block1.norm."),
    ("block2.proj.", "block2.conv."),
    ("block2.norm.", "block2.norm."),
    ("res_conv.", "skip."),
)
"""An official `ResnetBlock` -> our `ResBlock`."""
LINEAR_ATTENTION: Parts = (
    ("fn.norm.g", "norm.gain"),
    ("fn.fn.to_qkv.", "to_qkv."),
    ("fn.fn.to_out.0.", "to_out."),
    ("fn.fn.to_out.1.g", "out_norm.gain"),
)
"""An official `Residual(PreNorm(LinearAttention))` -> our `LinearAttention`."""
ATTENTION: Parts = (("fn.norm.g", "norm.gain"), ("fn.fn.to_qkv.", "to_qkv."), ("fn.fn.to_out.", "to_out."))
"""An official `Residual(PreNorm(Attention))` -> our `Attention`."""
UPSAMPLE: Parts = (("1.", "conv."),)
"""An official `Upsample` (nearest, conv) -> ours."""


@dataclass(frozen=True)
class DecoderNames:
    """The official names of one decoder: its levels, its final residual block and conv."""

    levels: str
    final_block: str
    final_conv: str


SKIP_DECODER = DecoderNames("ups", "final_res_block", "final_conv")
SHARED_RES_DECODER = DecoderNames("ups_no_skip", "final_res_block_1", "final_conv_1")
SHARED_NOISE_DECODER = DecoderNames("ups", "final_res_block_2", "final_conv_2")


class KeyMap(PrefixKeyMap):
    """Official network keys <-> ours for `n_levels` levels: a `Layout.key_map` lists its U-Nets, encoders and
    decoders."""

    def __init__(self, n_levels: int) -> None:
        super().__init__()
        self.n_levels = n_levels

    def encoder(self, official: str, ours: str) -> None:
        self.module(f"{official}init_conv.", f"{ours}init_conv.")
        self.module(f"{official}time_mlp.1.", f"{ours}time_embedding.mlp.0.")
        self.module(f"{official}time_mlp.3.", f"{ours}time_embedding.mlp.2.")
        for i in range(self.n_levels):
            self.level(f"{official}downs.{i}.", f"{ours}levels.{i}.", WHOLE)
        self.module(f"{official}mid_block1.", f"{ours}mid_block1.", RES_BLOCK)
        self.module(f"{official}mid_attn.", f"{ours}mid_attn.", ATTENTION)
        self.module(f"{official}mid_block2.", f"{ours}mid_block2.", RES_BLOCK)

    def decoder(self, official: str, names: DecoderNames, ours: str) -> None:
        for i in range(self.n_levels):
            resample = WHOLE if i == self.n_levels - 1 else UPSAMPLE
            self.level(f"{official}{names.levels}.{i}.", f"{ours}levels.{i}.", resample)
        self.module(f"{official}{names.final_block}.", f"{ours}final_block.", RES_BLOCK)
        self.module(f"{official}{names.final_conv}.", f"{ours}final_conv.")

    def level(self, official: str, ours: str, resample: Parts) -> None:
        self.module(f"{official}0.", f"{ours}block1.", RES_BLOCK)
        self.module(f"{official}1.", f"{ours}block2.", RES_BLOCK)
        self.module(f"{official}2.", f"{ours}attn.", LINEAR_ATTENTION)
        self.module(f"{official}3.", f"{ours}resample.", resample)

    def unet(self, official: str, ours: str) -> None:
        self.encoder(official, f"{ours}encoder.")
        self.decoder(official, SKIP_DECODER, f"{ours}decoder.")


# --- the layout, read from the keys and shapes -------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    kind: str  # "two", "single", "shared"
    first: str  # the official prefix of the (first) encoder: "unet0." or ""
    dim: int
    dim_mults: tuple[int, ...]
    dim_head: int
    in_channels: int
    image_channels: int

    @property
    def net_class(self) -> str:
        name = {"two": "OfficialTwoUNets", "single": "OfficialSingleUNet", "shared": "OfficialSharedEncoderUNet"}
        return f"ir_lightning.nets.rddm_official.{name[self.kind]}"

    def key_map(self) -> KeyMap:
        keys = KeyMap(len(self.dim_mults))
        if self.kind == "two":
            keys.unet("unet0.", "res_unet.")
            keys.unet("unet1.", "noise_unet.")
        elif self.kind == "single":
            keys.unet("unet0.", "unet.")
        else:
            keys.encoder("", "encoder.")
            keys.decoder("", SHARED_RES_DECODER, "res_decoder.")
            keys.decoder("", SHARED_NOISE_DECODER, "noise_decoder.")
        return keys

    def text(self) -> str:
        kind = {"two": "two U-Nets", "single": "one U-Net", "shared": "a shared encoder with two decoders"}
        return (
            f"{kind[self.kind]}, dim {self.dim}, dim_mults {list(self.dim_mults)}, {self.in_channels} input channels, "
            f"attention {HEADS} heads x {self.dim_head}"
        )


def layout_kind(net: Mapping[str, Tensor]) -> tuple[str, str]:
    if any(key.startswith("unet1.") for key in net):
        return "two", "unet0."
    if any(key.startswith("unet0.") for key in net):
        return "single", "unet0."
    if any(key.startswith("ups_no_skip.") for key in net):
        return "shared", ""
    raise ImportRefused(
        f"no official RDDM network under {NETWORK}: expected {NETWORK}unet0.*, {NETWORK}unet1.* or the shared "
        f"encoder's {NETWORK}init_conv.* and {NETWORK}ups_no_skip.*; found {listed([NETWORK + k for k in net])}"
    )


net_shape = partial(shape_of, prefix=NETWORK, missing="not the official RDDM network")
"""`shape_of` for the network's keys (stripped of `model.`)."""


def read_layout(net: Mapping[str, Tensor]) -> Layout:
    kind, first = layout_kind(net)
    dim, in_channels = net_shape(net, f"{first}init_conv.weight", 4)[:2]
    levels = indices(net, rf"{re.escape(first)}downs\.(\d+)\.")
    if not levels or levels != list(range(len(levels))):
        raise ImportRefused(f"the levels {NETWORK}{first}downs.* are {levels}: expected 0, 1, ...")
    mults = []
    for i in levels:
        width = net_shape(net, f"{first}downs.{i}.3.weight", 4)[0]
        mults.append(multiplier(width, dim, f"{NETWORK}{first}downs.{i}.3.weight"))
    hidden = net_shape(net, f"{first}downs.0.2.fn.fn.to_qkv.weight", 4)[0] // 3
    if hidden % HEADS:
        raise ImportRefused(f"{NETWORK}{first}downs.0.2.fn.fn.to_qkv.weight: width {hidden} not {HEADS} heads wide")
    final = "final_conv_2" if kind == "shared" else "final_conv"
    image_channels = net_shape(net, f"{first}{final}.weight", 4)[0]
    if in_channels % image_channels or not 1 <= in_channels // image_channels <= 3:
        raise ImportRefused(
            f"{NETWORK}{first}init_conv.weight: {in_channels} input channels for {image_channels}-channel images; "
            "the official network sees 1 (generation), 2 (with I_in) or 3 (with the mask) images"
        )
    return Layout(kind, first, dim, tuple(mults), hidden // HEADS, in_channels, image_channels)


def to_our_keys(net: Mapping[str, Tensor], layout: Layout, init_args: dict[str, Any], what: str) -> dict[str, Tensor]:
    """The network's weights under our keys (the LayerNorm gains flattened), after checking every key and shape
    against our network built on the meta device; a refusal names the official keys."""
    keys = layout.key_map()
    expected = meta_shapes(rddm_official_class(layout), init_args)
    ours = keys.translation(net)
    flattened = {key: gain_flattened(value, expected.get(ours[key] or "")) for key, value in net.items()}
    network = f"the official network ({layout.text()})"
    return fitted_weights(flattened, ours, expected, network, prefix=NETWORK, official=keys.official, where=what)


def gain_flattened(value: Tensor, shape: torch.Size | None) -> Tensor:
    """The official LayerNorm gain (1, C, 1, 1) as ours (C,) where our key's `shape` is (C,); other tensors (and
    those of keys we do not have, `shape` None) as they are. A gain of another width keeps its shape, and the shape
    check names it."""
    if shape is not None and len(shape) == 1 and value.shape == (1, shape[0], 1, 1):
        return value.reshape(shape)
    return value


def rddm_official_class(layout: Layout) -> type:
    return getattr(rddm_official, layout.net_class.rsplit(".", 1)[-1])


# --- the schedule -------------------------------------------------------------------------------------------------
def fits(schedule: ResidualSchedule, alphas_cumsum: Tensor, betas2_cumsum: Tensor) -> bool:
    ours_a, ours_b2 = schedule.alpha_bar[1:], schedule.beta_bar[1:] ** 2  # official index k = our t - 1
    return bool(
        ((ours_a - alphas_cumsum.double()).abs() <= SCHEDULE_TOLERANCE).all()
        and ((ours_b2 - betas2_cumsum.double()).abs() <= SCHEDULE_TOLERANCE).all()
    )


def read_schedule(state: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """The method's `schedule` setting that reproduces the buffers, None without buffers, or a refusal."""
    if "alphas_cumsum" not in state or "betas2_cumsum" not in state:
        return None
    alphas_cumsum, betas2_cumsum = state["alphas_cumsum"], state["betas2_cumsum"]
    if alphas_cumsum.ndim != 1 or alphas_cumsum.shape != betas2_cumsum.shape or alphas_cumsum.numel() < 2:
        raise ImportRefused(
            f"schedule buffers alphas_cumsum {tuple(alphas_cumsum.shape)} and betas2_cumsum "
            f"{tuple(betas2_cumsum.shape)}: expected two vectors of T >= 2 entries"
        )
    n_steps = alphas_cumsum.numel()
    if fits(ResidualSchedule.convert_to_ddim(n_steps), alphas_cumsum, betas2_cumsum):
        return linear_schedule(n_steps, 1.0) | {"convert_to_ddim": True}
    sum_scale = shortest_decimal(float(betas2_cumsum[-1]), torch.float32)  # float32 in the official files
    if fits(ResidualSchedule.make(n_steps, sum_scale=sum_scale), alphas_cumsum, betas2_cumsum):
        return linear_schedule(n_steps, sum_scale)
    raise ImportRefused(
        "the schedule buffers alphas_cumsum and betas2_cumsum are neither the DDIM conversion nor alpha decreasing "
        "with beta^2 increasing linearly (the later linspace(0, 1)**ratio shapes of experiments 3-6 are not "
        "reproduced by the method)"
    )


def linear_schedule(n_steps: int, sum_scale: float) -> dict[str, Any]:
    return {
        "n_steps": n_steps,
        "alpha_shape": "decreased",
        "alpha_ratio": 1.0,
        "beta2_shape": "increased",
        "beta2_ratio": 1.0,
        "sum_scale": sum_scale,
        "convert_to_ddim": False,
    }


def schedule_text(schedule: dict[str, Any]) -> str:
    if schedule["convert_to_ddim"]:
        return f"the DDIM conversion (linear beta 1e-4 .. 0.02), T = {schedule['n_steps']}"
    return (
        f"alpha decreasing, beta^2 increasing (linear), sum_scale {schedule['sum_scale']:g}, T = {schedule['n_steps']}"
    )


# --- the file ---------------------------------------------------------------------------------------------------
def detect(obj: Any) -> bool:
    """A `model-*.pt` of the official Trainer: a `model` state dict with the schedule buffers and an RDDM network."""
    try:
        model = obj.get("model") if isinstance(obj, Mapping) else None
        if not isinstance(model, Mapping) or "alphas_cumsum" not in model:
            return False
        return any(str(key).startswith((f"{NETWORK}unet0.", f"{NETWORK}ups_no_skip.")) for key in model)
    except Exception:  # noqa: BLE001 - detect never raises
        return False


def split_wrapper(state: Mapping[str, Tensor], what: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A `ResidualDiffusion` state dict -> (the network's weights, the other entries), refusing unknown entries."""
    net = strip_prefix(state, NETWORK)
    others = {key: value for key, value in state.items() if not key.startswith(NETWORK)}
    unknown = [key for key in others if key not in BUFFER_NAMES and key != AOSA_WEIGHT]
    if unknown:
        raise ImportRefused(f"{what}: entries neither under {NETWORK} nor schedule buffers: {listed(unknown)}")
    if not net:
        raise ImportRefused(f"{what}: no network weights under {NETWORK}")
    return net, others


def ema_wrapper(obj: Mapping[str, Any], report: list[str]) -> dict[str, Tensor] | None:
    """The EMA's `ResidualDiffusion` state dict (None where the file has no EMA)."""
    if obj.get("ema") is None:
        report.append("no EMA in the file: the trained weights (model) are the weights")
        return None
    ema = tensors(obj["ema"], "ema")
    unknown = [k for k in ema if k not in EMA_COUNTERS and not k.startswith((EMA_WEIGHTS, EMA_ONLINE))]
    if unknown:
        raise ImportRefused(f"ema: entries that are not ema-pytorch's: {listed(unknown)}")
    weights = strip_prefix(ema, EMA_WEIGHTS)
    if not weights:
        raise ImportRefused(f"ema: no averaged weights ({EMA_WEIGHTS}*)")
    step = f" (EMA step {int(ema['step'])})" if "step" in ema and ema["step"].numel() == 1 else ""
    online = ", ema.online_model.* (a copy of model)" if any(k.startswith(EMA_ONLINE) for k in ema) else ""
    report.append(
        f"weights: the EMA's ema.{EMA_WEIGHTS}*{step}; trained_state_dict (restore --no-ema): model.*; dropped: "
        f"the optimizer and AMP states{online}"
    )
    return weights


def choose_experiment(layout: Layout, state: Mapping[str, Tensor], variant: str | None, report: list[str]) -> str:
    if variant is not None and variant not in EXPERIMENTS:
        raise ImportRefused(f"unknown variant {variant!r}; {NAME} has {', '.join(VARIANTS)}")
    images = layout.in_channels // layout.image_channels
    if variant is None:
        by_images = {1: "generation", 3: "shadow"}
        lowlight = layout.kind == "single" or AOSA_WEIGHT in state
        variant = by_images.get(images, "lowlight" if lowlight else "derain")
        how = "inferred from the keys"
    else:
        how = "given"
    experiment = EXPERIMENTS[variant]
    if experiment.channels != images * layout.image_channels:
        raise ImportRefused(
            f"variant {variant}: its network sees {experiment.channels} input channels, the file's "
            f"{NETWORK}{layout.first}init_conv.weight has {layout.in_channels}"
        )
    report.append(f"variant {variant} ({how}): {experiment.source}, recipe {experiment.recipe}")
    return variant


def objective_of(layout: Layout, state: Mapping[str, Tensor], report: list[str]) -> str:
    if layout.kind != "single":
        return "pred_res_noise"
    if AOSA_WEIGHT in state:
        value = float(state[AOSA_WEIGHT].reshape(-1)[0])
        objective = "pred_res" if value > 0.5 else "pred_noise"
        report.append(f"{AOSA_WEIGHT} = {value:g}: AOSA chose {objective} (residual above 0.5, noise below)")
        return objective
    report.append(
        "one U-Net without AOSA's alpha_res: the file does not say what it predicts; pred_res assumed (set "
        "model.init_args.objective: pred_noise, and the network's coefficient: beta_bar, for a noise predictor)"
    )
    return "pred_res"


def conditioning(
    layout: Layout,
    state: Mapping[str, Tensor],
    schedule: dict[str, Any] | None,
    experiment: Experiment,
    report: list[str],
    given: bool = False,
) -> str:
    """The experiment's conditioning where a variant was `given`; else `coefficients` for the code of experiments 0
    and 5 (the only ones that condition on them; both hard-code the DDIM conversion), `t` for experiments 2 (no DDIM
    conversion, the shared encoder's only home) and 3 (the DDIM conversion, with AOSA's alpha_res); a file the buffers
    leave ambiguous (one U-Net on the DDIM schedule without alpha_res) is refused without a variant."""
    if layout.kind == "shared":
        report.append("conditioned on the step: the shared encoder is experiment 2's, which conditions on t")
        return "t"
    if schedule is None or given:
        why = "the variant given" if given else "the variant's experiment (no buffers to tell)"
        report.append(f"conditioned on {experiment.condition}: {why}")
        return experiment.condition
    if schedule["convert_to_ddim"] and AOSA_WEIGHT not in state and layout.kind == "single":
        raise ImportRefused(  # experiment 0's code with one U-Net (coefficients) or experiment 3's with a fixed
            # objective ([t, t]): the file cannot tell which, and the wrong one is another function
            "one U-Net on the DDIM schedule without AOSA's alpha_res: experiment 0's code conditions it on a "
            "coefficient, experiment 3's on t; give --variant (lowlight: experiment 3; generation: experiment 0)"
        )
    if schedule["convert_to_ddim"] and AOSA_WEIGHT not in state:
        report.append("conditioned on the coefficients: the DDIM conversion without AOSA is experiment 0's code")
        return "coefficients"
    why = "AOSA's alpha_res: experiment 3's code" if AOSA_WEIGHT in state else "no DDIM conversion: experiment 2's code"
    report.append(f"conditioned on the step ({why})")
    return "t"


def network_args(layout: Layout, condition: str, objective: str, schedule: dict[str, Any] | None) -> dict[str, Any]:
    images = layout.in_channels // layout.image_channels
    args: dict[str, Any] = {
        "dim": layout.dim,
        "dim_mults": list(layout.dim_mults),
        "resnet_block_groups": GROUPS,
        "heads": HEADS,
        "dim_head": layout.dim_head,
        "image_channels": layout.image_channels,
        "sees_input": images >= 2,
        "mask_input": images == 3,
        "time_scale": float(schedule["n_steps"] if schedule else DEFAULT_STEPS),
        "step_offset": -1.0,
    }
    if layout.kind != "shared":
        args["condition"] = condition
    if layout.kind == "single":
        args["coefficient"] = "beta_bar" if objective == "pred_noise" else "alpha_bar"
    return args


def convert(obj: Any, variant: str | None) -> Imported:
    if not isinstance(obj, Mapping) or "model" not in obj:
        keys = listed([str(k) for k in obj]) if isinstance(obj, Mapping) else type(obj).__name__
        raise ImportRefused(f"not a model-*.pt of RDDM's Trainer (step, model, opt0, ema, ...): got {keys}")
    report: list[str] = []
    trained_wrapper = tensors(obj["model"], "model")
    ema = ema_wrapper(obj, report)
    source = "ema.ema_model" if ema is not None else "model"
    net, others = split_wrapper(ema if ema is not None else trained_wrapper, source)
    trained_net, _ = split_wrapper(trained_wrapper, "model")
    layout = read_layout(net)
    experiment = EXPERIMENTS[choose_experiment(layout, others, variant, report)]
    schedule = read_schedule(others)
    objective = objective_of(layout, others, report)
    condition = conditioning(layout, others, schedule, experiment, report, given=variant is not None)
    init_args = network_args(layout, condition, objective, schedule)
    weights = to_our_keys(net, layout, init_args, source)
    settings: dict[str, Any] = {
        "objective": objective,
        "condition": condition,
        "generation": experiment.generation,
        "use_mask": experiment.use_mask,
    }
    if schedule is None:
        report.append(f"no schedule buffers in the file: the recipe's schedule is used (time_scale {DEFAULT_STEPS})")
    else:
        settings["schedule"] = schedule
        report.append(
            f"schedule from the buffers alphas_cumsum, betas2_cumsum: {schedule_text(schedule)} (reproduced to "
            f"{SCHEDULE_TOLERANCE:g}; the buffers are not kept, the method computes them)"
        )
    trained = to_our_keys(trained_net, layout, init_args, "model") if ema is not None else None
    return Imported(
        method=METHOD,
        networks={"net": {"class_path": layout.net_class, "init_args": init_args}},
        state_dict=with_prefix(weights, "net."),
        settings=settings,
        trained_state_dict=with_prefix(trained, "net.") if trained is not None else None,
        recipe=experiment.recipe,
        report=report + network_report(layout, init_args, experiment) + dropped_entries(obj),
    )


def network_report(layout: Layout, init_args: dict[str, Any], experiment: Experiment) -> list[str]:
    lines = [
        f"network {NETWORK}* -> net.* of {layout.net_class.rsplit('.', 1)[-1]}: {layout.text()}, read from the shapes",
        f"not in the weights: GroupNorm {GROUPS} groups (every experiment's default)",
    ]
    scale = init_args["time_scale"]
    if init_args.get("condition") == "coefficients":
        lines.append(
            f"the residual U-Net sees alpha_bar_t * {scale:g}, the noise U-Net beta_bar_t * {scale:g}; the official "
            "buffers are float32 (its DDIM conversion a float32 product), the method's float64: the times differ by "
            "up to 1.5e-4 at T = 1000"
        )
    else:
        lines.append(
            f"the network sees the official index t - 1 of the method's t (time_scale {scale:g}, step_offset -1)"
        )
    if experiment.generation:
        lines.append("unconditional generation: the network sees I_t alone (the method's I_in = 0 is dropped)")
    if experiment.use_mask:
        lines.append("the shadow mask: the method's one channel repeated to the official three")
    return lines


def dropped_entries(obj: Mapping[str, Any]) -> list[str]:
    others = [str(key) for key in obj if key not in ("model", "ema")]
    unknown = [key for key in others if key not in FILE_KEYS]
    lines = []
    if "step" in obj and isinstance(obj["step"], int):
        lines.append(f"trained for {obj['step']} steps")
    if unknown:
        lines.append(f"entries not of the official Trainer, left out: {', '.join(unknown)}")
    return lines


FORMATS = (
    OfficialFormat(
        name=NAME,
        source=(
            "nachifur/RDDM: results/model-<milestone>.pt of its Trainer (released: the partially path-independent "
            "generation model, two U-Nets, CelebA 64; restoration models trained with its experiments 2 and 3)"
        ),
        detect=detect,
        convert=convert,
        variants=VARIANTS,
    ),
)
