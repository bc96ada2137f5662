"""The Python API: load a checkpoint of the suite and restore images in memory.

    import ir_lightning
    from PIL import Image

    model = ir_lightning.load("runs/sr3_x4/checkpoints/last.ckpt")  # a .ckpt, a .safetensors file or a model folder
    restored = model.restore(Image.open("photo.png"))                # PIL in, PIL out; numpy arrays and tensors too
    print(model.info())                                             # method, scale, sampling, steps, weights, ...

`load` is `ir-lightning restore`'s loading (`ir_lightning.inference.loading.read_method`: the method read from the
file and checked against the allow-list, nothing the file names imported, the EMA weights unless `ema=False`,
any setting of the method changed for restoring), and `RestorationModel.restore` its restoring: tiles of `tile`
input pixels (256, overlapping by 32, blended; 0: whole images) where the method allows, at the prior's own size
where it works at one (`RestorationModule.native_tile`). What the network does not see is kept as `ir-lightning
restore` keeps it in files (`ir_lightning.io.images`): a grey image comes back grey (the mean of the three
restored channels), an alpha channel untouched (resized with the image where the method changes the size), and
each input comes back as the kind, dtype and layout it came in:

- a torch tensor, C x H x W or B x C x H x W, float in [0, 1] or uint8 (C = 1 grey, 2 grey + alpha, 3 RGB,
  4 RGBA): a tensor of the same dtype on the input's device;
- a PIL image (1, L, LA, P, PA, RGB, RGBA, I;16, I, F, and others through RGB): a PIL image of the same family
  (grey stays grey, alpha stays alpha; a palette image comes back RGB or RGBA);
- a numpy array, H x W or H x W x C, uint8, uint16 or float in [0, 1]: an array of the same dtype and layout.

`RestorationModel.from_pretrained(folder)` reads a model folder (`ir-lightning export --format folder`) with the
signature of Hugging Face's `PyTorchModelHubMixin.from_pretrained`, from a local folder only: nothing is
downloaded. The mixin itself does not fit: it builds the class from `config.json` without the allow-list check,
loads the weights into an `nn.Module` of its own, and downloads when the folder is not found.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torch import Tensor

    from ir_lightning.inference.loading import LoadedMethod
    from ir_lightning.methods.base import RestorationModule

# torch, numpy and Pillow are imported when a model is loaded or used: `import ir_lightning` stays light.

DEFAULT_TILE = 256
"""Tile side in input pixels (`ir-lightning restore --tile`'s default); 0 restores whole images."""
DEFAULT_OVERLAP = 32
"""Overlap of neighbouring tiles in input pixels (`--overlap`'s default)."""
DEFAULT_TILE_BATCH = 4
"""Tiles per network call (`--tile-batch`'s default)."""

ARRAY_PEAKS = {"uint8": 255, "uint16": 65535}
"""The integer pixel types a numpy image may have, by dtype name, and their peak value (floats are in [0, 1])."""
TENSOR_PEAKS = {"uint8": 255}
"""The integer pixel types a tensor image may have (torch has no unsigned 16-bit arithmetic on every device)."""


def load(
    source: str | os.PathLike,
    device: str | torch.device = "auto",
    ema: bool = True,
    *,
    method: str | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    operator: str | None = None,
    color_fix: str | None = None,
    consistency: str | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    tile_batch: int = DEFAULT_TILE_BATCH,
    progress: bool = False,
    **settings: Any,
) -> RestorationModel:
    """The method a checkpoint of the suite holds, ready to restore (see the module docstring).

    Args:
        source: a checkpoint (training, exported or imported), a safetensors export or a model folder.
        device: `auto` (CUDA when available, else the CPU), `cpu`, `cuda:1`, ... or a torch.device.
        ema: the EMA weights (the checkpoint's `state_dict`); False: the trained weights of a training checkpoint.
        method: check that the checkpoint holds this method (e.g. "deqir"); never needed.
        steps, sampler, operator: `ir-lightning restore`'s shortcuts (sampling.steps; sampling.sampler or
            sampling.solver.method; DeqIR's operator).
        color_fix, consistency: the post-processing every method has (`--color-fix`, `--consistency`): `none`,
            `wavelet` or `adain` colour fix; the degradation's operator by name (`bicubic4`, `sr4`, ...) to
            make the restoration consistent with the input. None keeps the checkpoint's own settings; `none`
            turns them off. See docs/postprocess.md.
        tile, overlap, tile_batch: the tiling (tile 0: whole images); a method that works at one size only tiles
            at it, and one whose restoration depends on the whole image never tiles.
        progress: show the sampling steps and tiles.
        **settings: any other setting of the method's constructor, as a Python value; a mapping given for a
            dataclass setting changes the fields it names (`sampling={"eta": 1.0}`), and a dotted name one field
            (`**{"sampling.solver.tolerance": 1e-4}`).

    Raises `ir_lightning.inference.loading.RestoreError` (one line naming the file) when the file or a setting
    cannot serve.
    """
    from ir_lightning.inference.loading import Options, chosen_device, read_method

    options = Options(
        method=method,
        no_ema=not ema,
        steps=steps,
        sampler=sampler,
        operator=operator,
        color_fix=color_fix,
        consistency=consistency,
        values=settings,
    )
    target = chosen_device(device) if isinstance(device, str) else device
    return RestorationModel(read_method(Path(source), options, target), tile, overlap, tile_batch, progress)


def native_tiling(module: RestorationModule, tile: int, overlap: int) -> tuple[int, int]:
    """(tile, overlap) for restoring with `module`: as asked, unless its network works at one image size only
    (`native_tile`): then that size, with the overlap reduced to half of it at most."""
    native = module.native_tile()
    if native is None or tile == native:
        return tile, overlap
    return native, min(overlap, native // 2)


class RestorationModel:
    """A method of the suite loaded for restoring (`load`, `from_pretrained`): `restore(image)` for tensors, PIL
    images and numpy arrays, `info()` for what it is; the LightningModule itself is `module`."""

    def __init__(
        self,
        loaded: LoadedMethod,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        tile_batch: int = DEFAULT_TILE_BATCH,
        progress: bool = False,
    ) -> None:
        if tile < 0 or tile_batch < 1 or (tile > 0 and not 0 <= overlap < tile):
            raise ValueError(
                f"need tile >= 0, 0 <= overlap < tile and tile_batch >= 1; got tile={tile}, overlap={overlap}, "
                f"tile_batch={tile_batch}"
            )
        self.module: RestorationModule = loaded.module
        self.loaded = loaded
        self.tile, self.overlap = native_tiling(self.module, tile, overlap)
        self.tile_batch, self.progress = tile_batch, progress

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = True,
        revision: str | None = None,
        **model_kwargs: Any,
    ) -> RestorationModel:
        """A model folder (`config.json` + `model.safetensors`, `ir-lightning export --format folder`), with the
        signature of `huggingface_hub.PyTorchModelHubMixin.from_pretrained`; `model_kwargs` are `load`'s. Local
        folders only: the download options (`force_download`, `token`, `cache_dir`, `revision`,
        `local_files_only=False`) are refused, and a path that is no model folder is not looked up online."""
        from ir_lightning.io.weights import MODEL_CONFIG, MODEL_WEIGHTS, is_model_folder

        remote = {"force_download": force_download, "token": token, "cache_dir": cache_dir, "revision": revision}
        asked = [name for name, value in remote.items() if value not in (None, False)]
        if asked or not local_files_only:
            asked += [] if local_files_only else ["local_files_only=False"]
            raise ValueError(
                f"from_pretrained reads local model folders only (nothing is downloaded); refused: {', '.join(asked)}"
            )
        folder = Path(pretrained_model_name_or_path)
        if not is_model_folder(folder):
            raise FileNotFoundError(
                f"{folder}: no model folder ({MODEL_CONFIG} + {MODEL_WEIGHTS}; ir-lightning export --format folder "
                f"writes one); from_pretrained reads local folders only, nothing is downloaded"
            )
        return load(folder, **model_kwargs)

    # --- what it is ------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.module.device

    def to(self, device: str | torch.device) -> RestorationModel:
        """Move the method to `device` (restoring runs there; outputs come back where their inputs were)."""
        self.module.to(device)
        return self

    def info(self) -> dict[str, Any]:
        """What the model is: `method` and `class_path`, `scale`, `sampling` (sampler or solver settings; DiffIR:
        its prior schedule), `operator` (DeqIR), the run's `training` record (recipe config, data) and
        `validation` scores where recorded, `global_step` and `epoch` trained, `weights` (ema, trained, or what
        the file says), `imported_from`, `exported_without`, `license`, `source` (the file) and its `format`
        (ckpt, safetensors, folder), the `post_processing` (`color_fix`, `consistency`), the tiling, the device,
        the parameter count and all `hyper_parameters`."""
        import copy

        record = self.loaded.record
        hparams = copy.deepcopy(record.get("hyper_parameters") or {})
        return {
            "method": type(self.module).__name__,
            "class_path": hparams.get("_class_path"),
            "scale": scale_of(self.module),
            "sampling": sampling_of(self.module, hparams),
            "operator": getattr(self.module, "operator_name", None),
            "training": copy.deepcopy(record.get("training")),
            "validation": copy.deepcopy(record.get("validation")),
            "global_step": record.get("global_step"),
            "epoch": record.get("epoch"),
            "weights": self.loaded.weights,
            "imported_from": copy.deepcopy(record.get("imported_from")),
            "exported_without": list(record.get("exported_without") or []),
            "license": record.get("license"),
            "ir_lightning_version": record.get("ir_lightning_version"),
            "source": str(self.loaded.source),
            "format": self.loaded.layout,
            "post_processing": {
                "color_fix": getattr(self.module, "color_fix", "none"),
                "consistency": getattr(self.module, "consistency", None),
            },
            "tileable": self.module.tileable,
            "tile": self.tile,
            "overlap": self.overlap,
            "tile_batch": self.tile_batch,
            "device": str(self.device),
            "parameters": sum(p.numel() for p in self.module.parameters()),
            "hyper_parameters": hparams,
        }

    def __repr__(self) -> str:
        return (
            f"RestorationModel({type(self.module).__name__} from {self.loaded.source}, {self.loaded.weights} weights)"
        )

    # --- restoring -------------------------------------------------------------------------------------------------
    def __call__(self, image: Any) -> Any:
        return self.restore(image)

    def restore(self, image: Any) -> Any:
        """The restored image, of the kind, dtype and layout `image` came in (see the module docstring)."""
        import numpy as np
        import torch
        from PIL import Image

        if isinstance(image, torch.Tensor):
            return self.restore_tensor(image)
        if isinstance(image, Image.Image):
            return self.restore_pil(image)
        if isinstance(image, np.ndarray):
            return self.restore_array(image)
        raise TypeError(f"restore takes a torch tensor, a PIL image or a numpy array; got a {type(image).__name__}")

    def restore_rgb(self, rgb: Tensor) -> Tensor:
        """The method's restoration of one RGB image (1 x 3 x H x W in [0, 1]), tiled where it allows, as float32
        in [0, 1] on the CPU."""
        import torch

        from ir_lightning.inference.tiling import restore_tiled

        def restore(lq: Tensor) -> Tensor:
            return self.module.restore(lq, progress=self.progress)

        lq = rgb.to(self.device, torch.float32)
        with torch.no_grad():
            if self.tile > 0 and self.module.tileable:
                restored = restore_tiled(restore, lq, self.tile, self.overlap, self.tile_batch, self.progress)
            else:
                restored = restore(lq)
        return restored.detach().float().cpu().clamp(0, 1)

    def restore_planes(self, colour: Tensor) -> Tensor:
        """Restore c x H x W colour planes in [0, 1] (c = 1: grey, restored as RGB and averaged back, as
        `ir_lightning.io.images` writes a grey input, unless the method colourises; c = 3: RGB); float32 on the
        CPU."""
        grey = colour.shape[0] == 1
        restored = self.restore_rgb((colour.expand(3, -1, -1) if grey else colour)[None])[0]
        return restored.mean(0, keepdim=True) if grey and not self.module.colourises else restored

    def restore_array(self, array: np.ndarray) -> np.ndarray:
        """A numpy image (H x W, or H x W x C with C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA; uint8, uint16 or
        float in [0, 1]) restored into an array of the same dtype and layout."""
        import numpy as np
        import torch

        channels = check_layout(array.shape, channel_axis=-1, what="a numpy image")
        peak = check_dtype(array.dtype.name, array.dtype.kind == "f", ARRAY_PEAKS, "a numpy image")
        pixels = array.reshape(*array.shape[:2], channels)
        colour, alpha = split_alpha(pixels, channels, axis=-1)
        planes = torch.from_numpy(np.array(colour.transpose(2, 0, 1), dtype=np.float32, order="C"))  # a copy
        check_range(planes, peak, "a numpy image")
        restored = self.restore_planes(planes / peak if peak else planes)
        size = tuple(restored.shape[-2:])
        out = [quantised(restored.numpy(), peak, array.dtype)]
        if alpha is not None:
            out.append(resized_alpha(alpha[..., 0], size, peak)[None])
        result = np.concatenate(out).transpose(1, 2, 0)
        return result[..., 0] if array.ndim == 2 and result.shape[-1] == 1 else result  # colorization: H x W x 3

    def restore_pil(self, image: Image.Image) -> Image.Image:
        """A PIL image restored into a PIL image of the same mode family (see the module docstring)."""
        import numpy as np
        from PIL import Image

        pixels, mode = pil_pixels(image)
        restored = self.restore_array(pixels)
        if mode == "I":
            restored = restored.astype(np.int32)
        return Image.fromarray(restored)

    def restore_tensor(self, tensor: Tensor) -> Tensor:
        """A tensor image or batch (C x H x W or B x C x H x W; uint8 or float in [0, 1]) restored into a tensor
        of the same dtype and layout on the input's device, image by image."""
        import torch

        if tensor.ndim not in (3, 4):
            raise ValueError(f"a tensor image is C x H x W or B x C x H x W; got shape {tuple(tensor.shape)}")
        channels = check_layout(tensor.shape[-3:], channel_axis=0, what="a tensor image")
        peak = check_dtype(
            str(tensor.dtype).removeprefix("torch."), tensor.is_floating_point(), TENSOR_PEAKS, "a tensor image"
        )
        batch = tensor.reshape(-1, *tensor.shape[-3:])
        results = []
        for image in batch:
            colour, alpha = split_alpha(image, channels, axis=0)
            planes = colour.detach().cpu().to(torch.float32)
            check_range(planes, peak, "a tensor image")
            restored = self.restore_planes(planes / peak if peak else planes)
            out = [quantised(restored, peak, tensor.dtype)]
            if alpha is not None:
                out.append(resized_alpha(alpha[0].cpu(), tuple(restored.shape[-2:]), peak)[None])
            results.append(torch.cat(out).to(tensor.device))
        stacked = torch.stack(results)
        return stacked[0] if tensor.ndim == 3 else stacked


# --- conventions of the image kinds ----------------------------------------------------------------------------
def check_layout(shape: tuple[int, ...], channel_axis: int, what: str) -> int:
    """The channel count of an image of `shape` (H x W: 1), refused unless 1 to 4."""
    if len(shape) == 2 and channel_axis == -1:
        return 1
    channels = shape[channel_axis] if len(shape) == 3 else 0
    if channels not in (1, 2, 3, 4):
        layout = "H x W or H x W x C" if channel_axis == -1 else "C x H x W"
        raise ValueError(f"{what} is {layout} with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); got {shape}")
    return channels


def check_dtype(name: str, floating: bool, peaks: dict[str, int], what: str) -> int | None:
    """The peak value of an integer pixel type of `peaks`, None for a float type; others refused."""
    if floating:
        return None
    if name not in peaks:
        raise TypeError(f"{what} must be {', '.join(peaks)} or float (in [0, 1]); got {name}")
    return peaks[name]


FLOAT_RANGE_SLACK = 1e-3
"""How far outside [0, 1] a float image may reach (rounding of a conversion) before it is refused."""


def check_range(planes: Tensor, peak: int | None, what: str) -> None:
    """Refuse float pixels outside [0, 1] (an image in 0..255 given as floats would come back nearly white)."""
    if peak is not None or planes.numel() == 0:
        return
    low, high = float(planes.min()), float(planes.max())
    if low < -FLOAT_RANGE_SLACK or high > 1 + FLOAT_RANGE_SLACK or planes.isnan().any():
        raise ValueError(
            f"{what} of floats must hold values in [0, 1]; got {low:g} .. {high:g} (divide 8-bit values by 255)"
        )


def split_alpha(pixels: Any, channels: int, axis: int) -> tuple[Any, Any]:
    """(colour planes, alpha plane or None) of an image with `channels` along `axis` (2 and 4 carry alpha)."""
    if channels in (2, 4):
        index = [slice(None)] * pixels.ndim
        colour, alpha = list(index), list(index)
        colour[axis], alpha[axis] = slice(0, channels - 1), slice(channels - 1, channels)
        return pixels[tuple(colour)], pixels[tuple(alpha)]
    return pixels, None


def quantised(values: Any, peak: int | None, dtype: Any) -> Any:
    """Restored planes in [0, 1] as `dtype`: rounded to the nearest of 0..peak for integers (as
    `ir_lightning.io.images` writes them), cast for floats. Numpy arrays or tensors."""
    import numpy as np

    if peak is None:
        return values.astype(dtype) if isinstance(values, np.ndarray) else values.to(dtype)
    if isinstance(values, np.ndarray):
        return np.rint(values * peak).astype(dtype)
    return (values * peak).round().to(dtype)


def resized_alpha(alpha: Any, size: tuple[int, int], peak: int | None) -> Any:
    """An alpha plane (H x W) untouched when the restoration kept the size, else resized to `size` (bicubic,
    clamped; rounded to integers where it was), as `ir_lightning.io.images` carries it."""
    import numpy as np
    import torch

    from ir_lightning.degradations.resize import bicubic_resize

    if tuple(alpha.shape) == tuple(size):
        return alpha
    is_array = isinstance(alpha, np.ndarray)
    values = torch.from_numpy(alpha.astype(np.float32)) if is_array else alpha.to(torch.float32)
    resized = bicubic_resize((values / peak if peak else values)[None, None], size).clamp(0, 1)[0, 0]
    return quantised(resized.numpy() if is_array else resized, peak, alpha.dtype)


PIL_FAMILIES = {"1": "L", "P": "RGB", "PA": "RGBA", "La": "LA", "RGBa": "RGBA"}
"""PIL modes restored as another of their family (a bilevel image as grey, a palette as RGB, ...); modes
neither listed nor taken as they are (`pil_pixels`) are restored as RGB."""

PIL_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
"""PIL modes with an alpha channel."""


def pil_pixels(image: Image.Image) -> tuple[np.ndarray, str]:
    """The pixels of a PIL image as `restore_array` takes them, and the mode the result is made in: grey modes
    stay grey (8-bit, 16-bit I;16, 32-bit I read as 16-bit values as `ir_lightning.io.images` reads them, float
    F), an alpha channel (or a transparent colour) stays alpha, and the rest goes through RGB."""
    import numpy as np

    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image).astype(np.uint16), ("I" if mode == "I" else "I;16")
    if mode == "F":
        return np.asarray(image, dtype=np.float32), "F"
    has_alpha = mode in PIL_ALPHA_MODES or "transparency" in image.info
    grey = PIL_FAMILIES.get(mode, mode) in ("L", "LA")
    target = ("LA" if has_alpha else "L") if grey else ("RGBA" if has_alpha else "RGB")
    return np.asarray(image.convert(target)), target


def scale_of(module: RestorationModule) -> int | None:
    """The method's output / input size ratio: its `scale`, the operator's for DeqIR (None for compressed
    sensing, whose measurement is no image), else 1."""
    import torch

    scale = getattr(module, "scale", None)
    if isinstance(scale, int):
        return scale
    operator = getattr(module, "operator_name", None)
    if isinstance(operator, str):
        if operator.startswith("cs_"):
            return None
        side = 16
        height, _ = module.image_size(torch.zeros(1, 3, side, side))
        return height // side
    return 1


def sampling_of(module: RestorationModule, hparams: dict[str, Any]) -> dict[str, Any] | None:
    """The sampling settings (sampler, steps, eta, seed, solver) of a diffusion method; DiffIR's prior schedule
    and seed; None for a method that does not sample."""
    sampling = getattr(module, "sampling", None)
    if dataclasses.is_dataclass(sampling):
        settings = dataclasses.asdict(sampling)
        if hasattr(module, "samples"):  # DeqIR: chains averaged per restoration
            settings["samples"] = module.samples
        return settings
    if "prior_schedule" in hparams:
        return {"prior_schedule": hparams["prior_schedule"], "seed": hparams.get("sample_seed")}
    return None
