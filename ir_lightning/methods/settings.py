"""The typed settings the methods share: a noise schedule and the sampling settings.

Each is a dataclass, so LightningCLI shows its fields in `--help` and `--print_config` and a recipe
writes it as a mapping (`sampling: {steps: 50, sampler: ddim, solver: {method: anderson}}`). A
checkpoint stores them as plain dicts (`weights_only` loading); `of(value)` accepts either form.
Validation happens once, here, when the object is made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from ir_lightning.diffusion import gammas_from_betas, make_betas
from ir_lightning.diffusion.deq import SolverSettings

SamplerName = Literal["ddpm", "ddim"]


@dataclass
class NoiseSchedule:
    """A beta schedule: `kind` in linear / quad / cosine / const, `n_steps` steps from `linear_start` to `linear_end`."""

    kind: str = "linear"
    n_steps: int = 2000
    linear_start: float = 1e-6
    linear_end: float = 1e-2

    def gammas(self) -> Tensor:
        """gamma_t = alpha_bar_t = prod_{i <= t} (1 - beta_i), float64."""
        return gammas_from_betas(make_betas(self.kind, self.n_steps, self.linear_start, self.linear_end))

    @classmethod
    def of(cls, value: NoiseSchedule | dict | None) -> NoiseSchedule | None:
        """Accepts the dataclass or its dict (as stored in a checkpoint's hyperparameters)."""
        return cls(**value) if isinstance(value, dict) else value


@dataclass(frozen=True)
class Sampling:
    """How a diffusion method samples when it restores (validation, test, predict, `restore`, `evaluate`).

    Args:
        steps: sampling steps (the training schedule respaced to this many).
        sampler: "ddpm" (ancestral) or "ddim"; which ones a method offers is its `SAMPLERS`.
        eta: DDIM's stochasticity, in [0, 1] (0: deterministic).
        seed: seed of the sampling noise, so two evaluations of the same weights agree.
        clip: clamp the predicted clean image to the data range at each step.
        solver: how the deterministic chain (DDIM with eta = 0) runs: `method: sequential` step after step,
            or `anderson` / `picard`, all steps solved as one fixed point (`diffusion.deq`).
        fixed_noise: the sampler's noises are drawn once from `seed` before the chain runs, so a chain with
            eta > 0 is deterministic and the solver may solve it as one fixed point (equal to the sequential
            chain). Only a method whose chain takes its noises up front accepts it (DeqIR's does).
    """

    steps: int = 50
    sampler: SamplerName = "ddim"
    eta: float = 0.0
    seed: int = 0
    clip: bool = True
    solver: SolverSettings = field(default_factory=SolverSettings)
    fixed_noise: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.solver, dict):  # built from a checkpoint's plain dict
            object.__setattr__(self, "solver", SolverSettings(**self.solver))
        for name, minimum in (("steps", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"sampling.{name} must be an integer >= {minimum}, got {value!r}")
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampling.sampler must be ddpm or ddim, got {self.sampler!r}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"sampling.eta must lie in [0, 1] (0: DDIM, 1: DDPM variance), got {self.eta!r}")
        if not isinstance(self.fixed_noise, bool):
            raise ValueError(f"sampling.fixed_noise must be true or false, got {self.fixed_noise!r}")
        if self.solver.method != "sequential" and (self.sampler != "ddim" or (self.eta != 0 and not self.fixed_noise)):
            raise ValueError(
                f"sampling.solver.method={self.solver.method} solves the deterministic chain (sampler ddim, "
                f"eta 0, or eta > 0 with fixed_noise) in parallel; got sampler={self.sampler!r}, eta={self.eta}"
            )

    @property
    def parallel(self) -> bool:
        """Whether the chain is solved as one fixed point (not step after step)."""
        return self.solver.method != "sequential"

    @classmethod
    def of(cls, value: Sampling | dict) -> Sampling:
        """Accepts the dataclass or its dict (as stored in a checkpoint's hyperparameters)."""
        return cls(**value) if isinstance(value, dict) else value

    def replaced(self, **changes: Any) -> Sampling:
        """A copy with some fields changed (`solver` may be a dict of its own changes)."""
        solver = changes.pop("solver", None)
        if isinstance(solver, dict):
            changes["solver"] = dataclasses.replace(self.solver, **solver)
        elif solver is not None:
            changes["solver"] = solver
        return dataclasses.replace(self, **changes)


def check_sampler(sampling: Sampling, offered: tuple[str, ...], method: str, *, fixed_noise: bool = False) -> Sampling:
    """`sampling`, after checking that `method` offers its sampler, and `fixed_noise` where it asks for it (a
    method whose chain draws its noises up front passes fixed_noise=True)."""
    if sampling.sampler not in offered:
        raise ValueError(
            f"model.init_args.sampling.sampler: {method} samples with {' or '.join(offered)}, got {sampling.sampler!r}"
        )
    if sampling.fixed_noise and not fixed_noise:
        raise ValueError(
            f"model.init_args.sampling.fixed_noise: {method}'s sampler draws its noise step by step; set it to false"
        )
    return sampling


LEGACY_SAMPLING = {
    "sample_steps": "steps",
    "sampler": "sampler",
    "eta": "eta",
    "sample_seed": "seed",
    "clip_y0": "clip",
    "clip": "clip",
}
"""Flat sampling arguments of the methods before the `sampling` object -> its field."""

LEGACY_SOLVER = {
    "solver": "method",
    "solver_tolerance": "tolerance",
    "memory": "memory",
    "regularisation": "regularisation",
    "mixing": "mixing",
    "tolerance": "tolerance",
    "max_iterations": "max_iter",
    "chunk_size": "chunk_size",
}
"""Flat solver arguments of the methods before the `sampling.solver` object -> its field."""


def upgrade_sampling(hparams: dict[str, Any], default: Sampling) -> dict[str, Any]:
    """Hyperparameters of a checkpoint written before the `sampling` object, with its flat sampling and solver
    arguments gathered into `sampling` (on `default`, the method's own); others are returned unchanged."""
    if not any(key in hparams for key in (*LEGACY_SAMPLING, *LEGACY_SOLVER)) or "sampling" in hparams:
        return hparams
    hparams = dict(hparams)
    sampling = {new: hparams.pop(old) for old, new in LEGACY_SAMPLING.items() if old in hparams}
    solver = {new: hparams.pop(old) for old, new in LEGACY_SOLVER.items() if old in hparams}
    hparams["sampling"] = dataclasses.asdict(default.replaced(**sampling, solver=solver))
    return hparams
