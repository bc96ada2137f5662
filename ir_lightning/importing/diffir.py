"""DiffIR's released checkpoints (Zj-BinXia/DiffIR) -> `DiffIRS1`, `DiffIRS2` or `DiffIRGAN` of this suite.

The official files are BasicSR's `save_network` dicts, `{"params": state, "params_ema": state}` (one or
both), of the official wrappers (`archs/S1_arch.py`, `archs/S2_arch.py` of the sub-projects
`DiffIR-demotionblur`, `DiffIR-RealSR`, `DiffIR-SRGAN`):

- stage 1 (`DiffIRS1`): `G.*` (the DIRformer) and `E.E.*`, `E.mlp.*` (CPEN_S1, which sees the GT);
- stage 2 and S2-GAN (`DiffIRS2`): `G.*`, `condition.*` (CPEN_S2), `denoise.*` (the IPR denoiser) and
  `diffusion.*`: the prior-diffusion wrapper, which holds the same denoiser and CPEN_S2 a second time
  (`diffusion.model.*`, `diffusion.condition.*`) and 12 schedule buffers (`diffusion.betas`, ...).

`params_ema` (what the official configs and inference script load) becomes the checkpoint's weights,
`params` its trained weights. Every network argument is read from the shapes: the DIRformer's width,
blocks, heads, FFN expansion, biases and LayerNorm kind; the task (a plain output conv: deblurring;
a pixel-shuffle tail: real-world SR) and the scale (from CPEN's LQ input: 48, 12 or 3 channels for x1,
x2, x4; the real-SR x1 and x2 DIRformers pixel-unshuffle the LQ by 4 and 2 and always up-sample by 4);
CPEN's residual blocks and width; the denoiser's layers; the prior schedule from `diffusion.betas`.

Each file pairs with the packaged recipe of its stage and task (`RECIPES`); real-SR x1 and x2 files take
the x4 recipe's settings with their own scale. The SISR files of `DiffIR-SRGAN` hold the same networks
as the real-SR ones (byte-identical archs) and import as real-SR.

What the weights cannot tell: whether a stage-2 file is stage 2 or the S2-GAN fine-tuning of it (the
same network, the same keys). `--variant s2` (the default) imports it as `DiffIRS2`, `--variant gan`
as `DiffIRGAN`; both restore identically, the variant picks the method and recipe a fine-tuning
continues with. A stage-2 file has no CPEN_S1 (the teacher, training only) and no discriminator
(never released with the generator): they are listed in `exported_without`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas
from ir_lightning.importing.base import (
    DDPM_SCHEDULE_BUFFERS,
    Imported,
    ImportRefused,
    OfficialFormat,
    drop_keys,
    indices,
    key_misfits,
    key_renames,
    listed,
    meta_shapes,
    shape_of,
    shortest_decimal,
    strip_prefix,
    tensors,
)
from ir_lightning.nets.diffir import CPEN, PRIOR_GRID, DIRformer, IPRDenoiser

SOURCE = "Zj-BinXia/DiffIR"
WRAPPERS = ("params_ema", "params")
"""BasicSR's keys of a `net_g` file: the EMA weights (loaded by the official configs) and the trained ones."""

IMAGE_CHANNELS = 3
"""The official CPENs take RGB images (their first conv's inputs are hard-coded for 3 channels)."""

DEFAULT_PRIOR = {"kind": "quad", "n_steps": 4, "linear_start": 0.1, "linear_end": 0.99}
"""The prior schedule of every official configuration (timesteps 4, linear_start 0.1, linear_end 0.99 on sqrt(beta))."""

RECIPES = {
    ("s1", "deblur"): "diffir_s1_gopro",
    ("s2", "deblur"): "diffir_s2_gopro",
    ("s1", "realsr"): "diffir_s1_realsr_x4",
    ("s2", "realsr"): "diffir_s2_realsr_x4",
    ("gan", "realsr"): "diffir_s2gan_realsr_x4",
}
"""The packaged recipe each (stage, task) pairs with; real-SR x1 and x2 take the x4 recipe with their own scale (the
official x1/x2 configs differ from x4 only in the scale and the validation data)."""

