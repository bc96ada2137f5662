"""Released checkpoints of the papers' official repositories, turned into checkpoints of this suite.

One module per repository (`sr3`: Janspiry's re-implementation, `rddm`, `diffir`, `noise_da`; `priors`: the
pretrained ADM and DDIM priors DeqIR uses), each with a tuple `FORMATS` of `OfficialFormat`s (`ir_lightning.importing.base`). `ir-lightning import` reads a file with
`weights_only=True`, picks its format (detected from the keys, or named with `--format`), converts it and
writes a checkpoint that `restore`, `evaluate`, `validate`, `predict` and `fit --init_weights` use.
"""

from __future__ import annotations

from importlib import import_module

from ir_lightning.importing.base import Imported, ImportRefused, OfficialFormat

FORMAT_MODULES = ("sr3", "rddm", "diffir", "noise_da", "priors", "diffusers_")
"""The modules of `ir_lightning.importing` that hold formats, in the order `--format` lists them."""


def official_formats() -> dict[str, OfficialFormat]:
    """Every format by its `--format` name."""
    formats: dict[str, OfficialFormat] = {}
    for name in FORMAT_MODULES:
        for fmt in import_module(f"ir_lightning.importing.{name}").FORMATS:
            formats[fmt.name] = fmt
    return formats


__all__ = ["FORMAT_MODULES", "Imported", "ImportRefused", "OfficialFormat", "official_formats"]
