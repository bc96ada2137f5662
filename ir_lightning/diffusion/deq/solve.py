"""A T-step sampling chain solved as one joint fixed point X = G(X) (DeqIR, Cao et al., CVPR 2024).

A chain walks s_0 = x_T -> s_1 -> ... -> s_T = x_0 (k counts sampling steps; s_k is x_{T-k} in the papers'
time index) by s_{k+1} = drift_k(s_k) + update_k(s_k): `drift` is cheap and needs no network, `update` holds
the network and the step's constants. G evaluates every update_k at the current iterate in one batched
network call, then rebuilds the states by the scan s_{k+1} = drift_k(s_k) + update_k from x_T (DeqIR's closed
form). Its only fixed point is the sequential chain, and Picard makes one more leading state exact per
iteration, so at most T iterations are ever needed. Derivation, cost model and measurements: docs/solver.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor
from torch.utils.checkpoint import checkpoint as checkpointed
from tqdm import tqdm

Drift = Callable[[int, Tensor], Tensor]
"""`drift(k, s_k) -> Tensor`: the network-free part of step k on the whole batch B x C x H x W."""

Update = Callable[[Tensor, Tensor], Tensor]
"""`update(states, steps) -> Tensor`: the network part of the steps at `states` (N x C x H x W), see `Chain`."""

SolverCallback = Callable[[int, float], None]
"""`callback(iteration, residual)`, iteration counted from 1, residual the worst over the batch."""

SOLVERS = ("sequential", "anderson", "picard", "anderson_official")
"""Valid values of `SolverSettings.method`: the chain step after step, or its joint fixed point (the last: DeqIR's
own Anderson solver, a reference, see `solve`)."""

_FIXED_POINT = SOLVERS[1:]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_none_or_positive_int(value: object) -> bool:
    return value is None or _is_int(value) and value >= 1


@dataclass(frozen=True)
class SolverSettings:
    """How a chain is run: `method` "sequential" (T network calls in series) or the joint fixed point by
    "anderson", "picard" or "anderson_official" (DeqIR's own Anderson, the reference; `solve` says how it
    differs). The rest is the fixed-point solver's:

    memory: Anderson's m, the iterates it mixes. regularisation: the Tikhonov term of Anderson's least
    squares, relative to the residuals' scale (`anderson_mix`; absolute for "anderson_official"). mixing:
    beta, the weight of G(X) in the next iterate. tolerance: the worst relative residual |G(X) - X| / |G(X)|
    over the batch to stop at. max_iter: the iteration cap; None is T, the chain's length, which is always
    enough (the exact prefix; not a bound for "anderson_official", which has none).
    chunk_size: at most this many images per network call (a memory budget); None: all states at once.

    DeqIR's sampling values are memory 5, regularisation 1e-3, mixing 1, tolerance 1e-3, 15 evaluations of G
    (`inversion.DEQIR_SAMPLING_SOLVER`). Every field is checked here, once: a bad value raises ValueError naming
    it (`solver.<field>`).
    """

    method: Literal["sequential", "anderson", "picard", "anderson_official"] = "sequential"
    memory: int = 5
    regularisation: float = 1e-3
    mixing: float = 1.0
    tolerance: float = 1e-3
    max_iter: int | None = None
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "method": (self.method in SOLVERS, f"one of {', '.join(SOLVERS)}"),
            "memory": (_is_int(self.memory) and self.memory >= 1, "an integer >= 1"),
            "regularisation": (_is_number(self.regularisation) and self.regularisation > 0, "a number > 0"),
            "mixing": (_is_number(self.mixing) and 0 < self.mixing <= 1, "a number in (0, 1]"),
            "tolerance": (_is_number(self.tolerance) and self.tolerance > 0, "a number > 0"),
            "max_iter": (_is_none_or_positive_int(self.max_iter), "None or an integer >= 1"),
            "chunk_size": (_is_none_or_positive_int(self.chunk_size), "None or an integer >= 1"),
        }
        for name, (valid, expected) in checks.items():
            if not valid:
                raise ValueError(f"solver.{name} must be {expected}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Chain:
    """A T-step sampling chain s_{k+1} = drift(k, s_k) + update(s_k at step k), k = 0..T-1.

    `update` receives whole batches of several steps at once, stacked step-major: N = n B images,
    where image j B + b is batch element b at step `steps[j B + b]` (so the B images of a step are
    consecutive and `steps` is constant over them). Per-image constants of the chain (y, the
    condition, the noises) therefore line up with `values.repeat(n, 1, 1, 1)`. The layout keeps
    each step's batch whole, so an operator with per-image masks can be applied step by step.
    `drift` None means zero (the whole step is in `update`).
    """

    n_steps: int
    update: Update
    drift: Drift | None = None

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise ValueError(f"a chain needs at least one step, got n_steps={self.n_steps}")


@dataclass
class SolveResult:
    """What `solve` returns.

    `states` is T x B x C x H x W with states[k] = s_{k+1} (states[-1] = x_0 = `x0`), taken from the
    last evaluation of G, so the scan's consistency (and DDNM's A x_0 = y) holds even when the solver
    stopped early. `residuals[i]` is the worst relative residual |G(X) - X| / |G(X)| over the batch at
    iteration i + 1. `stopped_by` says why the iterations ended: `"tolerance"` (the last residual is <= the
    tolerance), `"exact"` (every state is the sequential chain's, which takes T iterations whatever the mixing
    did: the bound, not convergence of the method) or `"max_iter"` (neither). `converged` is true for the
    first two: the states solve the system, to the tolerance or exactly. `network_evaluations` counts calls
    to `chain.update` (one per iteration unless `chunk_size` splits it) and `network_images` the images they
    took (states already exact are not re-evaluated, so iteration i takes T - i + 1 states of B images; the
    sequential chain takes T B).

    For "anderson_official" (DeqIR's solver) `states` is the last iterate G was evaluated at, not G's output:
    Anderson's mixed iterate, every state its own weights, as the official code returns it. The scan's
    consistency therefore holds only to the residual, and so does DDNM's A x_0 = y (exactly only for a G that
    keeps it and mixing 1, where X is an affine combination of G's outputs, from the second evaluation on).
    `residuals[i]` is then |G(X) - X| / (1e-5 + |G(X)|) per image (worst over the batch) at evaluation i + 1,
    `iterations` counts evaluations of G (max_iter of them at most; T B images each) and `stopped_by` is
    `"tolerance"` or `"max_iter"` (no exact-prefix bound).
    """

    x0: Tensor
    states: Tensor
    residuals: list[float] = field(default_factory=list)
    iterations: int = 0
    converged: bool = False
    stopped_by: str = "max_iter"
    network_evaluations: int = 0
    network_images: int = 0


# ---------------------------------------------------------------------------------------------
# the sequential reference and the joint map
# ---------------------------------------------------------------------------------------------


def step_indices(steps: Tensor, batch: int) -> Tensor:
    """The n distinct steps of a step-major stack of n B images (see `Chain`)."""
    return steps.view(-1, batch)[:, 0]


def tile(values: Tensor, n: int) -> Tensor:
    """Per-image values (B, ...) repeated for n steps in the step-major layout of `Chain.update`."""
    return values.repeat(n, *([1] * (values.ndim - 1)))


def _updates(
    chain: Chain, inputs: Tensor, chunk_steps: int, use_checkpoint: bool, first_step: int = 0
) -> tuple[Tensor, int]:
    """update_k at inputs[j] for k = first_step + j (inputs n x B x ...), in calls of at most
    `chunk_steps` steps; returns the updates (n x B x ...) and the number of calls."""
    n_steps, batch = inputs.shape[:2]
    steps = torch.arange(first_step, first_step + n_steps, device=inputs.device)
    pieces = []
    for start in range(0, n_steps, chunk_steps):
        block = inputs[start : start + chunk_steps]
        flat = rearrange(block, "n b ... -> (n b) ...")
        step_ids = steps[start : start + chunk_steps].repeat_interleave(batch)
        if use_checkpoint and torch.is_grad_enabled():
            # keep only the chunk's inputs; the network's activations are recomputed in backward
            out = checkpointed(chain.update, flat, step_ids, use_reentrant=False)
        else:
            out = chain.update(flat, step_ids)
        if out.shape != flat.shape:
            raise ValueError(f"chain.update returned shape {tuple(out.shape)} for states of shape {tuple(flat.shape)}")
        pieces.append(out.view(block.shape))
    return torch.cat(pieces), len(pieces)


def _scan(chain: Chain, x_T: Tensor, updates: Tensor) -> Tensor:
    """s_{k+1} = drift_k(s_k) + updates[k] from s_0 = x_T: all T states, T x B x ..."""
    if chain.drift is None:
        return updates
    states, s = [], x_T
    for k in range(chain.n_steps):
        s = chain.drift(k, s) + updates[k]
        states.append(s)
    return torch.stack(states)


def trajectory(chain: Chain, x_T: Tensor, progress: bool = False) -> Tensor:
    """The sequential chain from x_T: T network calls of B images each; all states, T x B x ... ."""
    states, s = [], x_T
    for k in tqdm(range(chain.n_steps), desc="sequential", disable=not progress):
        update, _ = _updates(chain, s[None], 1, use_checkpoint=False, first_step=k)
        s = update[0] if chain.drift is None else chain.drift(k, s) + update[0]
        states.append(s)
    return torch.stack(states)


def sequential(chain: Chain, x_T: Tensor, progress: bool = False) -> Tensor:
    """x_0 of the sequential chain from x_T: the reference the parallel solver must reproduce."""
    return trajectory(chain, x_T, progress)[-1]


def joint_map(
    chain: Chain, x_T: Tensor, states: Tensor, chunk_size: int | None = None, use_checkpoint: bool = False
) -> tuple[Tensor, int]:
    """G(X): the updates at (x_T, s_1, ..., s_{T-1}) in one batched pass, then the scan from x_T.

    `states` is X = (s_1, ..., s_T), T x B x C x H x W (s_T is not an input of any update). Returns G(X)
    and the number of `chain.update` calls. `use_checkpoint` recomputes the network in backward
    instead of storing T states' activations (DeqIR's phantom-gradient steps).
    """
    inputs = torch.cat([x_T[None], states[:-1]])
    updates, calls = _updates(chain, inputs, _chunk_steps(chunk_size, x_T.shape[0], chain.n_steps), use_checkpoint)
    return _scan(chain, x_T, updates), calls


# ---------------------------------------------------------------------------------------------
# the solver
# ---------------------------------------------------------------------------------------------


def _chunk_steps(chunk_size: int | None, batch: int, n_steps: int) -> int:
    """Steps per `chain.update` call so that the network sees at most `chunk_size` images."""
    if chunk_size is None:
        return n_steps
    if chunk_size < batch:
        raise ValueError(
            f"solver.chunk_size must be at least the batch size {batch} (a call holds whole batches), "
            f"got chunk_size={chunk_size}"
        )
    return chunk_size // batch


def _flat(states: Tensor) -> Tensor:
    """T x B x ... -> B x D: each batch element's joint vector (the unknowns Anderson mixes)."""
    return rearrange(states, "t b ... -> b (t ...)")