METHODS = {
    "s1": "ir_lightning.methods.DiffIRS1",
    "s2": "ir_lightning.methods.DiffIRS2",
    "gan": "ir_lightning.methods.DiffIRGAN",
}
NETS = "ir_lightning.nets.diffir"

# --- the DIRformer's keys: official (under `G.`) -> ours (under `restorer.`) -------------------------------------
LEVEL_RULES = (
    *((rf"^encoder_level{n}\.", f"encoders.{n - 1}.") for n in (1, 2, 3)),
    *((rf"^decoder_level{n}\.", f"decoders.{n - 1}.") for n in (1, 2, 3)),
    *((rf"^down{n}_{n + 1}\.body\.0\.", f"downs.{n - 1}.0.") for n in (1, 2, 3)),
    *((rf"^up{n + 1}_{n}\.body\.0\.", f"ups.{n - 1}.0.") for n in (1, 2, 3)),
    (r"^reduce_chan_level2\.", "reduce.0."),
    (r"^reduce_chan_level3\.", "reduce.1."),
    (r"^patch_embed\.proj\.", "embed."),
)
BLOCK_RULES = (
    (r"\.norm([12])\.body\.", r".norm\1."),
    (r"\.attn\.kernel\.0\.", ".attention.modulation.linear."),
    (r"\.attn\.qkv_dwconv\.", ".attention.qkv_dw."),
    (r"\.attn\.", ".attention."),
    (r"\.ffn\.kernel\.0\.", ".feed_forward.modulation.linear."),
    (r"\.ffn\.dwconv\.", ".feed_forward.dw."),
    (r"\.ffn\.", ".feed_forward."),
)
CPEN_RULES = ((r"^E\.", "body."),)
"""CPEN: `E.<i>` (the convolutions, residual blocks and pooling) -> `body.<i>`; `mlp.*` keeps its name."""


def _refuse(key: str, why: str) -> ImportRefused:
    return ImportRefused(f"{key}: {why}")


_shape = partial(shape_of, missing="every DiffIR file of this kind has it")
"""`shape_of` for a key that every file of its kind holds."""


# --- reading a file ----------------------------------------------------------------------------------------------
def _states(obj: Any) -> dict[str, Mapping[str, Any]] | None:
    """The BasicSR wrappers of a loaded file (`params_ema` first), or None when it is not such a file."""
    if not isinstance(obj, Mapping) or not obj or any(key not in WRAPPERS for key in obj):
        return None
    states = {key: obj[key] for key in WRAPPERS if key in obj}
    return states if all(isinstance(state, Mapping) and state for state in states.values()) else None


def _keys_of(obj: Any) -> set[str]:
    states = _states(obj)
    return {key for state in states.values() for key in state if isinstance(key, str)} if states else set()


def detect_stage1(obj: Any) -> bool:
    """A BasicSR file of the official `DiffIRS1`: `G.*` and `E.E.*`, no stage-2 members."""
    try:
        keys = _keys_of(obj)
        has = lambda prefix: any(key.startswith(prefix) for key in keys)
        return has("G.patch_embed.") and has("E.E.") and not has("condition.") and not has("denoise.")
    except Exception:  # noqa: BLE001 - detection never raises
        return False


def detect_stage2(obj: Any) -> bool:
    """A BasicSR file of the official `DiffIRS2` (stage 2 or S2-GAN): `G.*`, `condition.E.*`, `denoise.*`."""
    try:
        keys = _keys_of(obj)
        has = lambda prefix: any(key.startswith(prefix) for key in keys)
        return has("G.patch_embed.") and has("condition.E.") and has("denoise.")
    except Exception:  # noqa: BLE001 - detection never raises
        return False


