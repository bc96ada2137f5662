"""Janspiry's SR3 re-implementation (Image-Super-Resolution-via-Iterative-Refinement @01d27a7): its `*_gen.pth` files.

A `*_gen.pth` (`model/model.py` `save_network`) is the plain state dict of the diffusion wrapper
`GaussianDiffusion`: the network under `denoise_fn.` and the 12 schedule buffers that
`set_new_noise_schedule` registers (persistent, float32; `DDPM.__init__` sets the training schedule before
anything is saved, so released files hold them; a wrapper saved without a schedule has none, and then the
configuration's schedule is used). The network is `ir_lightning.nets.sr3_official.SR3ReferenceUNet`; its
layout (width, multipliers, blocks per level, attention levels, channels in and out) is read from the
shapes, and the buffers become the method's `train_schedule` after they are reproduced to their float32
rounding. GroupNorm's group count, dropout and the image size that places `attn_res` are not in the
weights: they come from the variant, the official configuration the file was released with.

- 6 input channels: super-resolution, `ir_lightning.methods.SR3` (x8 for both releases), recipe
  `sr3_16_128_faces` (variant `16_128`, `config/sr_sr3_16_128.json`, `I640000_E37_gen.pth`) or `sr3_64_512`
  (variant `64_512`, `config/sr_sr3_64_512.json`, `I830000_E32_gen.pth`);
- 3 input channels: the 128 px unconditional face model (`config/sample_sr3_128.json`), a prior for
  `ir_lightning.methods.DeqIR`, which calls its network as `net(x_t, sqrt(alpha_bar_t))` as this one was trained.

`*_opt.pth` (the optimizer state) and files of the repository's other network (`which_model_G: ddpm`,
`denoise_fn.time_mlp.*`, conditioned on the integer step) are refused with what to do instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ir_lightning.diffusion import gammas_from_betas, make_betas
from ir_lightning.importing.base import (
    DDPM_SCHEDULE_BUFFERS,
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
from ir_lightning.nets.sr3_official import SR3ReferenceUNet

NAME = "sr3-janspiry"
NETWORK = "denoise_fn."
NET_CLASS = f"{SR3ReferenceUNet.__module__}.{SR3ReferenceUNet.__qualname__}"
OPTIMIZER_FILE_KEYS = frozenset({"epoch", "iter", "scheduler", "optimizer"})
"""The keys of a `*_opt.pth` (`model/model.py` `save_network`)."""

POSTERIOR_VARIANCE_FLOOR = 1e-20
"""The official code takes the log of the posterior variance clipped below at this (it is 0 at t = 1)."""

SCHEDULE_KINDS = ("const", "linear", "quad", "cosine")
"""The suite's beta schedules, tried in this order (the official warmup10, warmup50 and jsd are not among them)."""

SCHEDULE_TOLERANCE = 1e-12
"""How far a stored schedule buffer may lie from ours, beyond the rounding of its dtype."""


@dataclass(frozen=True)
class Release:
    """An official configuration: what the weights do not say, and the published network to compare them with."""

    config: str
    method: str
    recipe: str
    scale: int | None
    norm_groups: int
    dropout: float
    image_size: int
    schedule: dict[str, Any]
    inner_channel: int
    channel_mults: tuple[int, ...]
    res_blocks: int
    attn_res: tuple[int, ...]


def noise_schedule(kind: str, n_steps: int, linear_start: float, linear_end: float) -> dict[str, Any]:
    """The method's `train_schedule` setting (`ir_lightning.methods.settings.NoiseSchedule`'s fields; the cosine
    schedule has no end points, so it leaves them out)."""
    if kind == "cosine":
        return {"kind": kind, "n_steps": n_steps}
    return {"kind": kind, "n_steps": n_steps, "linear_start": linear_start, "linear_end": linear_end}


OFFICIAL_SCHEDULE = noise_schedule("linear", 2000, 1e-6, 1e-2)
"""`beta_schedule.train` of all three released configurations."""

PUBLISHED_16_128 = dict(inner_channel=64, channel_mults=(1, 2, 4, 8, 8), res_blocks=2, attn_res=(16,))
"""The network of `config/sr_sr3_16_128.json` and `config/sample_sr3_128.json` (besides the input channels)."""