def _rows(states: Tensor) -> Tensor:
    """T x B x ... -> (T B) x D: one row per state and image (the unknowns DeqIR's Anderson mixes)."""
    return rearrange(states, "t b ... -> (t b) (...)")


def _relative_residual(f: Tensor, x: Tensor) -> Tensor:
    """|G(X) - X| / |G(X)| per batch element (B,), float64."""
    f_flat, x_flat = _flat(f).double(), _flat(x).double()
    norm = f_flat.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    return (f_flat - x_flat).norm(dim=1) / norm


def _affine_weights(gram: Tensor) -> Tensor:
    """The weights alpha (B x n, sum 1) minimising alpha^T gram alpha for a regularised Gram matrix gram
    (B x n x n): the bordered system [[0, 1^T], [1, gram]] [nu; alpha] = [1; 0], in gram's dtype."""
    n = gram.shape[-1]
    system = gram.new_zeros(gram.shape[0], n + 1, n + 1)
    system[:, 0, 1:] = 1.0
    system[:, 1:, 0] = 1.0
    system[:, 1:, 1:] = gram
    rhs = gram.new_zeros(gram.shape[0], n + 1)
    rhs[:, 0] = 1.0
    return torch.linalg.solve(system, rhs)[:, 1:]


def anderson_mix(xs: Tensor, fs: Tensor, lam: float, beta: float) -> Tensor:
    """The next Anderson (type II) iterate beta sum_i alpha_i f_i + (1 - beta) sum_i alpha_i x_i from the
    history xs, fs = G(xs), each B x n x D.

    The weights alpha (sum 1) minimise |sum_i alpha_i (f_i - x_i)|^2 + lam' |alpha|^2, solved from the
    bordered system [[0, 1^T], [1, H + lam' I]] [nu; alpha] = [1; 0] with H the residuals' Gram matrix and
    lam' = lam times the mean of H's diagonal (scale free; docs/solver.md says why).
    """
    residuals = (fs - xs).double()
    gram = residuals @ residuals.mT
    n = gram.shape[-1]
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all residuals zero: any weights do
    gram = gram + lam * scale[:, None, None] * torch.eye(n, dtype=gram.dtype, device=gram.device)
    alpha = _affine_weights(gram).to(fs.dtype)
    mixed = torch.einsum("bn,bnd->bd", alpha, fs)
    if beta < 1.0:
        mixed = beta * mixed + (1.0 - beta) * torch.einsum("bn,bnd->bd", alpha, xs)
    return mixed


