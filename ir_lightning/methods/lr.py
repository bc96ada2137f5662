"""Alias kept for class paths: recipes, users' YAML and checkpoints' hyperparameters name the learning-rate
schedules `ir_lightning.methods.lr.<Schedule>`; they live in `ir_lightning.training.optim`."""

from ir_lightning.training.optim import Constant, CosineRestarts, LRSchedule, MultiStep, StepDecay, lr_factor

__all__ = ["Constant", "CosineRestarts", "LRSchedule", "MultiStep", "StepDecay", "lr_factor"]