CONDITIONAL = {
    "16_128": Release(
        config="config/sr_sr3_16_128.json",
        method="ir_lightning.methods.SR3",
        recipe="sr3_16_128_faces",
        scale=8,
        norm_groups=32,  # absent from the config: the builder's default (model/networks.py:89-90)
        dropout=0.2,
        image_size=128,
        schedule=OFFICIAL_SCHEDULE,
        **PUBLISHED_16_128,
    ),
    "64_512": Release(
        config="config/sr_sr3_64_512.json",
        method="ir_lightning.methods.SR3",
        recipe="sr3_64_512",
        scale=8,
        norm_groups=16,
        dropout=0.0,
        image_size=512,
        schedule=OFFICIAL_SCHEDULE,
        inner_channel=64,
        channel_mults=(1, 2, 4, 8, 16),
        res_blocks=1,
        attn_res=(),
    ),
}
"""The super-resolution releases by variant; the first is the default."""

UNCONDITIONAL = Release(
    config="config/sample_sr3_128.json",
    method="ir_lightning.methods.DeqIR",
    recipe="deqir_faces64",
    scale=None,
    norm_groups=32,  # absent from the config: the builder's default
    dropout=0.2,
    image_size=128,
    schedule=OFFICIAL_SCHEDULE,
    **PUBLISHED_16_128,
)
"""The 128 px unconditional face model, a prior for DeqIR (its one recipe is the pairing; the prior's size is 128)."""

VARIANTS = tuple(CONDITIONAL)

RES_BLOCK_PARTS: Parts = (
    ("block1.block.0.", "norm1."),
    ("block1.block.3.", "conv1."),
    ("noise_func.noise_func.0.", "noise_bias."),
    ("block2.block.0.", "norm2."),
    ("block2.block.3.", "conv2."),
    ("res_conv.", "skip."),
)
"""An official `ResnetBlock` -> our `sr3_official.ResBlock`."""

ATTENTION_PARTS: Parts = (("norm.", "norm."), ("qkv.", "qkv."), ("out.", "proj."))
"""An official `SelfAttention` -> ours."""


# --- the schedule buffers ------------------------------------------------------------------------------------
def schedule_buffers(betas: Tensor) -> dict[str, Tensor]:
    """The wrapper's 12 buffers for betas beta_1..beta_T, float64, under the official names (`DDPM_SCHEDULE_BUFFERS`;
    gamma = alpha_bar)."""
    gammas = gammas_from_betas(betas)
    gammas_prev = torch.cat([gammas.new_ones(1), gammas[:-1]])
    # posterior q(y_{t-1} | y_t, y_0): variance beta_tilde and the mean's two coefficients (DDPM eq. 7)
    variance = betas * (1.0 - gammas_prev) / (1.0 - gammas)
    return {
        "betas": betas,
        "alphas_cumprod": gammas,
        "alphas_cumprod_prev": gammas_prev,
        "sqrt_alphas_cumprod": gammas.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - gammas).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - gammas).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / gammas).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / gammas - 1.0).sqrt(),
        "posterior_variance": variance,
        "posterior_log_variance_clipped": variance.clamp(min=POSTERIOR_VARIANCE_FLOOR).log(),
        "posterior_mean_coef1": betas * gammas_prev.sqrt() / (1.0 - gammas),
        "posterior_mean_coef2": (1.0 - gammas_prev) * (1.0 - betas).sqrt() / (1.0 - gammas),
    }


def misfit(schedule: dict[str, Any], buffers: Mapping[str, Tensor]) -> str | None:
    """None when `schedule` reproduces every buffer to SCHEDULE_TOLERANCE plus the rounding of the buffer's dtype
    (one ulp: float32 in the official files); else the first buffer that differs, and by how much."""
    ends = {key: value for key, value in schedule.items() if key.startswith("linear_")}
    expected = schedule_buffers(make_betas(schedule["kind"], schedule["n_steps"], **ends))
    for name, stored in buffers.items():
        if not stored.is_floating_point() or stored.shape != expected[name].shape:
            return f"{name!r} is {stored.dtype} {tuple(stored.shape)}, expected floats {tuple(expected[name].shape)}"
        difference = (stored.to(torch.float64) - expected[name]).abs().nan_to_num(float("inf"))
        bound = SCHEDULE_TOLERANCE + torch.finfo(stored.dtype).eps * expected[name].abs()
        if not bool((difference <= bound).all()):
            return f"{name!r} differs by up to {float(difference.max()):.3g}"
    return None


