"""Denoising as Adaptation's released weights (KangLiao929/Noise-DA @47ecb49): `denoise.pth`, `derain.pth`,
`deblur.pth`.

Each file is `torch.save(state_dict)` of the official wrapper `models.network.Network` (`core/base_model.py`
`save_network`), which upstream loads with `strict=False`: the restorer under `RestorationNet.` (the official
`models/net/UNet.py`, our `ResidualUNet` by renaming keys), and, where the file has it, the diffusion network D
under `denoise_fn.` (the guided-diffusion U-Net, our `GuidedDiffusionUNet`) with the six schedule buffers that
`set_new_noise_schedule` registers. The repository says only the restorer was released (issue #3); both layouts
are read. Without D the checkpoint restores (D is training-only) and says so in `exported_without`.

What the weights cannot tell comes from the official configurations (`*/configs/options_train.json`): the
LeakyReLU slope 0.2, D's dropout 0.2, heads of 32 channels, legacy qkv order, 32 GroupNorm groups, the raw gamma
fed to D's embedding, the Kaiming initialisation; and, from the variant, the task: its recipe and its value
range (denoising works in [0, 1], `norm0`; deraining and deblurring in [-1, 1], `norm1`, `data/dataset.py`).

The functions reading a guided-diffusion U-Net (`guided_diffusion_args`, `guided_diffusion_keys`) take the
network's own keys, so OpenAI's ADM files (`time_embed.` instead of `cond_embed.`) read the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas
from ir_lightning.importing.base import (
    Imported,
    ImportRefused,
    OfficialFormat,
    fitted_weights,
    indices,
    key_renames,
    listed,
    meta_shapes,
    multiplier,
    shape_of,
    strip_prefix,
    tensors,
    with_prefix,
)
from ir_lightning.nets.guided_diffusion import GuidedDiffusionUNet
from ir_lightning.nets.restorer import ResidualUNet

NAME = "noise-da"
SOURCE = "KangLiao929/Noise-DA: denoise.pth, derain.pth, deblur.pth (the README's Google Drive links)"
METHOD = "ir_lightning.methods.DenoisingAsAdaptation"
RESTORER_CLASS = "ir_lightning.nets.restorer.ResidualUNet"
DIFFUSION_CLASS = "ir_lightning.nets.guided_diffusion.GuidedDiffusionUNet"
RESTORER = "RestorationNet."
DIFFUSION = "denoise_fn."
SCHEDULE_BUFFERS = (
    "gammas",
    "sqrt_recip_gammas",
    "sqrt_recipm1_gammas",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
"""What `Network.set_new_noise_schedule` registers (`models/network.py`), saved beside the networks."""

OFFICIAL_SCHEDULE = dict(kind="linear", n_steps=1000, linear_start=1e-6, linear_end=1e-2)
"""`beta_schedule.train` of the three training configurations (the recipes' `schedule`)."""

VARIANTS = ("denoise", "derain", "deblur")
VALUE_RANGE = {"denoise": "unit", "derain": "signed", "deblur": "signed"}
"""The range R and D work in, by task: the datasets' `norm: norm0` ([0, 1]) or `norm1` ([-1, 1])."""

RANGE_SETTINGS = ("restorer_range", "diffusion_range")
"""The `DenoisingAsAdaptation` arguments that take `VALUE_RANGE`'s values: upstream runs R and D in one range."""

RESTORER_SETTINGS = dict(slope=0.2, init="kaiming")
"""`RestorationNet`'s LeakyReLU slope (`models/net/UNet.py` default) and `init_type: kaiming`."""

DIFFUSION_SETTINGS = dict(
    dropout=0.2,
    num_head_channels=32,
    legacy_attention_order=True,
    norm_groups=32,
    level_input="gamma",
    level_scale=1.0,
    init="kaiming",
)
"""D's settings that the weights do not show: the configurations' `dropout`, `num_head_channels`, the default
`use_new_attention_order=False`, `normalization_gp`'s 32 groups, the raw gamma fed at `models/network.py:157`."""

RESTORER_RULES = (
    (r"^down_path\.(\d+)\.block\.", r"down.\1."),
    (r"^up_path\.(\d+)\.conv_up\.", r"up.\1.up."),
    (r"^up_path\.(\d+)\.conv_block\.block\.", r"up.\1.block."),
)
"""Official `RestorationNet` keys -> `ResidualUNet`'s (`last.` is the same)."""

RESTORER_KEY = re.compile(
    r"(down_path\.\d+\.block\.[02]|up_path\.\d+\.(conv_up|conv_block\.block\.[02])|last)\.(weight|bias)"
)
"""Every key of the official `RestorationNet`."""

BLOCK_LEAVES = (
    (r"\.in_layers\.0\.", ".norm1."),
    (r"\.in_layers\.2\.", ".conv1."),
    (r"\.emb_layers\.1\.", ".level_proj."),
    (r"\.out_layers\.0\.", ".norm2."),
    (r"\.out_layers\.3\.", ".conv2."),
    (r"\.skip_connection\.", ".skip."),
    (r"\.proj_out\.", ".proj."),
    (r"\.op\.", ".conv."),
)
"""The parts of the official residual, attention and down-sampling blocks -> ours."""

MIDDLE_PARTS = ("res1", "attention", "res2")
EMBEDDINGS = ("cond_embed.", "time_embed.")
"""The level MLP's prefix: Noise-DA's and ADM's."""


# --- the restorer ------------------------------------------------------------------------------------------------
def restorer_args(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """`ResidualUNet`'s arguments from the official restorer's shapes (the slope is the official default)."""
    depth = len(indices(state, r"down_path\.(\d+)\."))
    first = shape_of(state, "down_path.0.block.0.weight", prefix=RESTORER)
    return {
        "in_channels": first[1],
        "out_channels": shape_of(state, "last.weight", prefix=RESTORER)[0],
        "width": first[0],
        "depth": depth,
        **RESTORER_SETTINGS,
    }


def convert_restorer(state: Mapping[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    unknown = [RESTORER + key for key in state if not RESTORER_KEY.fullmatch(key)]
    if unknown:
        raise ImportRefused(f"keys that the official RestorationNet does not have: {listed(unknown)}")
    args = restorer_args(state)
    ours = key_renames(state, RESTORER_RULES)
    expected = meta_shapes(ResidualUNet, args, where=f"{RESTORER}*")
    network = f"ResidualUNet(width {args['width']}, depth {args['depth']})"
    return args, fitted_weights(state, ours, expected, network, prefix=RESTORER)


# --- the guided-diffusion U-Net ------------------------------------------------------------------------------------
def is_attention(state: Mapping[str, Tensor], prefix: str) -> bool:
    return f"{prefix}qkv.weight" in state


def embedding_prefix(state: Mapping[str, Tensor], prefix: str) -> str:
    for name in EMBEDDINGS:
        if f"{name}0.weight" in state:
            return name
    raise ImportRefused(f"no {prefix}cond_embed.0.weight (nor time_embed.0.weight): not a guided-diffusion U-Net")


def levels_and_blocks(state: Mapping[str, Tensor], prefix: str) -> tuple[int, int, str]:
    """(levels, residual blocks per level, the resampler: "resblock", "conv" or "none"), from the decoder's layout:
    its level l (from the bottom) has blocks l (n + 1) .. l (n + 1) + n, the last of which (but the top level's)
    ends in an up-sampler; parameter-free resamplers show as encoder indices without keys."""
    outputs = indices(state, r"output_blocks\.(\d+)\.")
    if outputs != list(range(len(outputs))) or not outputs:
        raise ImportRefused(f"the keys {prefix}output_blocks.* skip indices (or there are none): {outputs}")
    ups, kinds = [], set()
    for k in outputs:
        for j in indices(state, rf"output_blocks\.{k}\.(\d+)\.")[1:]:
            part = f"output_blocks.{k}.{j}."
            if not is_attention(state, part):
                ups.append(k)
                kinds.add("resblock" if f"{part}in_layers.0.weight" in state else "conv")
    if ups:
        blocks = ups[0]
    else:
        present = set(indices(state, r"input_blocks\.(\d+)\."))
        gaps = [k for k in range(1, len(outputs)) if k not in present]
        blocks = gaps[0] - 1 if gaps else len(outputs) - 1
    n_levels, rest = divmod(len(outputs), blocks + 1)
    expected_ups = [level * (blocks + 1) + blocks for level in range(n_levels - 1)]
    if rest or (ups and (ups != expected_ups or len(kinds) != 1)):
        raise ImportRefused(
            f"{prefix}output_blocks.*: {len(outputs)} blocks with up-samplers at {ups} do not make levels of equal "
            f"residual blocks"
        )
    return n_levels, blocks, kinds.pop() if kinds else "none"


def guided_diffusion_args(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Any]:
    """`GuidedDiffusionUNet`'s arguments that the shapes and key names tell (channels in, out and per level, blocks
    per level, the attention factors ds that hold attention, the resamplers, scale-shift conditioning); `prefix`
    is only for messages."""
    embed = embedding_prefix(state, prefix)
    base = shape_of(state, f"{embed}0.weight", prefix=prefix)[1]
    n_levels, blocks, resampler = levels_and_blocks(state, prefix)
    mults, attention_ds = [], set()
    for level in range(n_levels):
        first = (n_levels - 1 - level) * (blocks + 1)  # the decoder's first block of this level
        width = shape_of(state, f"output_blocks.{first}.0.out_layers.3.weight", prefix=prefix)[0]
        mults.append(multiplier(width, base, f"{prefix}output_blocks.{first}.0.out_layers.3.weight"))
        if is_attention(state, f"output_blocks.{first}.1."):
            attention_ds.add(2**level)
    for k in indices(state, r"input_blocks\.(\d+)\.1\."):
        attention_ds.add(2 ** ((k - 1) // (blocks + 1)))
    middle_width = shape_of(state, "middle_block.0.out_layers.3.weight", prefix=prefix)[0]
    return {
        "in_channels": shape_of(state, "input_blocks.0.0.weight", prefix=prefix)[1],
        "out_channels": shape_of(state, "out.2.weight", prefix=prefix)[0],
        "base_channels": base,
        "channel_mults": mults,
        "num_res_blocks": blocks,
        "attention_ds": sorted(attention_ds),
        "conv_resample": resampler != "none",
        "scale_shift_norm": shape_of(state, "middle_block.0.emb_layers.1.weight", prefix=prefix)[0] == 2 * middle_width,
        "resblock_updown": resampler == "resblock" or n_levels == 1,  # one level has no resamplers
    }


def guided_diffusion_rules(state: Mapping[str, Tensor], args: dict[str, Any]) -> list[tuple[str, str]]:
    """Official key -> ours: the flat block lists (`input_blocks`, `middle_block`, `output_blocks`) onto our steps
    (`encoder.k`, `middle`, `decoder.k`: residual block, attention, resampler), then the blocks' parts."""
    blocks, n_levels = args["num_res_blocks"], len(args["channel_mults"])
    downs = {(level + 1) * (blocks + 1) for level in range(n_levels - 1)}
    rules = [(rf"^{re.escape(name)}", "level_embed.") for name in EMBEDDINGS]
    rules += [(r"^input_blocks\.0\.0\.", "input_conv."), (r"^out\.", "output.")]
    for k in indices(state, r"input_blocks\.(\d+)\.")[1:]:
        rules.append((rf"^input_blocks\.{k}\.0\.", f"encoder.{k - 1}.{'resample' if k in downs else 'res'}."))
        rules.append((rf"^input_blocks\.{k}\.1\.", f"encoder.{k - 1}.attention."))
    rules += [(rf"^middle_block\.{j}\.", f"middle.{part}.") for j, part in enumerate(MIDDLE_PARTS)]
    for k in indices(state, r"output_blocks\.(\d+)\."):
        rules.append((rf"^output_blocks\.{k}\.0\.", f"decoder.{k}.res."))
        for j in indices(state, rf"output_blocks\.{k}\.(\d+)\.")[1:]:
            part = "attention" if is_attention(state, f"output_blocks.{k}.{j}.") else "resample"
            rules.append((rf"^output_blocks\.{k}\.{j}\.", f"decoder.{k}.{part}."))
    return rules + list(BLOCK_LEAVES)


def guided_diffusion_keys(state: Mapping[str, Tensor], args: dict[str, Any], prefix: str = "") -> dict[str, Tensor]:
    """A guided-diffusion U-Net's weights under `GuidedDiffusionUNet`'s keys, checked against the network built
    from `args` on the meta device (a refusal names the file's keys, with `prefix`, that do not fit)."""
    ours = key_renames(state, guided_diffusion_rules(state, args))
    expected = meta_shapes(GuidedDiffusionUNet, args | SHAPE_NEUTRAL, where=f"{prefix}*")
    return fitted_weights(state, ours, expected, f"GuidedDiffusionUNet({describe(args)})", prefix=prefix)


SHAPE_NEUTRAL = dict(norm_groups=1, num_head_channels=None, num_heads=1, num_heads_upsample=None)
"""Settings that change no shape, set so that any widths build when the keys and shapes are checked."""


def unbuildable(args: dict[str, Any]) -> str | None:
    """Why `GuidedDiffusionUNet(**args)` does not build (widths that the groups or heads do not divide), or None."""
    try:
        with torch.device("meta"):
            GuidedDiffusionUNet(**args)
    except ValueError as error:
        return str(error)
    return None


def describe(args: dict[str, Any]) -> str:
    return (
        f"in {args['in_channels']}, out {args['out_channels']}, base {args['base_channels']}, mults "
        f"{list(args['channel_mults'])}, {args['num_res_blocks']} blocks, attention at ds {list(args['attention_ds'])} "
        "and in the middle"
    )


def convert_diffusion(state: Mapping[str, Tensor], report: list[str]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    args = guided_diffusion_args(state, DIFFUSION) | DIFFUSION_SETTINGS
    weights = guided_diffusion_keys(state, args, DIFFUSION)
    report.append(f"D ({DIFFUSION}*) -> diffusion: GuidedDiffusionUNet({describe(args)}), read from the shapes")
    report.append(
        "D's dropout 0.2, heads of 32 channels, legacy qkv order, 32 GroupNorm groups and raw-gamma embedding "
        "(level_input 'gamma') are the official configuration's: the weights do not show them"
    )
    problem = unbuildable(args)
    if problem is not None:  # `ir-lightning import` refuses it when it builds the method; a caller may not
        report.append(f"D's widths do not take the official D's settings ({problem}): D cannot be built as is")
    return args, weights


# --- the schedule buffers ----------------------------------------------------------------------------------------
def check_schedule(state: Mapping[str, Tensor], report: list[str]) -> None:
    present = [name for name in SCHEDULE_BUFFERS if name in state]
    if not present:
        return
    note = f"dropped the wrapper's schedule buffers {listed(present)} (the method computes its `schedule`)"
    if "gammas" in state:
        schedule = OFFICIAL_SCHEDULE
        ours = gammas_from_betas(
            make_betas(schedule["kind"], schedule["n_steps"], schedule["linear_start"], schedule["linear_end"])
        )
        stored = state["gammas"].to(torch.float64)
        fits = stored.shape == ours.shape and bool(((stored - ours).abs() <= 1e-6).all())
        if not fits:  # D would go on training (and adapting) with a schedule it never saw
            raise ImportRefused(
                f"'gammas' of shape {tuple(stored.shape)} is not the official linear 1e-6 .. 1e-2, T = 1000 schedule "
                "the method builds"
            )
        note += ": they are the recipes' linear 1e-6 .. 1e-2, T = 1000"
    report.append(note)


# --- the format ----------------------------------------------------------------------------------------------------
def detect(obj: Any) -> bool:
    """A state dict of the official wrapper: the restorer's first convolution under `RestorationNet.`."""
    try:
        return isinstance(obj, Mapping) and f"{RESTORER}down_path.0.block.0.weight" in obj
    except Exception:  # noqa: BLE001 - detect never raises
        return False


def range_settings(variant: str) -> tuple[dict[str, Any], str]:
    """The method's range settings for the task, and the report line."""
    value_range = VALUE_RANGE[variant]
    interval = "[0, 1]" if value_range == "unit" else "[-1, 1]"
    line = f"variant {variant}: R and D work in {interval} as upstream ({', '.join(RANGE_SETTINGS)} {value_range})"
    return dict.fromkeys(RANGE_SETTINGS, value_range), line


def convert(obj: Any, variant: str | None) -> Imported:
    if variant is None:  # the weights do not say which range they were trained in: a guess would restore wrongly
        ranges = ", ".join(f"{name} ({'[0, 1]' if VALUE_RANGE[name] == 'unit' else '[-1, 1]'})" for name in VARIANTS)
        raise ImportRefused(f"the weights do not say the task's value range: give --variant, one of {ranges}")
    if variant not in VARIANTS:
        raise ImportRefused(f"unknown variant {variant!r}; {NAME} has {', '.join(VARIANTS)}")
    state = tensors(obj, "Noise-DA weights")
    restorer, diffusion = strip_prefix(state, RESTORER), strip_prefix(state, DIFFUSION)
    if not restorer:
        raise ImportRefused(f"no {RESTORER}* keys: not a Noise-DA wrapper state dict (it has {listed(list(state))})")
    unknown = [k for k in state if not k.startswith((RESTORER, DIFFUSION)) and k not in SCHEDULE_BUFFERS]
    if unknown:
        raise ImportRefused(f"keys that the Noise-DA wrapper does not have: {listed(unknown)}")
    report: list[str] = []
    restorer_init, restorer_weights = convert_restorer(restorer)
    report.append(
        f"{RESTORER}* -> restorer: ResidualUNet(width {restorer_init['width']}, depth {restorer_init['depth']}) by "
        "renaming keys; the LeakyReLU slope 0.2 is the official default (the weights do not show it)"
    )
    report.append("one set of weights: upstream loads the released file into both the network and its EMA copy")
    networks = {"restorer": {"class_path": RESTORER_CLASS, "init_args": restorer_init}}
    weights = with_prefix(restorer_weights, "restorer.")
    exported_without: list[str] = []
    if diffusion:
        diffusion_init, diffusion_weights = convert_diffusion(diffusion, report)
        networks["diffusion"] = {"class_path": DIFFUSION_CLASS, "init_args": diffusion_init}
        weights |= with_prefix(diffusion_weights, "diffusion.")
    else:
        exported_without.append("diffusion")
        report.append(
            f"no {DIFFUSION}* keys: the file holds the restorer alone (as released, issue #3); D is training-only, "
            "so the checkpoint restores but cannot resume the adaptation"
        )
    check_schedule(state, report)
    settings, line = range_settings(variant)
    report.append(line)
    return Imported(
        method=METHOD,
        networks=networks,
        state_dict=weights,
        settings=settings,
        recipe=f"da_{variant}",
        report=report,
        exported_without=exported_without,
    )


FORMATS = (OfficialFormat(name=NAME, source=SOURCE, detect=detect, convert=convert, variants=VARIANTS),)
