"""The two pretrained priors DeqIR restores with (caojiezhang/DeqIR's README), as DeqIR checkpoints.

- `adm`: OpenAI's `256x256_diffusion_uncond.pt` (openai/guided-diffusion), a raw state dict of guided-diffusion's
  `UNetModel` (`time_embed.*`, `input_blocks.*`, `middle_block.*`, `output_blocks.*`, `out.*`; released in fp16),
  read into `GuidedDiffusionUNet` by `noise_da`'s guided-diffusion key map.
- `ddim-model`: SDEdit's `celeba_hq.ckpt` (ermongroup/SDEdit), a raw state dict of the DDIM `Model`, whose key names
  are `DDIMUNet`'s.

Each pairs with the packaged recipe of its data set's x4 bicubic super-resolution (`ADM_RECIPE`, `DDIM_RECIPE`):
the official DeqIR chain and solver on 256 x 256 images. The data set's other tasks are its other recipes
(`deqir_imagenet256_*`, `deqir_celebahq256_*`), given to the import as `--recipe` (validate and test take the
method's settings from the checkpoint, a `--model.init_args.KEY=VALUE` flag changing one); `restore --operator`
changes the task of any of them.

Both were trained on integer timesteps of linear betas 1e-4 .. 0.02 over T = 1000; the suite's DeqIR calls its
prior with sqrt(alpha_bar_t) of its `train_schedule`, so each prior is wrapped in `TimestepPrior` (which recovers
the step and keeps eps) and the checkpoint's `train_schedule` is that same schedule. The configuration comes from
the shapes; what the shapes cannot show (ADM's 64-channel heads, the 32 GroupNorm groups, the CelebA-HQ
resolution that places the DDIM attention) is the official configuration's, and each conversion reports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ir_lightning.importing.base import (
    Imported,
    ImportRefused,
    OfficialFormat,
    fitted_weights,
    indices,
    meta_shapes,
    multiplier,
    shape_of,
    tensors,
    with_prefix,
)
from ir_lightning.importing.noise_da import describe, guided_diffusion_args, guided_diffusion_keys, unbuildable
from ir_lightning.importing.sr3 import noise_schedule
from ir_lightning.nets.ddim_model import DDIMUNet

METHOD = "ir_lightning.methods.DeqIR"
ADM_RECIPE = "deqir_imagenet256_sr4"
"""The ADM prior's paired recipe: DeqIR's ImageNet 256 x 256 x4 bicubic SR (`deqir_imagenet256_*` the other tasks)."""
DDIM_RECIPE = "deqir_celebahq256_sr4"
"""The CelebA-HQ prior's paired recipe: DeqIR's CelebA-HQ 256 x 256 x4 bicubic SR (`deqir_celebahq256_*`)."""
RECIPE = "deqir_faces64"
"""The recipe of a prior of no official data set and size (the diffusers format pairs with it): DeqIR's 64 px one."""
WRAPPER_CLASS = "ir_lightning.nets.timestep_prior.TimestepPrior"
ADM_CLASS = "ir_lightning.nets.guided_diffusion.GuidedDiffusionUNet"
DDIM_CLASS = "ir_lightning.nets.ddim_model.DDIMUNet"
NET = "net."
PRIOR = "prior."
"""The prior's weights sit at `net.prior.*`: DeqIR's `net` is the `TimestepPrior`, whose `prior` is the network."""

OFFICIAL_SCHEDULE = noise_schedule("linear", 1000, 1e-4, 0.02)
"""The schedule both priors were trained with (and DeqIR's `train_schedule` must be)."""
EPS_CHANNELS = 3
"""The output channels that are eps (ADM's learned-sigma models add 3 of variance interpolation)."""

ADM_SETTINGS = dict(
    dropout=0.0,
    num_head_channels=64,
    legacy_attention_order=True,
    norm_groups=32,
    level_input="sqrt_gamma",
    level_scale=1.0,
    init="adm",
)
"""ADM's settings that the weights do not show: the released model's dropout 0 and `--num_head_channels 64`, the
default `use_new_attention_order=False` (legacy qkv order), `normalization`'s 32 groups, and the embedding of the
value given (here the integer step that `TimestepPrior` passes)."""
ADM_KEYS = ("time_embed.0.weight", "input_blocks.0.0.weight", "middle_block.0.in_layers.0.weight", "out.2.weight")
"""Keys every guided-diffusion `UNetModel` has, at the top level (what `detect` looks for)."""
CLASS_CONDITIONAL = "label_emb.weight"