def identify_schedule(buffers: Mapping[str, Tensor]) -> dict[str, Any]:
    """The suite's schedule whose buffers these are (kind, T, end points read from `betas`), or a refusal naming
    the buffer that no kind reproduces."""
    betas = buffers["betas"]
    if betas.ndim != 1 or betas.numel() < 2:
        raise ImportRefused(f"schedule buffer 'betas' of shape {tuple(betas.shape)}: expected beta_1..beta_T, T >= 2")
    start, end = (shortest_decimal(float(betas[i]), betas.dtype) for i in (0, -1))
    misfits = []
    for kind in SCHEDULE_KINDS:
        schedule = noise_schedule(kind, betas.numel(), start, end)  # cosine ignores the end points
        problem = misfit(schedule, buffers)
        if problem is None:
            return schedule
        misfits.append(f"{kind}: {problem}")
    raise ImportRefused(
        "the schedule buffers are not a schedule of the suite (official warmup10, warmup50 and jsd are not "
        f"supported): {'; '.join(misfits)}"
    )


def read_schedule(state: Mapping[str, Tensor], release: Release, report: list[str]) -> dict[str, Any]:
    present = [name for name in DDPM_SCHEDULE_BUFFERS if name in state]
    if not present:
        report.append(
            f"no schedule buffers in the file (saved before `set_new_noise_schedule`): train_schedule is "
            f"{release.config}'s {schedule_text(release.schedule)}"
        )
        return release.schedule
    missing = [name for name in DDPM_SCHEDULE_BUFFERS if name not in state]
    if missing:
        raise ImportRefused(f"schedule buffers missing (the file has {len(present)} of 12): {listed(missing)}")
    schedule = identify_schedule({name: state[name] for name in DDPM_SCHEDULE_BUFFERS})
    report.append(
        f"the 12 schedule buffers ({', '.join(DDPM_SCHEDULE_BUFFERS[:2])}, ...) are train_schedule "
        f"{schedule_text(schedule)}, each reproduced to its {state['betas'].dtype} rounding; they are not kept (the method computes them)"
    )
    return schedule


def schedule_text(schedule: dict[str, Any]) -> str:
    ends = "" if schedule["kind"] == "cosine" else f" {schedule['linear_start']:g} .. {schedule['linear_end']:g}"
    return f"{schedule['kind']}{ends}, T = {schedule['n_steps']}"


# --- the network's layout --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """The network as its keys show it: level i has `channel_mults[i]` x `inner_channel` channels."""

    in_channel: int
    out_channel: int
    inner_channel: int
    channel_mults: tuple[int, ...]
    res_blocks: int
    attention: tuple[bool, ...]


net_shape = partial(shape_of, prefix=NETWORK, missing="not the SR3 network of this repository")
"""`shape_of` for the network's keys (stripped of `denoise_fn.`)."""


def down_entries(net: Mapping[str, Tensor]) -> list[str]:
    """What each `downs.k` (k >= 1) is: "block" (a residual block, maybe with attention) or "down" (a down-sampler)."""
    found = indices(net, r"downs\.(\d+)\.")
    if found != list(range(len(found))):
        raise ImportRefused(f"the keys {NETWORK}downs.* skip indices: {found}")
    entries = []
    for k in found[1:]:
        if f"downs.{k}.res_block.block1.block.3.weight" in net:
            entries.append("block")
        elif f"downs.{k}.conv.weight" in net:
            entries.append("down")
        else:
            keys = [NETWORK + key for key in net if key.startswith(f"downs.{k}.")]
            raise ImportRefused(f"{NETWORK}downs.{k} is neither a residual block nor a down-sampler: {listed(keys)}")
    return entries


def blocks_per_level(entries: list[str]) -> list[int]:
    """Residual blocks of each level, the levels separated by the down-samplers."""
    counts = [0]
    for entry in entries:
        if entry == "block":
            counts[-1] += 1
        else:
            counts.append(0)
    return counts


def read_layout(net: Mapping[str, Tensor]) -> Layout:
    """The constructor arguments the shapes and key names tell (a refusal naming the key where they do not fit)."""
    inner = net_shape(net, "noise_level_mlp.1.weight", 2)[1]
    counts = blocks_per_level(down_entries(net))
    if len(set(counts)) != 1 or counts[0] == 0:
        raise ImportRefused(f"{NETWORK}downs.*: residual blocks per level {counts} are not one number >= 1")
    mults, attention, k = [], [], 1
    for blocks in counts:
        width = net_shape(net, f"downs.{k}.res_block.block1.block.3.weight", 4)[0]
        mults.append(multiplier(width, inner, f"{NETWORK}downs.{k}.res_block.block1.block.3.weight"))
        attention.append(f"downs.{k}.attn.qkv.weight" in net)
        k += blocks + 1
    return Layout(
        in_channel=net_shape(net, "downs.0.weight", 4)[1],
        out_channel=net_shape(net, "final_conv.block.3.weight", 4)[0],
        inner_channel=inner,
        channel_mults=tuple(mults),
        res_blocks=counts[0],
        attention=tuple(attention),
    )


