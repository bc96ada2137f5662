"""Learning-rate schedules as plain objects: `schedule(step, base_lr) -> lr` at optimizer step `step`.

A recipe names one by `class_path` (LightningCLI builds it from its typed `__init__`). The method
turns it into a `LambdaLR` factor `lr / base_lr` per parameter group, so the schedule's state is
the step count alone and resumes with the optimizer. `start` shifts a schedule to begin at a later
step (DiffIR's joint phase begins after the prior-only phase).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence


class LRSchedule(ABC):
    """A learning rate as a function of the optimizer step and the optimizer's base rate."""

    @abstractmethod
    def __call__(self, step: int, base_lr: float) -> float:
        """The learning rate at `step` (0 = the first step)."""

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"{type(self).__name__}({settings})"


class Constant(LRSchedule):
    """The base rate throughout."""

    def __call__(self, step: int, base_lr: float) -> float:
        return base_lr


class StepDecay(LRSchedule):
    """base_lr * gamma ** ((step - start) // every): BasicSR's MultiStepLR with evenly spaced
    milestones, and DiffIR stage 2's hand-written decays (prior phase: x0.1 every 60k steps)."""

    def __init__(self, every: int, gamma: float = 0.5, start: int = 0) -> None:
        if every < 1:
            raise ValueError(f"StepDecay: every must be >= 1, got {every}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"StepDecay: gamma must be in (0, 1], got {gamma}")
        self.every, self.gamma, self.start = every, gamma, start

    def __call__(self, step: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (max(0, step - self.start) // self.every)


class MultiStep(LRSchedule):
    """base_lr * gamma ** (number of milestones <= step - start) (torch's MultiStepLR)."""

    def __init__(self, milestones: Sequence[int], gamma: float = 0.5, start: int = 0) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"MultiStep: milestones must be increasing, got {list(milestones)}")
        self.milestones, self.gamma, self.start = list(milestones), gamma, start

    def __call__(self, step: int, base_lr: float) -> float:
        passed = sum(1 for milestone in self.milestones if step - self.start >= milestone)
        return base_lr * self.gamma**passed


class CosineRestarts(LRSchedule):
    """Cosine annealing in cycles (BasicSR's CosineAnnealingRestartCyclicLR, Restormer's schedule).

    Cycle i lasts `periods[i]` steps and goes from `restart_weights[i] * base_lr` (plus its floor)
    down to the floor `eta_mins[i]`: lr = eta_min + w (base_lr - eta_min) (1 + cos(pi s / period)) / 2,
    s the step within the cycle. After the last cycle the rate stays at its floor. A floor above the
    base rate makes the cycle rise instead (DiffIR's GoPro stage 1 has eta_mins [2.85e-4, 1e-6] with
    base 2e-4, as in Restormer's config).
    """

    def __init__(
        self,
        periods: Sequence[int],
        eta_mins: Sequence[float],
        restart_weights: Sequence[float] | None = None,
        start: int = 0,
    ) -> None:
        weights = [1.0] * len(periods) if restart_weights is None else list(restart_weights)
        if not periods or len(eta_mins) != len(periods) or len(weights) != len(periods):
            raise ValueError(
                f"CosineRestarts: periods, eta_mins and restart_weights need one entry per cycle, got "
                f"{list(periods)}, {list(eta_mins)}, {weights}"
            )
        if min(periods) < 1:
            raise ValueError(f"CosineRestarts: every period must be >= 1, got {list(periods)}")
        self.periods, self.eta_mins, self.restart_weights, self.start = list(periods), list(eta_mins), weights, start

    def __call__(self, step: int, base_lr: float) -> float:
        within = max(0, step - self.start)
        for period, eta_min, weight in zip(self.periods, self.eta_mins, self.restart_weights):
            if within < period:
                return eta_min + weight * (base_lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * within / period))
            within -= period
        return self.eta_mins[-1]


def lr_factor(schedule: LRSchedule | None, base_lr: float, warmup_steps: int = 0) -> Callable[[int], float]:
    """A `LambdaLR` lambda: `schedule(step) / base_lr`, times a linear warm-up over `warmup_steps`.

    A plain function on purpose: `LambdaLR.state_dict` stores the attributes of callable objects
    (they would put our classes into the checkpoint, which then no longer loads with
    `weights_only=True`), and nothing for functions. The schedule is configuration, rebuilt from
    the hyperparameters; its only state is the step, which the scheduler keeps.
    """

    def factor(step: int) -> float:
        value = 1.0 if schedule is None or base_lr == 0 else schedule(step, base_lr) / base_lr
        if warmup_steps > 0:
            value *= min(1.0, (step + 1) / warmup_steps)  # linear warm-up from 0
        return value

    return factor