DDIM_SETTINGS = dict(dropout=0.0, norm_groups=32)
"""The DDIM `Model`'s settings that the weights do not show: CelebA-HQ's dropout 0, `Normalize`'s 32 groups."""
OFFICIAL_IMAGE_SIZE = 256
"""The side of both official priors' images (ImageNet 256 x 256, CelebA-HQ 256 x 256)."""

DDIM_RESOLUTION = OFFICIAL_IMAGE_SIZE
"""CelebA-HQ's `data.image_size`: with it, a level l holding attention is the resolution 256 / 2**l."""
DDIM_KEYS = ("temb.dense.0.weight", "conv_in.weight", "mid.block_1.conv1.weight", "conv_out.weight")
DATA_PARALLEL = "module."


def detect_keys(obj: Any, keys: tuple[str, ...]) -> bool:
    try:
        return isinstance(obj, Mapping) and all(key in obj for key in keys)
    except Exception:  # noqa: BLE001 - detect never raises
        return False


def float32(state: Mapping[str, Tensor], report: list[str]) -> dict[str, Tensor]:
    """The weights in float32 (the ADM release is fp16), with a report line saying which dtypes were converted."""
    dtypes = sorted({str(value.dtype) for value in state.values() if value.dtype != torch.float32})
    if dtypes:
        report.append(f"weights stored as {', '.join(dtypes)}: converted to float32")
    return {key: value.float() if value.is_floating_point() else value for key, value in state.items()}


def wrapped(
    prior_class: str, prior_args: dict[str, Any], eps_channels: int, image_size: int | None = None
) -> dict[str, dict[str, Any]]:
    """DeqIR's `net`: the prior behind `TimestepPrior` on the official schedule, restoring `image_size` images."""
    schedule = {"schedule": OFFICIAL_SCHEDULE["kind"]} | {
        key: OFFICIAL_SCHEDULE[key] for key in ("n_steps", "linear_start", "linear_end")
    }
    init_args = {"prior": {"class_path": prior_class, "init_args": prior_args}, **schedule}
    init_args |= {"eps_channels": eps_channels, "image_size": image_size}
    return {"net": {"class_path": WRAPPER_CLASS, "init_args": init_args}}


def deqir(
    prior_class: str,
    prior_args: dict[str, Any],
    weights: dict[str, Tensor],
    report: list[str],
    recipe: str,
    image_size: int | None = OFFICIAL_IMAGE_SIZE,
) -> Imported:
    eps_channels = min(EPS_CHANNELS, prior_args.get("out_channels", prior_args.get("out_ch", EPS_CHANNELS)))
    report.append(
        f"wrapped in TimestepPrior: DeqIR's level sqrt(alpha_bar_t) -> the integer step t of the official schedule "
        f"(linear 1e-4 .. 0.02, T = 1000, the method's train_schedule); the first {eps_channels} output channels "
        "are eps"
    )
    family = recipe.rsplit("_", 1)[0]
    report.append(
        f"paired recipe (without --recipe) {recipe}: x4 bicubic SR by the official DeqIR chain and solver on 256 px "
        f"images; for another task import with --recipe {family}_<task> (validate and test take the method's "
        "settings from the checkpoint), or give --model.init_args.operator=... to validate, --operator to restore"
    )
    if image_size is not None:
        report.append(
            f"a {image_size} x {image_size} prior (the released models' size; the weights cannot show it): other "
            "sizes are refused, `ir-lightning restore` cuts larger images into tiles of it"
        )
    return Imported(
        method=METHOD,
        networks=wrapped(prior_class, prior_args, eps_channels, image_size),
        state_dict=with_prefix(weights, NET + PRIOR),
        settings={"train_schedule": dict(OFFICIAL_SCHEDULE)},
        recipe=recipe,
        report=report,
    )


# --- ADM -----------------------------------------------------------------------------------------------------------
def detect_adm(obj: Any) -> bool:
    """A raw guided-diffusion `UNetModel` state dict (Noise-DA's wrapper has its U-Net under `denoise_fn.`)."""
    return detect_keys(obj, ADM_KEYS)