class KeyMap(PrefixKeyMap):
    """Official network keys <-> ours, for one layout: the official U-Net's flat `downs` and `ups` lists (a
    residual block with its attention, or a sampler, at each index) onto our levels (`down.i`, `up.n` with n = 0
    the coarsest level), and the parts of each module."""

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        n_levels, blocks = len(layout.channel_mults), layout.res_blocks
        self.module("noise_level_mlp.1.", "noise_level.mlp.0.")
        self.module("noise_level_mlp.3.", "noise_level.mlp.2.")
        self.module("downs.0.", "head.")
        self.module("mid.0.res_block.", "mid.blocks.0.", RES_BLOCK_PARTS)
        self.module("mid.0.attn.", "mid.attns.0.", ATTENTION_PARTS)
        self.module("mid.1.res_block.", "mid.blocks.1.", RES_BLOCK_PARTS)
        self.module("final_conv.block.0.", "tail.0.")
        self.module("final_conv.block.3.", "tail.2.")
        self.add_path("downs", 1, [(f"down.{i}", f"downsample.{i}") for i in range(n_levels)], blocks)
        self.add_path("ups", 0, [(f"up.{n}", f"upsample.{n}") for n in range(n_levels)], blocks + 1)

    def add_path(self, official: str, k: int, levels: list[tuple[str, str]], blocks: int) -> None:
        """One half of the U-Net: `blocks` residual blocks per level, then a sampler (except after the last level)."""
        for n, (level, sampler) in enumerate(levels):
            for j in range(blocks):
                self.module(f"{official}.{k}.res_block.", f"{level}.blocks.{j}.", RES_BLOCK_PARTS)
                self.module(f"{official}.{k}.attn.", f"{level}.attns.{j}.", ATTENTION_PARTS)
                k += 1
            if n < len(levels) - 1:
                self.module(f"{official}.{k}.", f"{sampler}.")
                k += 1


def to_our_keys(net: Mapping[str, Tensor], layout: Layout, init_args: dict[str, Any]) -> dict[str, Tensor]:
    """The network's weights under our keys, after checking every key and shape against our network built from
    `init_args` (on the meta device); a refusal names the official keys."""
    keys = KeyMap(layout)
    expected = meta_shapes(SR3ReferenceUNet, {**init_args, "init": "pytorch"})
    network = f"the SR3 network ({describe(layout)})"
    return fitted_weights(net, keys.translation(net), expected, network, prefix=NETWORK, official=keys.official)


def describe(layout: Layout) -> str:
    levels = [i for i, a in enumerate(layout.attention) if a]
    return (
        f"in {layout.in_channel}, out {layout.out_channel}, inner_channel {layout.inner_channel}, channel_mults "
        f"{list(layout.channel_mults)}, res_blocks {layout.res_blocks}, attention at levels {levels}"
    )