OFFICIAL_RESIDUAL_FLOOR = 1e-5
"""The term added to |G(X)| in DeqIR's normalised residual |G(X) - X| / (1e-5 + |G(X)|)."""


def _official_residual(f: Tensor, x: Tensor) -> Tensor:
    """|G(X) - X| / (1e-5 + |G(X)|) per batch element (B,), over its T states, in the iterate's dtype (DeqIR's)."""
    return _flat(f - x).norm(dim=1) / (OFFICIAL_RESIDUAL_FLOOR + _flat(f).norm(dim=1))


def _official_mix(xs: Tensor, fs: Tensor, lam: float, beta: float) -> Tensor:
    """DeqIR's Anderson step on each row of the history xs, fs = G(xs) (R x n x D, a row per state and image):
    weights alpha (sum 1) minimising |sum_i alpha_i (f_i - x_i)|^2 + lam |alpha|^2 with lam absolute, in the
    iterate's dtype, then beta sum_i alpha_i f_i + (1 - beta) sum_i alpha_i x_i."""
    residuals = fs - xs
    identity = torch.eye(residuals.shape[1], dtype=fs.dtype, device=fs.device)
    gram = residuals @ residuals.mT + lam * identity
    alpha = _affine_weights(gram)[:, None]
    return beta * (alpha @ fs)[:, 0] + (1.0 - beta) * (alpha @ xs)[:, 0]