def _wrapped(obj: Any, fmt: str) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    """{"params_ema"/"params": tensors} of the file and the report line on which weights are used for what."""
    states = _states(obj)
    if states is None:
        keys = listed([str(key) for key in obj]) if isinstance(obj, Mapping) else type(obj).__name__
        raise ImportRefused(f"not a BasicSR {fmt} file: expected the keys params_ema and/or params, got {keys}")
    states = {key: tensors(state, key) for key, state in states.items()}
    if len(states) == 2:
        line = "weights: params_ema (the EMA weights the official configs load) -> restoring; params -> trained weights"
    else:
        (key,) = states
        line = f"weights: {key} only (no {'params' if key == 'params_ema' else 'params_ema'} in the file) -> restoring"
    return states, [line]


# --- the networks' arguments from the shapes ----------------------------------------------------------------------
def _cpen(state: Mapping[str, Tensor], prefix: str, with_gt: bool) -> tuple[dict[str, Any], int, list[str]]:
    """CPEN's arguments (official keys under `prefix`: `E.<i>`, `mlp.<i>`), and the scale its LQ input says."""
    features, in_channels = _shape(state, "E.0.weight", prefix=prefix)[:2]
    lq_channels = in_channels - (IMAGE_CHANNELS * PRIOR_GRID**2 if with_gt else 0)
    scales = {IMAGE_CHANNELS * (PRIOR_GRID // s) ** 2: s for s in (1, 2, 4)}
    if lq_channels not in scales:
        what = f"{in_channels} input channels" + (
            f" ({IMAGE_CHANNELS * PRIOR_GRID**2} of them the GT's)" if with_gt else ""
        )
        raise _refuse(f"{prefix}E.0.weight", f"{what}: the LQ part must be 48, 12 or 3 channels (scale 1, 2 or 4)")
    res_blocks = len(indices(state, r"^E\.(\d+)\.body\.0\.weight$"))
    args = {"scale": scales[lq_channels], "with_gt": with_gt, "res_blocks": res_blocks, "features": features}
    line = f"{lq_channels} LQ channels in {prefix}E.0.weight: scale x{scales[lq_channels]}"
    return args, scales[lq_channels], [line]


def _expansion(pairs: list[tuple[int, int]], prefix: str) -> float:
    """The shortest decimal e with int(C e) = hidden for every block's (C, hidden) (the official `int(dim * ffn)`)."""
    low = max(hidden / channels for channels, hidden in pairs)
    for digits in range(1, 7):
        candidate = round(math.ceil(low * 10**digits - 1e-9) / 10**digits, digits)
        if all(int(channels * candidate) == hidden for channels, hidden in pairs):
            return candidate
    widths = ", ".join(f"{hidden} at {channels}" for channels, hidden in pairs)
    raise _refuse(f"{prefix}*.ffn.project_out.weight", f"no FFN expansion gives these hidden widths: {widths}")


def _tail(state: Mapping[str, Tensor], prefix: str) -> tuple[int, int, list[tuple[str, str]]]:
    """(up-sampling of the output layers, output channels, key rules): a plain conv (`output`) or the SR tail
    (`tail.0.<2i>` conv + pixel shuffle per factor, `tail.1` the last conv)."""
    if "output.weight" in state:
        return 1, state["output.weight"].shape[0], []
    convs = indices(state, r"^tail\.0\.(\d+)\.weight$")
    out_channels = _shape(state, "tail.1.weight", prefix=prefix)[0]
    factor = 1
    for index in convs:
        weight = state[f"tail.0.{index}.weight"]
        ratio = weight.shape[0] // weight.shape[1]
        if ratio not in (4, 9):
            raise _refuse(
                f"{prefix}tail.0.{index}.weight", f"shape {tuple(weight.shape)} is no pixel-shuffle up-sampler"
            )
        factor *= math.isqrt(ratio)
    return factor, out_channels, [(r"^tail\.0\.", "output."), (r"^tail\.1\.", f"output.{2 * len(convs)}.")]


def _dirformer(state: Mapping[str, Tensor], scale: int, prefix: str) -> tuple[dict[str, Any], list, list[str]]:
    """The DIRformer's arguments, its key rules and report lines, from the official `G.*` (under `prefix`)."""
    dim, embed_in = _shape(state, "patch_embed.proj.weight", prefix=prefix)[:2]
    factor, out_channels, tail_rules = _tail(state, prefix)
    if factor % scale:
        key = f"{prefix}{'output.weight' if factor == 1 else 'tail.0.0.weight'}"
        raise _refuse(key, f"an output up-sampling by {factor} cannot serve scale x{scale} (read from the CPEN)")
    unshuffle = factor // scale
    in_channels = embed_in // unshuffle**2
    if in_channels * unshuffle**2 != embed_in:
        raise _refuse(
            f"{prefix}patch_embed.proj.weight", f"{embed_in} inputs are no unshuffle by {unshuffle} of an image"
        )
    stages = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    num_blocks = [len(indices(state, rf"^{stage}\.(\d+)\.")) for stage in stages]
    heads = [_shape(state, f"{stage}.0.attn.temperature", prefix=prefix)[0] for stage in stages]
    ffn = re.compile(r"^\w+\.\d+\.ffn\.project_out\.weight$")
    pairs = sorted({tuple(w.shape[:2]) for key, w in state.items() if ffn.match(key)})
    args = {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "dim": dim,
        "num_blocks": num_blocks,
        "num_refinement_blocks": len(indices(state, r"^refinement\.(\d+)\.")),
        "heads": heads,
        "ffn_expansion": _expansion(pairs, prefix),
        "bias": "encoder_level1.0.attn.qkv.bias" in state,
        "layernorm": "with_bias" if "encoder_level1.0.norm1.body.bias" in state else "bias_free",
        "scale": scale,
        "unshuffle": unshuffle,
        "ipr_dim": _shape(state, "encoder_level1.0.attn.kernel.0.weight", prefix=prefix)[1],
    }
    lines = [
        f"DIRformer from the shapes: dim {dim}, blocks {num_blocks} + {args['num_refinement_blocks']} refinement, "
        f"heads {heads}, ffn_expansion {args['ffn_expansion']} (hidden widths "
        f"{', '.join(str(hidden) for _, hidden in pairs)}), {args['layernorm'].replace('_', '-')} LayerNorm, "
        f"{'with' if args['bias'] else 'no'} conv biases, "
        + ("a plain output conv (deblurring)" if factor == 1 else f"an x{factor} pixel-shuffle tail (real-world SR)")
    ]
    if unshuffle > 1:
        lines.append(
            f"real-SR x{scale}: the DIRformer pixel-unshuffles the LQ by {unshuffle} ({embed_in} channels into "
            f"{prefix}patch_embed.proj) and up-samples by {factor} at the tail"
        )
    return args, [*LEVEL_RULES, *BLOCK_RULES, *tail_rules], lines


def _denoiser(state: Mapping[str, Tensor], n_steps: int) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The IPR denoiser's arguments and key rules: official `resmlp.0` (the first Linear), then `resmlp.<k>.resmlp.0`
    for k >= 2 (one Linear each) -> ours `mlp.0`, `mlp.<2k - 2>`."""
    ipr_dim = _shape(state, "resmlp.0.weight", prefix="denoise.")[0]
    hidden = indices(state, r"^resmlp\.(\d+)\.resmlp\.0\.")
    rules = [(r"^resmlp\.0\.", "mlp.0."), *((rf"^resmlp\.{k}\.resmlp\.0\.", f"mlp.{2 * k - 2}.") for k in hidden)]
    return {"ipr_dim": ipr_dim, "hidden_layers": len(hidden), "n_steps": n_steps}, rules


def _network(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"class_path": f"{NETS}.{name}", "init_args": args}


# --- stage-2 extras: the duplicates and the schedule --------------------------------------------------------------
def _prior_schedule(state: Mapping[str, Tensor]) -> tuple[dict[str, Any], list[str]]:
    """The prior schedule the file's `diffusion.betas` holds (the official 'linear' = linspace of sqrt(beta): our
    'quad'), checked against the buffers; the official default where the file has none."""
    buffers = strip_prefix(state, "diffusion.")
    present = [name for name in DDPM_SCHEDULE_BUFFERS if name in buffers]
    if not present:
        return dict(DEFAULT_PRIOR), ["no schedule buffers (diffusion.betas ...): the official prior schedule assumed"]
    if len(present) != len(DDPM_SCHEDULE_BUFFERS):
        missing = [f"diffusion.{name}" for name in DDPM_SCHEDULE_BUFFERS if name not in buffers]
        raise ImportRefused(f"schedule buffers missing: {listed(missing)}")
    betas = buffers["betas"].double()
    start, end = (shortest_decimal(betas[i].item(), buffers["betas"].dtype) for i in (0, -1))  # what a config gave
    schedule = {"kind": "quad", "n_steps": betas.numel(), "linear_start": start, "linear_end": end}
    expected = make_betas("quad", schedule["n_steps"], schedule["linear_start"], schedule["linear_end"])
    if not torch.allclose(betas, expected, rtol=1e-5, atol=1e-7):
        raise _refuse(
            "diffusion.betas", f"{betas.tolist()} is not beta evenly spaced in sqrt(beta) (the official schedule)"
        )
    if not torch.allclose(buffers["alphas_cumprod"].double(), gammas_from_betas(expected), rtol=1e-5, atol=1e-7):
        raise _refuse("diffusion.alphas_cumprod", "is not the cumulative product of 1 - diffusion.betas")
    line = (
        f"prior schedule from diffusion.betas: T = {schedule['n_steps']}, beta from {schedule['linear_start']} to "
        f"{schedule['linear_end']}, evenly spaced in sqrt(beta)"
    )
    return schedule, [line]


def _without_duplicates(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """The file without `diffusion.*`: its copies of the denoiser and CPEN_S2 (each checked equal to the kept
    `denoise.*` / `condition.*` tensor) and its schedule buffers."""
    kept, dropped = drop_keys(state, [r"diffusion\."])
    copies = {"diffusion.model.": "denoise.", "diffusion.condition.": "condition."}
    unknown = []
    for key in dropped:
        source = next((key.replace(copy, kept_as, 1) for copy, kept_as in copies.items() if key.startswith(copy)), None)
        if source is None:
            if key.removeprefix("diffusion.") not in DDPM_SCHEDULE_BUFFERS:
                unknown.append(key)
            continue
        if source not in state:
            raise _refuse(key, f"a copy of {source}, which the file does not hold")
        if state[key].shape != state[source].shape or not torch.equal(state[key], state[source]):
            raise _refuse(
                key, f"differs from {source}: the official wrapper holds one module twice, so they must agree"
            )
    if unknown:
        raise ImportRefused(f"unknown keys: {listed(unknown)}")
    n_copies = sum(key.startswith(tuple(copies)) for key in dropped)
    line = (
        f"dropped {len(dropped)} tensors under diffusion.*: {n_copies} copies of the denoiser and CPEN_S2 "
        f"(diffusion.model.*, diffusion.condition.*; checked equal to denoise.* and condition.*) and "
        f"{len(dropped) - n_copies} schedule buffers"
    )
    return kept, [line]


# --- the conversion -----------------------------------------------------------------------------------------------
def _renamed(state: Mapping[str, Tensor], parts: dict[str, tuple[str, Sequence[tuple[str, str]]]]) -> dict[str, str]:
    """{file key: the method's key}; `parts` maps an official prefix to (our prefix, its rules). A key under no part
    is refused."""
    stray = [key for key in state if not key.startswith(tuple(parts))]
    if stray:
        raise ImportRefused(f"unknown keys: {listed(stray)}")
    ours: dict[str, str] = {}
    for official, (prefix, rules) in parts.items():
        renames = key_renames(strip_prefix(state, official), rules)
        ours |= {official + old: prefix + new for old, new in renames.items()}
    return ours


def _fitted(state: Mapping[str, Tensor], ours: dict[str, str], networks: dict[str, dict], which: str) -> dict:
    """The weights under the method's keys, after checking them against the networks built from `networks` (on the
    meta device: only the shapes are compared); else one refusal naming every kind of misfit and the file's keys
    (ours for the missing)."""
    classes = {"DIRformer": DIRformer, "CPEN": CPEN, "IPRDenoiser": IPRDenoiser}
    expected = {
        f"{name}.{key}": shape
        for name, spec in networks.items()
        for key, shape in meta_shapes(classes[spec["class_path"].rsplit(".", 1)[-1]], spec["init_args"]).items()
    }
    found = key_misfits(state, ours, expected)
    problems = [
        f"{label}: {listed(keys)}"
        for label, keys in zip(("unexpected keys", "missing", "other shapes"), found, strict=True)
        if keys
    ]
    if problems:
        raise ImportRefused(f"{which} does not fit the networks read from its shapes: {'; '.join(problems)}")
    return {ours[key]: value for key, value in state.items()}


def _convert(obj: Any, stage: str) -> Imported:
    """The file's networks (read from its shapes) and weights; `stage` "s1" or "s2" (the file's kind)."""
    states, report = _wrapped(obj, "DiffIR stage-1" if stage == "s1" else "DiffIR stage-2")
    state = next(iter(states.values()))  # params_ema where the file has it
    cpen_prefix, cpen_name = ("E.", "cpen_s1") if stage == "s1" else ("condition.", "cpen_s2")
    cpen_args, scale, cpen_lines = _cpen(strip_prefix(state, cpen_prefix), cpen_prefix, with_gt=stage == "s1")
    restorer_args, restorer_rules, restorer_lines = _dirformer(strip_prefix(state, "G."), scale, "G.")
    networks = {"restorer": _network("DIRformer", restorer_args), cpen_name: _network("CPEN", cpen_args)}
    parts = {"G.": ("restorer.", restorer_rules), cpen_prefix: (f"{cpen_name}.", CPEN_RULES)}
    settings: dict[str, Any] = {"scale": scale}
    report += [*restorer_lines, *cpen_lines]
    if stage != "s1":
        schedule, schedule_lines = _prior_schedule(state)
        denoiser_args, denoiser_rules = _denoiser(strip_prefix(state, "denoise."), schedule["n_steps"])
        networks["denoiser"] = _network("IPRDenoiser", denoiser_args)
        parts["denoise."] = ("denoiser.", denoiser_rules)
        settings["prior_schedule"] = schedule
        report += schedule_lines
    converted: dict[str, dict[str, Tensor]] = {}
    for wrapper, weights in states.items():
        if stage != "s1":
            weights, dropped_lines = _without_duplicates(weights)
            report += dropped_lines if wrapper == next(iter(states)) else []
        converted[wrapper] = _fitted(weights, _renamed(weights, parts), networks, wrapper)
    task = "deblur" if restorer_args["scale"] * restorer_args["unshuffle"] == 1 else "realsr"
    return Imported(
        method=METHODS[stage],
        networks=networks,
        state_dict=next(iter(converted.values())),
        trained_state_dict=converted["params"] if len(converted) == 2 else None,
        settings=settings,
        recipe=RECIPES[stage, task],
        report=report,
    )


def convert_stage1(obj: Any, variant: str | None = None) -> Imported:
    """A stage-1 file -> `DiffIRS1` (DIRformer + CPEN_S1)."""
    return _with_recipe_scale(_convert(obj, "s1"))


def _with_recipe_scale(imported: Imported) -> Imported:
    """Real-SR x1 and x2 take the x4 recipe's settings, with their own scale (the suite has x4 recipes only)."""
    scale = imported.settings["scale"]
    if imported.recipe.endswith("_x4") and scale != 4:
        unshuffle = 4 // scale
        imported.report.append(
            f"recipe {imported.recipe} with scale {scale} (the official x{scale} configs differ from x4 in the scale "
            "and the validation data only); to fine-tune it (fit --init_weights) give the recipe "
            f"--model.init_args.scale={scale} --model.init_args.restorer.init_args.scale={scale} "
            f"--model.init_args.restorer.init_args.unshuffle={unshuffle}, --model.init_args.cpen_s1.init_args.scale={scale} "
            f"(and cpen_s2's in stage 2), "
            f"--data.init_args.scale={scale} and a x{scale} degradation"
        )
    return imported