def network_args(layout: Layout, release: Release) -> dict[str, Any]:
    attn_res = [release.image_size // 2**i for i, a in enumerate(layout.attention) if a]
    return {
        "in_channel": layout.in_channel,
        "out_channel": layout.out_channel,
        "inner_channel": layout.inner_channel,
        "norm_groups": release.norm_groups,
        "channel_mults": list(layout.channel_mults),
        "attn_res": attn_res,
        "res_blocks": layout.res_blocks,
        "dropout": release.dropout,
        "image_size": release.image_size,
    }


def published(layout: Layout, release: Release) -> bool:
    """Whether the weights have the release's published network (up to the settings the weights do not show)."""
    attn_res = tuple(release.image_size // 2**i for i, a in enumerate(layout.attention) if a)
    return (layout.inner_channel, layout.channel_mults, layout.res_blocks, attn_res) == (
        release.inner_channel,
        release.channel_mults,
        release.res_blocks,
        release.attn_res,
    )


# --- the format ------------------------------------------------------------------------------------------------
def detect(obj: Any) -> bool:
    """A `*_gen.pth` of this repository (either of its networks) or its `*_opt.pth` (refused by `convert`)."""
    try:
        if not isinstance(obj, Mapping):
            return False
        return f"{NETWORK}downs.0.weight" in obj or set(obj) == OPTIMIZER_FILE_KEYS
    except Exception:  # noqa: BLE001 - detect never raises
        return False


def choose_release(layout: Layout, variant: str | None, report: list[str]) -> Release:
    if layout.in_channel == 3:
        if variant is not None:
            report.append(
                f"variant {variant!r} ignored: it names a super-resolution release, the file is unconditional"
            )
        return UNCONDITIONAL
    if layout.in_channel != 6:
        raise ImportRefused(f"{NETWORK}downs.0.weight: {layout.in_channel} input channels; SR3 has 6, the prior 3")
    if variant is not None and variant not in CONDITIONAL:
        raise ImportRefused(f"unknown variant {variant!r}; {NAME} has {', '.join(VARIANTS)}")
    matching = [name for name, release in CONDITIONAL.items() if published(layout, release)]
    chosen = variant or (matching[0] if matching else VARIANTS[0])
    how = "given" if variant else ("the published network the weights have" if matching else "the default")
    report.append(f"variant {chosen} ({how}): {CONDITIONAL[chosen].config}, recipe {CONDITIONAL[chosen].recipe}")
    if chosen not in matching and matching:  # its group count and dropout would build another function
        raise ImportRefused(
            f"--variant {chosen}: the weights have the published {matching[0]} network "
            f"({CONDITIONAL[matching[0]].config}); give --variant {matching[0]}"
        )
    return CONDITIONAL[chosen]


def refuse_other_files(obj: Any) -> None:
    if isinstance(obj, Mapping) and set(obj) == OPTIMIZER_FILE_KEYS:
        raise ImportRefused(
            "this is an optimizer state (*_opt.pth: epoch, iter, scheduler, optimizer), not weights: pass the "
            "*_gen.pth file saved beside it"
        )
    if isinstance(obj, Mapping) and (ddpm := [key for key in obj if str(key).startswith(f"{NETWORK}time_mlp.")]):
        raise ImportRefused(
            f"{listed(ddpm)}: the repository's DDPM network (which_model_G 'ddpm', conditioned on the integer step), "
            "not its SR3 network; only SR3-network files (denoise_fn.noise_level_mlp.*) are supported"
        )


def convert(obj: Any, variant: str | None) -> Imported:
    refuse_other_files(obj)
    state = tensors(obj, NAME)
    strays = [key for key in state if not key.startswith(NETWORK) and key not in DDPM_SCHEDULE_BUFFERS]
    if strays:
        raise ImportRefused(f"keys neither under {NETWORK} nor schedule buffers: {listed(strays)}")
    net = strip_prefix(state, NETWORK)
    layout = read_layout(net)
    report: list[str] = []
    release = choose_release(layout, variant, report)
    init_args = network_args(layout, release)
    weights = to_our_keys(net, layout, init_args)
    report += [
        f"network {NETWORK}* ({len(net)} keys) -> net.* of {SR3ReferenceUNet.__name__}: {describe(layout)}, read "
        "from the shapes",
        f"not in the weights, from {release.config}: norm_groups {release.norm_groups}, dropout {release.dropout}, "
        f"image_size {release.image_size} (places attn_res {init_args['attn_res']})",
        "no EMA in the file (the official training keeps none): the weights are the trained ones",
    ]
    settings: dict[str, Any] = {"train_schedule": read_schedule(state, release, report)}
    if release.scale is not None:
        settings["scale"] = release.scale
        report.append(
            f"SR3 x{release.scale}: the official condition is PIL bicubic (a = -0.5) saved as 8-bit PNG; the method "
            "up-samples with torch's bicubic (a = -0.75), a small shift of the input these weights were trained on"
        )
    else:
        report.append(
            "unconditional (3 input channels): the 128 px FFHQ face model as DeqIR's prior, net(x_t, sqrt(alpha_bar)); "
            f"the restoration settings are recipe {release.recipe}'s (its data are 64 px: give 128 px images)"
        )
    return Imported(
        method=release.method,
        networks={"net": {"class_path": NET_CLASS, "init_args": init_args}},
        state_dict=with_prefix(weights, "net."),
        settings=settings,
        recipe=release.recipe,
        report=report,
    )


FORMATS = (
    OfficialFormat(
        name=NAME,
        source=(
            "Janspiry/Image-Super-Resolution-via-Iterative-Refinement: *_gen.pth (I640000_E37 16->128, "
            "I830000_E32 64->512, the 128 px unconditional model)"
        ),
        detect=detect,
        convert=convert,
        variants=VARIANTS,
    ),
)