def solve(
    chain: Chain,
    x_T: Tensor,
    settings: SolverSettings,
    progress: bool = False,
    *,
    init: Tensor | None = None,
    callback: SolverCallback | None = None,
) -> SolveResult:
    """Solve X = G(X) for the chain from x_T (B x C x H x W) by `settings.method`, "anderson", "picard" or
    "anderson_official".

    Each iteration evaluates G once: one batched network pass over the states not yet exact (T - i + 1 at
    iteration i, in calls of at most `settings.chunk_size` images). It stops when every batch element's
    relative residual is <= `settings.tolerance`, when all T states are exact (at iteration T at the
    latest), or after `settings.max_iter` iterations (None: T). `init` (T x B x ...) is the first iterate,
    by default every state = x_T; `callback` sees each iteration's residual; `progress` shows a tqdm bar. The
    iterations run without autograd (`phantom_loss` adds the differentiable steps).

    "anderson_official" computes what DeqIR's `anderson` (`functions/ddim_anderson.py`) computes, as a
    reference: X_0 = init, X_1 = G(X_0), then X_k = beta sum alpha F + (1 - beta) sum alpha X over the last
    min(k, m) iterates, with `regularisation` absolute and one alpha per state and image (the official batch
    is the T states of its one image). Every evaluation takes all T states; `max_iter` counts evaluations of G
    (15 = 15 network passes); it stops only from the third evaluation on, when the worst
    |G(X) - X| / (1e-5 + |G(X)|) is < `tolerance`. It returns the last iterate X that G was evaluated at, not
    G(X): see `SolveResult`. (The official code needs m >= 2 and max_iter >= 3; here m = 1 is damped Picard
    and max_iter 1 or 2 returns X_0 or X_1.)
    """
    if settings.method not in _FIXED_POINT:
        raise ValueError(
            f"solve needs solver.method anderson or picard, got {settings.method!r} "
            "(anderson_official solves too; sequential runs through run_chain)"
        )
    with torch.no_grad():
        if settings.method == "anderson_official":
            return _anderson_official(chain, x_T, settings, init, callback, progress)
        return _iterate(chain, x_T, settings, init, callback, progress)


