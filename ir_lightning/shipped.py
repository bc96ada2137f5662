"""The models the package ships (issue 21; docs/models.md): one small checkpoint per method, each trained by
the suite's own commands on colour photographs only (`ir-lightning photos`), exported as EMA weights in float16
(`ir-lightning export --half`), at most `MAX_BYTES` each. `make demo` restores the held-out photos with every one.

Each entry says what the model restores and against which trivial baseline it is judged:

- ``sr_x4``: x4 super-resolution of a bicubic-down-scaled photo; baseline: bicubic up-scaling (for DeqIR, whose
  chain is consistent with its operator, also A^+ y);
- ``camera_noise``: a photo with camera noise (`degradations.CameraNoise`, the DA recipe's validation noise);
  baseline: the noisy input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_BYTES = 8 * 10**6
"""The issue's limit on a shipped checkpoint: 8 MB."""


@dataclass(frozen=True)
class ShippedModel:
    """One shipped checkpoint: `name` (its file is assets/<name>.ckpt), the method's `title` as tables print it,
    the `task` it restores (see the module docstring), and the `recipes` its training stacked (`-c` in order)."""

    name: str
    title: str
    task: str
    recipes: tuple[str, ...]

    @property
    def path(self) -> Path:
        return ASSETS / f"{self.name}.ckpt"


SHIPPED: tuple[ShippedModel, ...] = (
    ShippedModel("sr3_x4", "SR3", "sr_x4", ("sr3_x4", "demo/sr3_x4_cpu", "models/sr3_x4_photos")),
    ShippedModel("rddm_x4", "RDDM", "sr_x4", ("rddm_sr_x4", "demo/rddm_sr_x4_cpu", "models/rddm_sr_x4_photos")),
    ShippedModel(
        "diffir_x4",
        "DiffIR (stage 2)",
        "sr_x4",
        ("diffir_s2_realsr_x4", "demo/diffir_s2_realsr_x4_cpu", "models/diffir_s2_x4_photos"),
    ),
    ShippedModel(
        "deqir_x4",
        "DeqIR",
        "sr_x4",
        ("deqir_faces64", "demo/deqir_cpu", "models/deqir_prior_photos", "models/deqir_prior_photos_ft"),
    ),
    ShippedModel(
        "da_denoise",
        "Denoising as Adaptation",
        "camera_noise",
        ("da_denoise", "demo/da_denoise_cpu", "models/da_denoise_photos"),
    ),
)
"""Every shipped model, in the order `make demo` shows them."""


def shipped(name: str) -> ShippedModel:
    """The shipped model called `name`; a KeyError that lists the names otherwise."""
    for model in SHIPPED:
        if model.name == name:
            return model
    raise KeyError(f"no shipped model {name!r}; shipped: {', '.join(m.name for m in SHIPPED)}")
