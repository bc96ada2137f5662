"""Parallel sampling of a diffusion chain as one joint fixed point, and DEQ inversion (DeqIR, Cao et al., CVPR 2024).

A deterministic sampling chain of T steps walks s_0 = x_T -> s_1 -> ... -> s_T = x_0 (the position k in
sampling order is used throughout; s_k is x_{T-k} in the papers' time index). Each step splits into

    s_{k+1} = drift_k(s_k) + update_k(s_k),

where `drift_k` is cheap and needs no network (here a scalar times s_k) and `update_k` holds everything
that needs the network, plus the step's constants (A^+ y, a fixed noise z_k drawn up front). A sampler
with eta > 0 is deterministic this way, because its noises are fixed before sampling.

Joint system. Treat X = (s_1, ..., s_T) as the unknowns. The map G(X) evaluates, in ONE batched network
call, update_k at every state of the current iterate (s_0 = x_T, s_1, ..., s_{T-1}), then rebuilds all
states by the cheap scan s_{k+1} = drift_k(s_k) + update_k from the given x_T, where s_k is the state
the scan has just built and update_k was evaluated at the iterate's old s_k. The scan carries the
drift exactly from one state to the next, so x_{t-1} is x_T times a product of drifts plus a weighted
cumulative sum of updates: DeqIR's closed form.

Claim: X is a fixed point of G if and only if X is the sequential chain from the same x_T (and noises).
Proof by induction on k. Let X = G(X). The scan gives s_1 = drift_0(x_T) + update_0(x_T), the
sequential s_1. If the scan's s_k is the sequential state, so is the iterate's s_k (X = G(X)), hence
s_{k+1} = drift_k(s_k) + update_k(s_k) with both parts taken at the sequential s_k: the sequential
s_{k+1}. Conversely the sequential chain satisfies every step's equation, so it is a fixed point; the
fixed point therefore exists and is unique.

Picard iteration X <- G(X) from any start makes the first k states exact after k iterations (the same
induction, one state per iteration), so it reaches the chain after at most T iterations. The solver
tracks that exact prefix: it does not re-evaluate the network on it, it puts it back into Anderson's
mixed iterate (Anderson, type II on each batch element's whole joint vector, has no finite bound of its
own), and it stops once all T states are exact. So no solver takes more serial rounds than the
sequential chain, and iteration i evaluates T - i + 1 states, not T. The cost model: sequential
sampling makes T network calls in series; the solver makes one batched call per iteration, so on a
device with idle parallelism the wall-clock follows the iterations, not T.

How many iterations a chain needs depends on how its step is split. An error in s_k reaches s_{k+1}
through the drift within the same iteration (the scan carries it), but through the update only at the
next one. On the image content that the noise has not hidden yet (the strong, low-frequency part of a
photo), a DDIM step is almost the identity on x_t; the x0-form split puts that identity in the update,
so an error there crosses one step per iteration and is not damped. With the exact E[eps | x_t] of a
Gaussian with the demo photos' spectrum as the network, Picard needs 21, 43 and 88 iterations at
T = 25, 50 and 100; with a white spectrum of the same variance (the tests' kind of prior) 8, 14 and 26
(`bench/deqir_gaussian_prior.py`, which also shows the preconditioned counts). `precondition`
moves the linear, identity-like part of the step into the drift: it makes a cheap surrogate chain's
whole step the drift (`spectral_prior_eps`, a 1/f^2 Gaussian prior evaluated by FFT) and leaves only
the network's departure from it in the update. The fixed point, the sequential chain, is unchanged.

The chain builders below cover DDNM's range-null DDIM step on an unconditional eps-model (DeqIR's
sampler), SR3's DDIM with eta = 0 and RDDM's eta = 0 sampler, and the preconditioning above.
`phantom_loss` gives DEQ inversion its gradient; the optimisation loop (`methods.deqir.invert`) lives
with the method, which owns optimizers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor
from torch.utils.checkpoint import checkpoint as checkpointed
from tqdm import tqdm

from ir_lightning.diffusion.gaussian import per_sample
from ir_lightning.diffusion.operators import LinearOperator
from ir_lightning.diffusion.rddm import ResidualSchedule, ddim_step
from ir_lightning.diffusion.samplers import ddim_sigma, gaussian_like, inference_levels, predicted_y0

Drift = Callable[[int, Tensor], Tensor]
"""`drift(k, s_k) -> Tensor`: the network-free part of step k on the whole batch B x C x H x W."""

Update = Callable[[Tensor, Tensor], Tensor]
"""`update(states, steps) -> Tensor`: the network part of the steps at `states` (N x C x H x W), see `Chain`."""

SolverCallback = Callable[[int, float], None]
"""`callback(iteration, residual)`, iteration counted from 1, residual the worst over the batch."""

METHODS = ("anderson", "picard")
"""Valid values of `solve(method=...)`."""

SOLVERS = ("sequential", *METHODS)
"""Valid values of `run_chain(solver=...)` and of the methods' `solver` setting."""


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
    iteration i + 1. `stopped_by` says why the iterations ended: `"tolerance"` (the last residual is <= tol),
    `"exact"` (every state is the sequential chain's, which takes T iterations whatever the mixing did: the
    bound, not convergence of the method) or `"max_iter"` (neither). `converged` is true for the first two:
    the states solve the system, to the tolerance or exactly. `network_evaluations` counts calls to
    `chain.update` (one per iteration unless `chunk_size` splits it) and `network_images` the images they
    took (states already exact are not re-evaluated, so iteration i takes T - i + 1 states of B images; the
    sequential chain takes T B).
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


