"""DEQ inversion (DeqIR, Cao et al., CVPR 2024): x_T optimised through the fixed point's phantom gradient."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ir_lightning.diffusion.deq.solve import Chain, SolverSettings, joint_map, solve

DEQIR_SOLVER = SolverSettings(method="anderson")
"""The suite's Anderson with DeqIR's sampling values: memory 5, regularisation 1e-3, mixing 1, tolerance 1e-3,
but at most T iterations, the regularisation relative and one set of weights per image (the official code:
absolute, per state, 15 evaluations, returns the mixed iterate). DeqIR's own solver: `DEQIR_SAMPLING_SOLVER`."""

DEQIR_SAMPLING_SOLVER = SolverSettings(
    method="anderson_official", memory=5, regularisation=1e-3, mixing=1.0, tolerance=1e-3, max_iter=15
)
"""DeqIR's sampling solver as its code runs it (`functions/ddim_anderson.py`, `fp_implicit_iters_anderson`):
m from --m (default 5), lambda 1e-3, beta 1 and tol 1e-3 fixed in the code (--lam, --anderson_beta and --tol
are not passed on), --max_anderson_iters 15 evaluations."""

DEQIR_INVERSION_SOLVER = SolverSettings(
    method="anderson_official", memory=3, regularisation=1e-3, mixing=0.9, tolerance=1e-2, max_iter=15
)
"""DeqIR's solver inside DEQ inversion (`functions/latent_space_opt_anderson.py`, `find_source_noise_deq_sr`):
m 3, lambda 1e-3, 15 evaluations, tol 1e-2, beta 0.9, fixed in the code (the --m, --lam, --tol, --anderson_beta
it is handed are ignored). The official solve there also carries x_T as an extra row of the iterate, which
enters the residual's |G(X)| (here only the T states)."""

DEQIR_INVERSION_PHANTOM_STEPS = 1
"""DeqIR's phantom steps (--pg_steps 1). One step passes a gradient only on chains whose last step has a drift
(DeqIR's null-space split, a `precondition`ed chain); on the suite's x0-form chains it is zero (docs/solver.md)."""

DEQIR_INVERSION_TAU = 0.1
"""DeqIR's phantom damping tau (--tau 0.1)."""

DEQIR_INVERSION_LR = 2e-5
"""DeqIR's Adam learning rate for x_T (`configs/imagenet.yml`, optim.lr; betas 0.9, 0.999, eps 1e-8)."""


def phantom_loss(
    chain: Chain,
    x_T: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    settings: SolverSettings = DEQIR_SOLVER,
    tau: float = 0.1,
    phantom_steps: int = 2,
    use_checkpoint: bool = True,
    init: Tensor | None = None,
) -> Tensor:
    """loss_fn(x_0) with a graph back to x_T through DeqIR's phantom gradient.

    The fixed point X* is solved without gradients (`solve` with `settings`, from `init`); then
    `phantom_steps` damped steps X <- (1 - tau) X + tau G(X) are taken with gradients, a truncated damped
    series for the implicit gradient (I - dG/dX)^-1 dG/dx_T. tau = 1 with T steps is exactly the gradient of
    the sequential chain; one step gives none on chains whose last drift is zero, hence two by default
    (docs/solver.md). `use_checkpoint` recomputes the network in backward instead of storing its activations.
    """
    if not 0 < tau <= 1:
        raise ValueError(f"tau must lie in (0, 1], got tau={tau}")
    if phantom_steps < 1:
        raise ValueError(f"phantom_steps must be at least 1, got phantom_steps={phantom_steps}")
    states = solve(chain, x_T.detach(), settings, init=init).states
    for _ in range(phantom_steps):
        mapped, _ = joint_map(chain, x_T, states, settings.chunk_size, use_checkpoint)
        states = (1.0 - tau) * states + tau * mapped
    return loss_fn(states[-1])


@dataclass
class InversionResult:
    """What `invert` returns: the optimised x_T (detached) and the loss before each Adam step."""

    x_T: Tensor
    losses: list[float]


def invert(
    chain: Chain,
    x_T_init: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    steps: int,
    settings: SolverSettings = DEQIR_SOLVER,
    lr: float = 2e-5,
    tau: float = 0.1,
    phantom_steps: int = 2,
    use_checkpoint: bool = True,
) -> InversionResult:
    """DEQ inversion: `steps` Adam steps on x_T minimising loss_fn(x_0), each through `phantom_loss` at the
    current x_T (DeqIR's initialisation optimisation; lr 2e-5 and tau 0.1 are its values). The chain does
    not depend on x_T, so one chain serves every step. DeqIR's own settings: `settings=DEQIR_INVERSION_SOLVER,
    lr=DEQIR_INVERSION_LR, tau=DEQIR_INVERSION_TAU, phantom_steps=DEQIR_INVERSION_PHANTOM_STEPS`."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got steps={steps}")
    x_T = x_T_init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x_T], lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = phantom_loss(chain, x_T, loss_fn, settings, tau, phantom_steps, use_checkpoint)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return InversionResult(x_T=x_T.detach(), losses=losses)


@dataclass(frozen=True)
class Inversion:
    """DEQ inversion as a setting of a method (DeqIR's `inversion`): before restoring a measurement whose clean
    image is known (validation and test: the official "oracle" mode, loss MSE to the ground truth), optimise x_T
    with `steps` Adam steps (`invert`); 0 steps: off. The defaults are the official code's
    (`functions/latent_space_opt_anderson.py`, `configs/imagenet.yml`): lr 2e-5, tau 0.1, one phantom step, the
    solver m 3, lambda 1e-3, beta 0.9, tol 1e-2, 15 evaluations (`DEQIR_INVERSION_SOLVER`)."""

    steps: int = 0
    lr: float = DEQIR_INVERSION_LR
    tau: float = DEQIR_INVERSION_TAU
    phantom_steps: int = DEQIR_INVERSION_PHANTOM_STEPS
    solver: SolverSettings = DEQIR_INVERSION_SOLVER

    def __post_init__(self) -> None:
        if isinstance(self.solver, dict):  # built from a checkpoint's plain dict
            object.__setattr__(self, "solver", SolverSettings(**self.solver))
        checks = {
            "steps": isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 0,
            "lr": isinstance(self.lr, (int, float)) and self.lr > 0,
            "tau": isinstance(self.tau, (int, float)) and 0 < self.tau <= 1,
            "phantom_steps": isinstance(self.phantom_steps, int) and self.phantom_steps >= 1,
            "solver": self.solver.method != "sequential",
        }
        expected = {
            "steps": "an integer >= 0",
            "lr": "a number > 0",
            "tau": "a number in (0, 1]",
            "phantom_steps": "an integer >= 1",
            "solver": "a fixed-point solver (anderson, picard or anderson_official)",
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(f"inversion.{name} must be {expected[name]}, got {getattr(self, name)!r}")

    @classmethod
    def of(cls, value: Inversion | dict) -> Inversion:
        """Accepts the dataclass or its dict (as stored in a checkpoint's hyperparameters)."""
        return cls(**value) if isinstance(value, dict) else value

    def run(self, chain: Chain, x_T: Tensor, target: Tensor) -> Tensor:
        """x_T after the inversion towards `target` (the clean image on the chain's scale), or x_T when off."""
        if self.steps == 0:
            return x_T
        with torch.enable_grad():
            result = invert(
                chain,
                x_T,
                lambda x0: torch.nn.functional.mse_loss(x0, target),
                self.steps,
                self.solver,
                self.lr,
                self.tau,
                self.phantom_steps,
            )
        return result.x_T
