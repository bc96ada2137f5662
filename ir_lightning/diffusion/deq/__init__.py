"""Parallel sampling of a diffusion chain as one joint fixed point, and DEQ inversion (DeqIR, Cao et al.,
CVPR 2024): `solve` (the chain and the solver), `chains` (the suite's samplers as chains), `inversion`.
Derivations and measurements: docs/solver.md."""

from ir_lightning.diffusion.deq.chains import (
    ConditionedPredictor,
    EpsModel,
    ddnm_chain,
    draw_noises,
    precondition,
    rddm_chain,
    spectral_prior_eps,
    sr3_ddim_chain,
    step_chain,
)
from ir_lightning.diffusion.deq.inversion import DEQIR_SOLVER, InversionResult, invert, phantom_loss
from ir_lightning.diffusion.deq.solve import (
    SOLVERS,
    Chain,
    SolverCallback,
    SolveResult,
    SolverSettings,
    anderson_mix,
    joint_map,
    run_chain,
    sequential,
    solve,
    trajectory,
)

__all__ = [
    "DEQIR_SOLVER",
    "SOLVERS",
    "Chain",
    "ConditionedPredictor",
    "EpsModel",
    "InversionResult",
    "SolveResult",
    "SolverCallback",
    "SolverSettings",
    "anderson_mix",
    "ddnm_chain",
    "draw_noises",
    "invert",
    "joint_map",
    "phantom_loss",
    "precondition",
    "rddm_chain",
    "run_chain",
    "sequential",
    "solve",
    "spectral_prior_eps",
    "sr3_ddim_chain",
    "step_chain",
    "trajectory",
]