def _step_indices(steps: Tensor, batch: int) -> Tensor:
    """The n distinct steps of a step-major stack of n B images (see `Chain`)."""
    return steps.view(-1, batch)[:, 0]


def _tile(values: Tensor, n: int) -> Tensor:
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
            f"chunk_size must be at least the batch size {batch} (a call holds whole batches), "
            f"got chunk_size={chunk_size}"
        )
    return chunk_size // batch


def _check_solver(method: str, m: int, lam: float, beta: float, tol: float, max_iter: int) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown solver method {method!r}; valid methods: {', '.join(METHODS)}")
    if m < 1:
        raise ValueError(f"Anderson memory m must be at least 1, got m={m}")
    if not lam > 0:
        raise ValueError(f"Tikhonov regularisation lam must be positive (it keeps the system regular), got lam={lam}")
    if not 0 < beta <= 1:
        raise ValueError(f"mixing beta must lie in (0, 1], got beta={beta}")
    if not tol > 0:
        raise ValueError(f"tolerance must be positive, got tol={tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got max_iter={max_iter}")


def _flat(states: Tensor) -> Tensor:
    """T x B x ... -> B x D: each batch element's joint vector (the unknowns Anderson mixes)."""
    return rearrange(states, "t b ... -> b (t ...)")


def _relative_residual(f: Tensor, x: Tensor) -> Tensor:
    """|G(X) - X| / |G(X)| per batch element (B,), float64."""
    f_flat, x_flat = _flat(f).double(), _flat(x).double()
    norm = f_flat.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    return (f_flat - x_flat).norm(dim=1) / norm


def anderson_mix(xs: Tensor, fs: Tensor, lam: float, beta: float) -> Tensor:
    """The next Anderson (type II) iterate from the history xs, fs = G(xs), each B x n x D.

    The weights alpha (sum 1) minimise |sum_i alpha_i (f_i - x_i)|^2 + lam' |alpha|^2, from the
    bordered system [[0, 1^T], [1, H + lam' I]] [nu; alpha] = [1; 0] with H the Gram matrix of the
    residuals. lam' = lam times the mean of H's diagonal, so the regulariser is scale free: an absolute
    lam outweighs H once the residuals are small and turns Anderson into plain averaging, which stalls
    at tight tolerances. The next iterate is beta sum alpha_i f_i + (1 - beta) sum alpha_i x_i.
    """
    residuals = (fs - xs).double()
    gram = residuals @ residuals.mT
    n = gram.shape[-1]
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all residuals zero: any weights do
    gram = gram + lam * scale[:, None, None] * torch.eye(n, dtype=gram.dtype, device=gram.device)
    system = gram.new_zeros(gram.shape[0], n + 1, n + 1)
    system[:, 0, 1:] = 1.0
    system[:, 1:, 0] = 1.0
    system[:, 1:, 1:] = gram
    rhs = gram.new_zeros(gram.shape[0], n + 1)
    rhs[:, 0] = 1.0
    alpha = torch.linalg.solve(system, rhs)[:, 1:].to(fs.dtype)
    mixed = torch.einsum("bn,bnd->bd", alpha, fs)
    if beta < 1.0:
        mixed = beta * mixed + (1.0 - beta) * torch.einsum("bn,bnd->bd", alpha, xs)
    return mixed