def _first_iterate(x_T: Tensor, n_steps: int, init: Tensor | None) -> Tensor:
    """The first iterate: a copy of `init`, checked, or every state = x_T."""
    if init is None:
        return x_T[None].expand(n_steps, *x_T.shape).clone()
    if init.shape != (n_steps, *x_T.shape):
        raise ValueError(f"init must have shape {(n_steps, *x_T.shape)} (T x B x ...), got {tuple(init.shape)}")
    return init.clone()


def _iterate(
    chain: Chain,
    x_T: Tensor,
    settings: SolverSettings,
    init: Tensor | None,
    callback: SolverCallback | None,
    progress: bool,
) -> SolveResult:
    """`solve`'s loop."""
    n_steps = chain.n_steps
    chunk_steps = _chunk_steps(settings.chunk_size, x_T.shape[0], n_steps)  # a bad chunk_size fails before any work
    max_iter = n_steps if settings.max_iter is None else settings.max_iter
    tol, memory = settings.tolerance, settings.memory
    x = _first_iterate(x_T, n_steps, init)
    shape = x.shape
    result = SolveResult(x0=x[-1], states=x)
    history_x: list[Tensor] = []
    history_f: list[Tensor] = []
    # `exact`: how many leading states of the iterate x are the sequential chain's (s_1..s_exact). G maps
    # them to exact states again and adds one (a state depends only on the states before it), so their
    # updates, computed once at exact inputs, are reused instead of re-evaluated, and Anderson's mixed
    # iterate gets G's exact prefix back: either way every state is exact after at most T iterations.
    exact, cached = 0, None
    bar = tqdm(range(1, max_iter + 1), desc=f"deq {settings.method}", disable=not progress)
    for iteration in bar:
        inputs = torch.cat([x_T[None], x[:-1]])
        fresh, calls = _updates(chain, inputs[exact:], chunk_steps, use_checkpoint=False, first_step=exact)
        updates = fresh if cached is None else torch.cat([cached[:exact], fresh])
        f, cached = _scan(chain, x_T, updates), updates
        exact = min(exact + 1, n_steps)
        residual = _relative_residual(f, x).max().item()
        result.network_evaluations += calls
        result.network_images += fresh.shape[0] * fresh.shape[1]
        result.residuals.append(residual)
        result.iterations, result.states = iteration, f
        bar.set_postfix(residual=f"{residual:.2e}", exact=f"{exact}/{n_steps}")
        if callback is not None:
            callback(iteration, residual)
        if residual <= tol or exact == n_steps:  # all T states exact: f is the sequential chain
            result.converged, result.stopped_by = True, "tolerance" if residual <= tol else "exact"
            break
        if settings.method == "picard":
            x = f
            continue
        history_x, history_f = (history_x + [_flat(x)])[-memory:], (history_f + [_flat(f)])[-memory:]
        xs, fs = torch.stack(history_x, 1), torch.stack(history_f, 1)
        mixed = anderson_mix(xs, fs, settings.regularisation, settings.mixing)
        x = rearrange(mixed, "b (t rest) -> t b rest", t=n_steps).reshape(shape)
        x[:exact] = f[:exact]
    bar.close()
    result.x0 = result.states[-1]
    return result


