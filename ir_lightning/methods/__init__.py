"""One LightningModule per method; importing this package registers them for `class_path`."""

from ir_lightning.methods.base import Restoration, RestorationModule
from ir_lightning.methods.deqir import DeqIR
from ir_lightning.methods.diffir import DiffIRGAN, DiffIRS1, DiffIRS2
from ir_lightning.methods.noise_da import DenoisingAsAdaptation
from ir_lightning.methods.rddm import RDDM, RDDMSchedule
from ir_lightning.methods.settings import NoiseSchedule, Sampling
from ir_lightning.methods.sr3 import SR3

__all__ = [
    "Restoration",
    "RestorationModule",
    "DenoisingAsAdaptation",
    "DeqIR",
    "DiffIRGAN",
    "DiffIRS1",
    "DiffIRS2",
    "RDDM",
    "RDDMSchedule",
    "SR3",
    "NoiseSchedule",
    "Sampling",
]