def solve(
    chain: Chain,
    x_T: Tensor,
    method: str = "anderson",
    m: int = 5,
    lam: float = 1e-3,
    beta: float = 1.0,
    tol: float = 1e-3,
    max_iter: int = 15,
    chunk_size: int | None = None,
    init: Tensor | None = None,
    callback: SolverCallback | None = None,
    progress: bool = False,
) -> SolveResult:
    """Solve X = G(X) for the chain from x_T (B x C x H x W) by Anderson acceleration or Picard iteration.

    Each iteration evaluates G once (one batched network pass over the states not yet exact, T - i + 1
    at iteration i, split into calls of at most `chunk_size` images); it stops when every batch element's relative residual is <= `tol`, or
    after `max_iter` iterations. `init` (T x B x ...) is the first iterate, by default every state = x_T.
    The defaults are DeqIR's: m = 5, lam = 1e-3, beta = 1, tol = 1e-3, 15 iterations. A tqdm bar
    (`progress`) shows the residual per iteration. The iterations run without autograd (a graph
    through all of them would hold T states' activations per iteration); `phantom_loss` adds the
    differentiable steps.
    """
    _check_solver(method, m, lam, beta, tol, max_iter)
    with torch.no_grad():
        return _iterate(chain, x_T, method, m, lam, beta, tol, max_iter, chunk_size, init, callback, progress)


def _iterate(
    chain: Chain,
    x_T: Tensor,
    method: str,
    m: int,
    lam: float,
    beta: float,
    tol: float,
    max_iter: int,
    chunk_size: int | None,
    init: Tensor | None,
    callback: SolverCallback | None,
    progress: bool,
) -> SolveResult:
    """`solve`'s loop, after its checks."""
    n_steps = chain.n_steps
    _chunk_steps(chunk_size, x_T.shape[0], n_steps)  # a bad chunk_size fails before any work
    if init is None:
        x = x_T[None].expand(n_steps, *x_T.shape).clone()
    else:
        if init.shape != (n_steps, *x_T.shape):
            raise ValueError(f"init must have shape {(n_steps, *x_T.shape)} (T x B x ...), got {tuple(init.shape)}")
        x = init.clone()
    shape = x.shape
    result = SolveResult(x0=x[-1], states=x)
    history_x: list[Tensor] = []
    history_f: list[Tensor] = []
    # `exact`: how many leading states of the iterate x are the sequential chain's (s_1..s_exact). G maps
    # them to exact states again and adds one (a state depends only on the states before it), so their
    # updates, computed once at exact inputs, are reused instead of re-evaluated, and Anderson's mixed
    # iterate gets G's exact prefix back: either way every state is exact after at most T iterations.
    exact, cached = 0, None
    chunk_steps = _chunk_steps(chunk_size, x_T.shape[0], n_steps)
    bar = tqdm(range(1, max_iter + 1), desc=f"deq {method}", disable=not progress)
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
        if method == "picard":
            x = f
            continue
        history_x, history_f = (history_x + [_flat(x)])[-m:], (history_f + [_flat(f)])[-m:]
        mixed = anderson_mix(torch.stack(history_x, 1), torch.stack(history_f, 1), lam, beta)
        x = rearrange(mixed, "b (t rest) -> t b rest", t=n_steps).reshape(shape)
        x[:exact] = f[:exact]
    bar.close()
    result.x0 = result.states[-1]
    return result