def _anderson_official(
    chain: Chain,
    x_T: Tensor,
    settings: SolverSettings,
    init: Tensor | None,
    callback: SolverCallback | None,
    progress: bool,
) -> SolveResult:
    """`solve`'s loop for "anderson_official": evaluation k + 1 is G(X_k); slot k % m of the history holds X_k."""
    _chunk_steps(settings.chunk_size, x_T.shape[0], chain.n_steps)  # a bad chunk_size fails before any work
    max_iter = chain.n_steps if settings.max_iter is None else settings.max_iter
    memory = settings.memory
    x = _first_iterate(x_T, chain.n_steps, init)
    shape, rows = x.shape, _rows(x)
    xs = rows.new_zeros(rows.shape[0], memory, rows.shape[1])
    fs = torch.zeros_like(xs)
    result = SolveResult(x0=x[-1], states=x)
    bar = tqdm(range(max_iter), desc="deq anderson_official", disable=not progress)
    for k in bar:
        if k == 1:
            x = fs[:, 0].view(shape).clone()  # X_1 = G(X_0)
        elif k >= 2:
            n = min(k, memory)
            x = _official_mix(xs[:, :n], fs[:, :n], settings.regularisation, settings.mixing).view(shape)
        mapped, calls = joint_map(chain, x_T, x, settings.chunk_size)
        xs[:, k % memory], fs[:, k % memory] = _rows(x), _rows(mapped)
        residual = _official_residual(mapped, x).max().item()
        result.network_evaluations += calls
        result.network_images += shape[0] * shape[1]
        result.residuals.append(residual)
        result.iterations, result.states = k + 1, x  # the mixed iterate, as DeqIR returns it
        bar.set_postfix(residual=f"{residual:.2e}")
        if callback is not None:
            callback(k + 1, residual)
        if k >= 2 and residual < settings.tolerance:  # DeqIR tests from its third evaluation on, strictly
            result.converged, result.stopped_by = True, "tolerance"
            break
    bar.close()
    result.x0 = result.states[-1]
    return result


def run_chain(
    chain: Chain, x_T: Tensor, settings: SolverSettings, progress: bool = False
) -> tuple[Tensor, SolveResult | None]:
    """(x_0, the solve) of the chain from x_T: step after step for method "sequential" (no solve: None),
    else `solve(chain, x_T, settings)`; its `stopped_by` says whether the tolerance, the T bound or max_iter
    ended it. For "anderson_official" x_0 is the last state of the mixed iterate (`SolveResult`)."""
    if settings.method == "sequential":
        return sequential(chain, x_T, progress), None
    result = solve(chain, x_T, settings, progress)
    return result.x0, result