def convert_adm(obj: Any, variant: str | None) -> Imported:
    report: list[str] = []
    state = float32(tensors(obj, "ADM weights"), report)
    if CLASS_CONDITIONAL in state:
        raise ImportRefused(f"key {CLASS_CONDITIONAL!r}: a class-conditional ADM; DeqIR needs an unconditional prior")
    args = guided_diffusion_args(state) | ADM_SETTINGS
    weights = guided_diffusion_keys(state, args)
    report.append(f"GuidedDiffusionUNet({describe(args)}), read from the shapes")
    report.append(
        f"learned sigma: {args['out_channels']} output channels"
        if args["out_channels"] == 2 * EPS_CHANNELS
        else f"{args['out_channels']} output channels"
    )
    report.append(
        f"resblock_updown {args['resblock_updown']}, scale-shift norm {args['scale_shift_norm']} (from the "
        "emb_layers' width), read from the keys and shapes"
    )
    report.append(
        "heads of 64 channels (the release's --num_head_channels 64: the shapes cannot show it), legacy qkv order, "
        "32 GroupNorm groups and dropout 0 are the official configuration's"
    )
    problem = unbuildable(args)
    if problem is not None:
        report.append(f"the widths do not take the official settings ({problem}): the network cannot be built as is")
    return deqir(ADM_CLASS, args, weights, report, ADM_RECIPE)


# --- the DDIM Model ------------------------------------------------------------------------------------------------
def detect_ddim(obj: Any) -> bool:
    """A raw state dict of the DDIM / SDEdit `Model` (keys `temb.dense.*`, `conv_in.*`, `mid.*`, `conv_out.*`)."""
    return detect_keys(obj, DDIM_KEYS) or detect_keys(obj, tuple(DATA_PARALLEL + key for key in DDIM_KEYS))


def ddim_args(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """`DDIMUNet`'s arguments from the shapes: widths, levels, blocks, attention levels, resamplers."""
    first = shape_of(state, "conv_in.weight", 4)
    ch = first[0]
    levels = indices(state, r"down\.(\d+)\.")
    if not levels or levels != list(range(len(levels))):
        raise ImportRefused(f"the keys down.* skip levels (or there are none): {levels}")
    mults = []
    for level in levels:
        width = shape_of(state, f"down.{level}.block.0.conv1.weight", 4)[0]
        mults.append(multiplier(width, ch, f"down.{level}.block.0.conv1.weight"))
    attention = [level for level in levels if f"down.{level}.attn.0.q.weight" in state]
    return {
        "ch": ch,
        "out_ch": shape_of(state, "conv_out.weight", 4)[0],
        "ch_mult": mults,
        "num_res_blocks": len(indices(state, r"down\.0\.block\.(\d+)\.")),
        "attn_resolutions": [DDIM_RESOLUTION // 2**level for level in attention],
        "in_channels": first[1],
        "resolution": DDIM_RESOLUTION,
        "resamp_with_conv": len(levels) == 1 or "down.0.downsample.conv.weight" in state,
        **DDIM_SETTINGS,
    }


def convert_ddim(obj: Any, variant: str | None) -> Imported:
    report: list[str] = []
    state = float32(tensors(obj, "DDIM Model weights"), report)
    if all(key.startswith(DATA_PARALLEL) for key in state):
        state = {key[len(DATA_PARALLEL) :]: value for key, value in state.items()}
        report.append(f"dropped the DataParallel prefix {DATA_PARALLEL!r}")
    args = ddim_args(state)
    expected = meta_shapes(DDIMUNet, args | {"norm_groups": 1}, where="DDIM Model")
    network = f"DDIMUNet(ch {args['ch']}, ch_mult {args['ch_mult']}, {args['num_res_blocks']} blocks)"
    weights = fitted_weights(state, {key: key for key in state}, expected, network)
    attention = [(DDIM_RESOLUTION // resolution).bit_length() - 1 for resolution in args["attn_resolutions"]]
    report.append(
        f"{network}, attention at levels {attention} and in the middle, in {args['in_channels']} / out "
        f"{args['out_ch']} channels, read from the shapes; the key names are the official ones"
    )
    report.append(
        f"resolution {DDIM_RESOLUTION} (CelebA-HQ's image_size) names the attention levels as attn_resolutions "
        f"{args['attn_resolutions']}; dropout 0 and 32 GroupNorm groups are the official configuration's"
    )
    try:
        with torch.device("meta"):
            DDIMUNet(**args)
    except ValueError as error:
        report.append(f"the widths do not take the official settings ({error}): the network cannot be built as is")
    return deqir(DDIM_CLASS, args, weights, report, DDIM_RECIPE)


FORMATS = (
    OfficialFormat(
        name="adm",
        source="openai/guided-diffusion: 256x256_diffusion_uncond.pt (DeqIR's ImageNet prior)",
        detect=detect_adm,
        convert=convert_adm,
    ),
    OfficialFormat(
        name="ddim-model",
        source="ermongroup/SDEdit: celeba_hq.ckpt (DeqIR's CelebA-HQ prior)",
        detect=detect_ddim,
        convert=convert_ddim,
    ),
)