def run_chain(
    chain: Chain, x_T: Tensor, solver: str, tol: float = 1e-3, progress: bool = False
) -> tuple[Tensor, SolveResult | None]:
    """(x_0, the solve) of the chain from x_T: step after step (`sequential`, no solve), or as the joint
    fixed point by `anderson` or `picard` with the default memory and mixing, to the relative residual
    `tol`, in at most T rounds (the exact prefix makes T always enough; the result's `stopped_by` says
    whether the tolerance or that bound ended it). The conditional methods' `solver` setting (SR3's DDIM
    and RDDM's eta = 0 sampler) runs through here."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers: {', '.join(SOLVERS)}")
    if solver == "sequential":
        return sequential(chain, x_T, progress), None
    result = solve(chain, x_T, method=solver, tol=tol, max_iter=chain.n_steps, progress=progress)
    return result.x0, result


# ---------------------------------------------------------------------------------------------
# DEQ inversion
# ---------------------------------------------------------------------------------------------


def phantom_loss(
    chain: Chain,
    x_T: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    tau: float = 0.1,
    phantom_steps: int = 2,
    use_checkpoint: bool = True,
    **solver_kwargs,
) -> Tensor:
    """loss_fn(x_0) with a graph back to x_T through DeqIR's phantom gradient.

    The fixed point X* is solved without gradients (the solver's iterations stay out of the graph);
    then `phantom_steps` damped steps X <- (1 - tau) X + tau G(X) are taken with gradients. G depends on
    x_T through the scan and the network at s_0 = x_T, so the gradient approximates the implicit one,
    (I - dG/dX)^-1 dG/dx_T, by a truncated damped series. dG/dX is nilpotent (a state only feeds later
    ones), so tau = 1 with T steps gives exactly the gradient of the sequential chain.

    Two steps by default, not one: in these chains the last step lands on x0_hat with a zero drift
    (DDIM's weight on x_t vanishes when a_prev = 1), so x_0 in G(X) is the last update at the old
    s_{T-1} and does not depend on x_T; one step gives a zero gradient, two pass through one network
    Jacobian (cosine 0.94 to the exact gradient on the tests' DDNM chain, T = 10, tau = 0.1).
    """
    if not 0 < tau <= 1:
        raise ValueError(f"tau must lie in (0, 1], got tau={tau}")
    if phantom_steps < 1:
        raise ValueError(f"phantom_steps must be at least 1, got phantom_steps={phantom_steps}")
    chunk_size = solver_kwargs.get("chunk_size")
    states = solve(chain, x_T.detach(), **solver_kwargs).states
    for _ in range(phantom_steps):
        mapped, _ = joint_map(chain, x_T, states, chunk_size, use_checkpoint)
        states = (1.0 - tau) * states + tau * mapped
    return loss_fn(states[-1])


# ---------------------------------------------------------------------------------------------
# chain builders
# ---------------------------------------------------------------------------------------------


def draw_noises(x_T: Tensor, n_steps: int, generator: torch.Generator | None = None) -> Tensor:
    """T fixed standard normal noises shaped like x_T (T x B x ...), drawn once so the chain is deterministic."""
    return torch.stack([gaussian_like(x_T, generator) for _ in range(n_steps)])


def _project_stack(operator: LinearOperator, x0: Tensor, y: Tensor) -> Tensor:
    """operator.project(x0, y) on a step-major stack of n B images (see `Chain`).

    One call on the whole stack, with y repeated per step, when the operator accepts n B images (its
    `output_shape` says so); an operator built with per-image constants for B images (an inpainting
    mask per image) is applied one step's batch at a time instead.
    """
    try:
        operator.output_shape(tuple(x0.shape))
    except ValueError:
        blocks = x0.view(-1, *y.shape[:1], *x0.shape[1:])
        return torch.cat([operator.project(block, y) for block in blocks])
    return operator.project(x0, _tile(y, x0.shape[0] // y.shape[0]))


def spectral_prior_eps(alpha_bars: Tensor, variance: float = 0.25, mean: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact E[eps | x_t] when the clean images are a stationary Gaussian with a 1/f^2 spectrum.

    Natural photos have a power spectrum close to 1/f^2. Here x_0 - mean has, at the discrete frequency
    f = (f_y, f_x) in cycles per pixel of an H x W image (periodic boundaries), the power
    P(f) proportional to 1 / (|f|^2 + f_0^2) with f_0 = 1 / max(H, W), scaled so that the pixel variance
    (the mean of P over all frequencies, by Parseval) is `variance`; channels are independent. With
    x_t = sqrt(a) x_0 + sqrt(1 - a) eps, each frequency of the posterior mean is
        E[eps | x_t](f) = sqrt(1 - a) / (a P(f) + 1 - a) * (x_t - sqrt(a) mean)(f).
    The returned `eps(x, t)` (x: N x C x H x W, t: DDPM timesteps of shape (N,)) evaluates it by FFT in
    the input's dtype: a network-free surrogate for `precondition`. Defaults: the signed [-1, 1] scale of
    the suite's priors, on which photos have a pixel variance of about 0.25 (the surrogate only has to be
    roughly right: the fixed point does not depend on it).
    """
    if not variance > 0:
        raise ValueError(f"the prior's pixel variance must be positive, got variance={variance}")
    alpha_bars = alpha_bars.detach().double().cpu()

    def spectrum(height: int, width: int, device: torch.device) -> Tensor:
        f_y = torch.fft.fftfreq(height, dtype=torch.float64, device=device)[:, None]
        f_x = torch.fft.fftfreq(width, dtype=torch.float64, device=device)[None, :]
        shape = 1.0 / (f_y**2 + f_x**2 + 1.0 / max(height, width) ** 2)
        return variance * shape / shape.mean()

    def eps(x: Tensor, t: Tensor) -> Tensor:
        a = alpha_bars[t.cpu()].to(x.device)[:, None, None, None]
        power = spectrum(x.shape[-2], x.shape[-1], x.device)
        gain = (1.0 - a).sqrt() / (a * power + 1.0 - a)
        centred = x.double() - a.sqrt() * mean
        return torch.fft.ifft2(torch.fft.fft2(centred) * gain).real.to(x.dtype)

    return eps


def precondition(chain: Chain, surrogate: Chain) -> Chain:
    """The same chain, split so that `surrogate`'s whole step is the drift.

    step_k(s) = drift_k(s) + update_k(s) is rewritten as surrogate_k(s) + [step_k(s) - surrogate_k(s)]:
    every step, hence the sequential chain and the joint fixed point, is unchanged; only the split moves.
    The surrogate (a chain of the same length over a cheap model, e.g. `ddnm_chain` on
    `spectral_prior_eps`) runs inside the solver's serial scan, so it must need no network. The closer
    its step is to the real one as a function of the state, the less an error has to wait for the next
    iteration to travel down the chain (see the module's docstring); with surrogate = chain the update
    is zero and one iteration gives the sequential chain.
    """
    if surrogate.n_steps != chain.n_steps:
        raise ValueError(f"the surrogate has {surrogate.n_steps} steps, the chain {chain.n_steps}: they must match")

    def drift(k: int, s: Tensor) -> Tensor:
        return _whole_step(surrogate, s, torch.full((s.shape[0],), k, device=s.device))

    def update(states: Tensor, steps: Tensor) -> Tensor:
        return _whole_step(chain, states, steps) - _whole_step(surrogate, states, steps)

    return Chain(chain.n_steps, update, drift)


def _whole_step(chain: Chain, states: Tensor, steps: Tensor) -> Tensor:
    """drift + update of a chain on a step-major stack (see `Chain`): the drift is applied per step block."""
    out = chain.update(states, steps)
    if chain.drift is None:
        return out
    blocks, start = [], 0
    for k, count in zip(*torch.unique_consecutive(steps, return_counts=True)):
        blocks.append(chain.drift(int(k), states[start : start + int(count)]))
        start += int(count)
    return out + torch.cat(blocks)


def ddnm_chain(
    eps_model: Callable[[Tensor, Tensor], Tensor],
    operator: LinearOperator,
    y: Tensor,
    alpha_bars: Tensor,
    timesteps: Tensor,
    eta: float = 0.0,
    noises: Tensor | None = None,
) -> Chain:
    """DeqIR's chain: DDIM with DDNM's range-null projection on an unconditional eps-model.

    Step k at DDPM timestep t = timesteps[k] (a_t = alpha_bars[t], a_prev that of the next timestep,
    1 after the last):
        eps = eps_model(x_t, t);  x0|t = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)             (DDIM eq. 9)
        x0_hat = A^+ y + (I - A^+ A) x0|t                                                   (DDNM eq. 13)
        x_prev = sqrt(a_prev) x0_hat + c_t eps + s_t z_t                                   (DDIM eq. 12)
    with c_t = sqrt(1 - a_prev - s_t^2) and s_t = eta sigma_t (DDIM eq. 16).
    The last step (a_prev = 1, c = s = 0) lands on x0_hat, so A x_0 = y exactly for y in A's range.

    Split into drift and update. Writing eps through x0|t, eps = (x_t - sqrt(a_t) x0|t) / sqrt(1 - a_t),
    gives exactly
        x_prev = c_t / sqrt(1 - a_t) x_t  +  [sqrt(a_prev) x0_hat - c_t sqrt(a_t / (1 - a_t)) x0|t + s_t z_t],
    a scalar drift on all of x_t and an update that depends on x_t only through the network's
    x0|t (the same split as `sr3_ddim_chain`). Two other exact splits were measured (iterations to a
    relative residual of 1e-3, Picard / Anderson, on the tests' eps-model: a Gaussian-data oracle plus
    a small conv net, 2 images of 3 x 8 x 8, SR x2, eta 0; inpainting and eta 0.5 rank the same):
        T                                     10       25       50
        drift 0 (everything in the update)    11/12    26/28    49/50
        sqrt(a_prev / a_t) (I - A^+ A) x_t    10/17    21/24    39/43
        c_t / sqrt(1 - a_t) x_t (kept)         6/6      8/8     15/12
    The null-space drift leaves the range part of eps(x_t), with a weight near 1 at high noise, in the
    update, so an error there travels one step per iteration; through x0|t the update's weight on
    x_t is small at high noise (x0|t hardly depends on x_t there) and O(step) at low noise.

    `eps_model(x, t)` takes t as int64 of shape (N,); `y` is the measurement, B x ...; `timesteps`
    the T integer timesteps visited, strictly decreasing; `noises` the T fixed z_t (T x B x C x H x W,
    e.g. from `draw_noises`), needed when eta > 0.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got eta={eta}")
    timesteps = torch.as_tensor(timesteps).long().cpu()  # coefficients live on the CPU; moved per call
    if timesteps.ndim != 1 or timesteps.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(timesteps.shape)}")
    if not bool((timesteps[1:] < timesteps[:-1]).all()) or timesteps.min() < 0 or timesteps.max() >= alpha_bars.numel():
        raise ValueError(
            f"timesteps must decrease strictly within [0, {alpha_bars.numel() - 1}], got {timesteps.tolist()}"
        )
    n_steps, batch = timesteps.numel(), y.shape[0]
    if eta > 0 and (noises is None or noises.shape[:2] != (n_steps, batch)):
        got = None if noises is None else tuple(noises.shape)
        raise ValueError(f"eta > 0 needs noises of shape ({n_steps}, {batch}, C, H, W), got {got}")
    a_t = alpha_bars.detach().double().cpu()[timesteps]
    a_prev = torch.cat([a_t[1:], a_t.new_ones(1)])
    sigma = ddim_sigma(a_t, a_prev, eta)
    direction = (1.0 - a_prev - sigma**2).clamp_min(0.0).sqrt()  # c_t; the clamp guards round-off only
    keep = direction / (1.0 - a_t).sqrt()
    x0_gain = direction * (a_t / (1.0 - a_t)).sqrt()

    def drift(k: int, x: Tensor) -> Tensor:
        return keep[k].item() * x

    def update(states: Tensor, steps: Tensor) -> Tensor:
        index = steps.cpu()
        eps = eps_model(states, timesteps.to(states.device)[steps])
        # x0|t = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (DDIM eq. 9)
        x0_t = (states - per_sample((1.0 - a_t[index]).sqrt(), eps) * eps) / per_sample(a_t[index].sqrt(), eps)
        x0_hat = _project_stack(operator, x0_t, y)
        out = per_sample(a_prev[index].sqrt(), eps) * x0_hat - per_sample(x0_gain[index], eps) * x0_t
        if eta > 0:
            z = rearrange(noises[_step_indices(steps, batch).to(noises.device)], "n b ... -> (n b) ...")
            out = out + per_sample(sigma[index], eps) * z.to(device=eps.device, dtype=eps.dtype)
        return out

    return Chain(n_steps, update, drift)


def sr3_ddim_chain(
    model: Callable[..., Tensor], gammas: Tensor, clip_y0: bool = True, condition: Tensor | None = None
) -> Chain:
    """The chain of `samplers.ddim_sample` with eta = 0: T = len(gammas) steps down to gamma_0 = 1.

    With eps_hat re-derived from the (clamped) y0_hat, y_prev = sqrt(gamma_prev) y0_hat +
    sqrt(1 - gamma_prev) eps_hat = sqrt((1 - gamma_prev) / (1 - gamma_t)) y_t + c y0_hat exactly, with
    c = sqrt(gamma_prev) - sqrt((1 - gamma_prev) gamma_t / (1 - gamma_t)): the first term is the drift,
    the second the update. Clamping makes the update non-affine; the fixed point is still the chain.
    With everything in the update instead (drift 0), the tests' chain (T = 50, tolerance 1e-3) needs
    43 Picard / 41 Anderson iterations instead of 8 / 7.

    `model(y_t, sqrt(gamma))` as for the samplers, or `model(y_t, sqrt(gamma), condition)` when a
    `condition` (B x ..., e.g. SR3's up-sampled input) is given: the solver evaluates many steps in one
    batch, so the chain repeats the condition alongside the states instead of a closure holding it.
    """
    levels = inference_levels(gammas, torch.device("cpu"))  # [1, gamma_1, ..., gamma_T]
    gamma_t, gamma_prev = levels.flip(0)[:-1], levels.flip(0)[1:]  # step k: gamma_{T-k} -> gamma_{T-k-1}
    keep = ((1.0 - gamma_prev) / (1.0 - gamma_t)).sqrt()
    y0_gain = gamma_prev.sqrt() - ((1.0 - gamma_prev) * gamma_t / (1.0 - gamma_t)).sqrt()

    def drift(k: int, y_t: Tensor) -> Tensor:
        return keep[k].item() * y_t

    def update(states: Tensor, steps: Tensor) -> Tensor:
        index = steps.cpu()
        if condition is None:
            net = model
        else:
            tiled = _tile(condition, states.shape[0] // condition.shape[0])
            net = lambda y, level: model(y, level, tiled)  # noqa: E731
        y0_hat = predicted_y0(net, states, gamma_t[index].to(states.device), clip_y0)
        return per_sample(y0_gain[index], y0_hat) * y0_hat

    return Chain(gamma_t.numel(), update, drift)


ConditionedPredictor = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""`predict(I_t, I_in, alpha_bar_t, beta_bar_t, t) -> (I_res_hat, eps_hat)`: RDDM's predictor with the
input image as an argument, so the solver can evaluate many steps of the same images in one batch."""


def rddm_chain(predict: ConditionedPredictor, i_in: Tensor, schedule: ResidualSchedule, n_steps: int) -> Chain:
    """The chain of `rddm.sample` with eta = 0 over `n_steps` evenly spaced times (T .. 0).

    Each step I_s = I_t - (alpha_bar_t - alpha_bar_s) I_res_hat - (beta_bar_t - beta_bar_s) eps_hat is
    the identity on I_t (the drift) plus the network's terms (the update, `rddm.ddim_step` applied to a
    zero state). Start the solver from I_T = I_in + beta_bar_T * noise, as `rddm.sample` does. With
    everything in the update instead (drift 0), the tests' chain (T = 50, tolerance 1e-3) needs 51
    Picard / 60 Anderson iterations instead of 6 / 6.
    """
    times = schedule.sampling_times(n_steps)
    batch = i_in.shape[0]

    def drift(k: int, i_t: Tensor) -> Tensor:
        return i_t

    def update(states: Tensor, steps: Tensor) -> Tensor:
        t, s = times[steps.cpu()].to(states.device), times[steps.cpu() + 1].to(states.device)
        coeff_t, coeff_s = schedule.at(t), schedule.at(s)
        res_hat, eps_hat = predict(states, _tile(i_in, states.shape[0] // batch), *coeff_t, t)
        return ddim_step(torch.zeros_like(states), res_hat, eps_hat, coeff_t, coeff_s)

    return Chain(n_steps, update, drift)