def convert_stage2(obj: Any, variant: str | None = None) -> Imported:
    """A stage-2 file -> `DiffIRS2` (variant "s2") or `DiffIRGAN` (variant "gan"): DIRformer, CPEN_S2, denoiser."""
    stage = variant or "s2"
    if stage not in ("s2", "gan"):
        raise ImportRefused(f"variant {stage!r}: a stage-2 file is imported as s2 or gan")
    imported = _convert(obj, "s2")
    if stage == "gan":
        if imported.recipe.endswith("gopro"):
            raise ImportRefused(
                "variant gan: G.output (no SR tail) is a deblurring network; the official code fine-tunes S2-GAN "
                "for real-world SR only"
            )
        imported.method, imported.recipe = METHODS["gan"], RECIPES["gan", "realsr"]
    cpen_s2 = imported.networks["cpen_s2"]["init_args"]
    imported.networks["cpen_s1"] = _network("CPEN", {**cpen_s2, "with_gt": True})
    imported.exported_without = ["cpen_s1"]
    imported.report.append(
        "CPEN_S1 (stage 2's teacher, training only) is not in a stage-2 file: left out (exported_without), "
        "configured as CPEN_S2 with the GT (the official configs give both one n_encoder_res)"
    )
    if stage == "gan":
        imported.exported_without.append("discriminator")
        imported.settings |= {"stage2_ckpt": None, "perceptual": None}
        imported.report += [
            "S2-GAN (variant gan): no discriminator in the file (the official net_g files hold the generator only): "
            "left out (exported_without); a fine-tuning starts the recipe's afresh",
            "perceptual loss: none (its VGG19 is a training-only weight file; a fine-tuning recipe names it)",
        ]
    else:
        imported.settings["stage1_ckpt"] = None
        imported.report.append(
            "stage 2 or S2-GAN cannot be told from the weights (one network, the same keys): imported as DiffIRS2 "
            "(variant gan: DiffIRGAN); both restore alike"
        )
    return _with_recipe_scale(imported)


FORMATS = (
    OfficialFormat(
        name="diffir-s1",
        source=f"{SOURCE} stage 1, BasicSR params/params_ema (GoPro net_g_latest.pth, DiffIRS1.pth, SISR-DiffIRS1.pth)",
        detect=detect_stage1,
        convert=convert_stage1,
    ),
    OfficialFormat(
        name="diffir-s2",
        source=(
            f"{SOURCE} stage 2 / S2-GAN, BasicSR params/params_ema (GoPro net_g_latest.pth, DiffIRS2.pth, "
            "DiffIRS2-GAN*.pth x1/x2/x4 and V2, SISR-DiffIRS2-GAN.pth)"
        ),
        detect=detect_stage2,
        convert=convert_stage2,
        variants=("s2", "gan"),
    ),
)
