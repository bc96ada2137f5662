"""The joint fixed-point sampler against the sequential chains it replaces (DDNM, SR3's DDIM, RDDM),
Picard's finite termination, chunking, DDNM's data consistency and DEQ inversion.

The eps-models are a Gaussian-data oracle (the exact E[eps | x_t] when the clean images are
N(0, s^2 I)) plus a seeded two-layer conv net with a time embedding: the oracle keeps the chain
well-posed (x_0 stays bounded), the net makes every update non-linear. Everything runs in float64 on
two images of 3 x 8 x 8.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ir_lightning.diffusion.deq import (
    SOLVERS,
    Chain,
    SolverSettings,
    ddnm_chain,
    draw_noises,
    joint_map,
    phantom_loss,
    precondition,
    rddm_chain,
    run_chain,
    sequential,
    solve,
    spectral_prior_eps,
    sr3_ddim_chain,
    trajectory,
)
from ir_lightning.diffusion.operators import AveragePoolSR, Inpainting
from ir_lightning.diffusion.rddm import ResidualSchedule
from ir_lightning.diffusion.rddm import sample as rddm_sample
from ir_lightning.diffusion.samplers import ddim_sample
from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas, respace

DTYPE = torch.float64
SHAPE = (2, 3, 8, 8)
DATA_STD = 0.5
ALPHA_BARS = gammas_from_betas(make_betas("linear", 1000, 1e-4, 2e-2))  # DDPM's schedule, DeqIR's models
# The equality tests' tolerance per T, one both solvers reach in fewer than T iterations (measured: at T = 10
# Anderson's residual is ~1e-5 after 9 iterations, so 1e-4 there). After T iterations every state is exact
# whatever the solver did (the exact prefix), so these tests stop the solver at T - 1 and require that it
# stopped by its tolerance: only then does "parallel equals sequential" test the solver.
TOLERANCE = {10: 1e-4, 25: 1e-7, 50: 1e-7}
ERROR_PER_TOLERANCE = 50  # x_0's max error over the relative residual (measured: at most 9 on these problems)


def settings(method: str = "anderson", tol: float = 1e-3, max_iter: int | None = None, **others) -> SolverSettings:
    return SolverSettings(method, tolerance=tol, max_iter=max_iter, **others)


def solved_before_the_bound(chain: Chain, x_T: Tensor, method: str) -> Tensor:
    """x_0 of `solve` with max_iter = T - 1, after checking that it stopped by its tolerance, below T."""
    n_steps = chain.n_steps
    tol = TOLERANCE[n_steps]
    result = solve(chain, x_T, settings(method, tol, n_steps - 1))
    assert result.stopped_by == "tolerance" and result.converged, (method, result.stopped_by, result.residuals[-1])
    assert result.iterations < n_steps and result.residuals[-1] <= tol < max(result.residuals[:-1], default=1.0)
    assert result.network_evaluations == result.iterations
    return result.x0


class TinyNet(nn.Module):
    """conv3x3 -> + time embedding -> tanh -> conv3x3, weights drawn from a seeded generator and scaled
    down by `gain` so that the net is a small smooth perturbation of the oracle."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, hidden: int = 8, gain: float = 0.1, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)

        def weights(*shape: int, fan_in: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(shape, generator=generator, dtype=DTYPE) / math.sqrt(fan_in))

        self.conv1 = weights(hidden, in_channels, 3, 3, fan_in=9 * in_channels)
        self.conv2 = weights(out_channels, hidden, 3, 3, fan_in=9 * hidden)
        self.frequencies = weights(hidden, fan_in=1 / 4)  # time features sin(w t + p)
        self.phases = weights(hidden, fan_in=1)
        self.gain = gain

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        embedding = torch.sin(time.to(DTYPE)[:, None] * self.frequencies + self.phases)
        hidden = torch.tanh(nn.functional.conv2d(x, self.conv1, padding=1) + embedding[:, :, None, None])
        return self.gain * nn.functional.conv2d(hidden, self.conv2, padding=1)


def column(values: Tensor) -> Tensor:
    return values.to(DTYPE).view(-1, 1, 1, 1)


def oracle_eps(x: Tensor, a: Tensor, std: float = DATA_STD) -> Tensor:
    """E[eps | x_t] for x_0 ~ N(0, std^2 I): sqrt(1 - a) x_t / (a std^2 + 1 - a)."""
    a = column(a)
    return (1 - a).sqrt() * x / (a * std**2 + 1 - a)


def images(seed: int, shape: tuple[int, ...] = SHAPE) -> tuple[Tensor, Tensor]:
    """(a reference image ~ N(0, DATA_STD^2), a start x_T ~ N(0, 1))."""
    generator = torch.Generator().manual_seed(seed)
    reference = DATA_STD * torch.randn(shape, generator=generator, dtype=DTYPE)
    return reference, torch.randn(shape, generator=generator, dtype=DTYPE)


def timesteps_of(n_steps: int) -> Tensor:
    """T DDPM timesteps from 999 to 0, the chains' (float32 linspace, rounded)."""
    return torch.linspace(999, 0, n_steps).round().long()


# ---------------------------------------------------------------------------------------------
# the three problems
# ---------------------------------------------------------------------------------------------


def make_operator(name: str, batch: int = SHAPE[0]):
    if name == "sr2":
        return AveragePoolSR(2)
    generator = torch.Generator().manual_seed(11)
    mask = (torch.rand(batch, 1, *SHAPE[-2:], generator=generator) < 0.5).to(DTYPE)  # a mask per image
    return Inpainting(mask)


def ddnm_problem(
    n_steps: int, operator: str = "sr2", eta: float = 0.0, batch: int = SHAPE[0], seen: list | None = None
):
    """(chain, x_T, x_ref, A, y) for DDNM on the oracle + net eps-model; `seen` collects the batch sizes
    the network is called with."""
    net = TinyNet(seed=1)
    x_ref, x_T = images(2, (batch, *SHAPE[1:]))
    op = make_operator(operator, batch)
    y = op.forward(x_ref)

    def eps_model(x: Tensor, t: Tensor) -> Tensor:
        assert t.dtype == torch.int64 and t.shape == (x.shape[0],)
        if seen is not None:
            seen.append(x.shape[0])
        return oracle_eps(x, ALPHA_BARS[t]) + net(x, t / 1000)

    timesteps = timesteps_of(n_steps)
    noises = draw_noises(x_T, n_steps, torch.Generator().manual_seed(3)) if eta > 0 else None
    return ddnm_chain(eps_model, op, y, ALPHA_BARS, timesteps, eta, noises), x_T, x_ref, op, y


def sr3_problem(n_steps: int):
    """(chain, ddim_sample's model, x_T, gammas) for SR3 with a condition (the 'up-sampled input').

    The data std is 1, so the predicted y0 often leaves [-1, 1] and clip_y0 really clamps."""
    net = TinyNet(in_channels=6, seed=4)
    condition, y_T = images(5)
    gammas = respace(gammas_from_betas(make_betas("linear", 2000)), n_steps)

    def model(y: Tensor, level: Tensor, cond: Tensor) -> Tensor:
        assert level.dtype == torch.float32 and cond.shape == y.shape
        return oracle_eps(y, level.double() ** 2, std=1.0) + net(torch.cat([cond, y], 1), level)

    chain = sr3_ddim_chain(model, gammas, clip_y0=True, condition=condition)
    return chain, (lambda y, level: model(y, level, condition)), y_T, gammas


def rddm_problem(n_steps: int):
    """(chain, rddm.sample's predictor, I_in, noise, schedule) with a Gaussian-data oracle for I_0."""
    net = TinyNet(in_channels=6, seed=6)
    schedule = ResidualSchedule.make(1000, sum_scale=1.0)
    x_ref, noise = images(7)
    i_in = (x_ref + 0.3 * images(8)[1]).clamp(-1, 1)

    def predict(i_t: Tensor, i_in: Tensor, alpha_bar: Tensor, beta_bar: Tensor, t: Tensor):
        a, b = column(alpha_bar), column(beta_bar)
        centred = i_t - a * i_in  # = (1 - a) I_0 + b eps
        variance = (1 - a) ** 2 * DATA_STD**2 + b**2
        perturbation = net(torch.cat([i_t, i_in], 1), t / 1000)
        i_0 = (1 - a) * DATA_STD**2 * centred / variance
        return i_in - i_0 + 0.5 * perturbation, b * centred / variance + perturbation

    chain = rddm_chain(predict, i_in, schedule, n_steps)
    return chain, (lambda i_t, a, b, t: predict(i_t, i_in, a, b, t)), i_in, noise, schedule


def max_abs(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------
# the fixed point is the chain
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("operator", ["sr2", "inpaint"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_the_sequential_chain_is_a_fixed_point_of_the_joint_map(operator, eta):
    chain, x_T, *_ = ddnm_problem(10, operator, eta)
    states = trajectory(chain, x_T)
    mapped, calls = joint_map(chain, x_T, states)
    assert calls == 1 and states.shape == (10, *SHAPE)
    assert max_abs(mapped, states) < 1e-12


def preconditioned_ddnm_problem(n_steps: int, operator: str = "inpaint", eta: float = 0.5):
    """`ddnm_problem` split around the spectral prior's DDNM step (same timesteps, same noises)."""
    chain, x_T, x_ref, op, y = ddnm_problem(n_steps, operator, eta)
    noises = draw_noises(x_T, n_steps, torch.Generator().manual_seed(3)) if eta > 0 else None
    surrogate = ddnm_chain(spectral_prior_eps(ALPHA_BARS), op, y, ALPHA_BARS, timesteps_of(n_steps), eta, noises)
    return precondition(chain, surrogate), x_T, x_ref, op, y


def chain_and_start(name: str, n_steps: int) -> tuple[Chain, Tensor]:
    """The chains of every sampler: "sr3", "rddm", "ddnm-<operator>-<eta>", "ddnm-inpaint-0.5-preconditioned"."""
    if name == "sr3":
        chain, _, y_T, _ = sr3_problem(n_steps)
        return chain, y_T
    if name == "rddm":
        chain, _, i_in, noise, schedule = rddm_problem(n_steps)
        return chain, i_in + schedule.beta_bar[-1] * noise  # rddm.sample's start
    _, operator, eta, *preconditioned = name.split("-")
    problem = preconditioned_ddnm_problem if preconditioned else ddnm_problem
    chain, x_T, *_ = problem(n_steps, operator, float(eta))
    return chain, x_T


CHAINS = [
    "sr3",
    "rddm",
    "ddnm-sr2-0.0",
    "ddnm-inpaint-0.0",
    "ddnm-sr2-0.5",
    "ddnm-inpaint-0.5",
    "ddnm-inpaint-0.5-preconditioned",
]


@pytest.mark.parametrize("method", ["anderson", "picard"])
@pytest.mark.parametrize("n_steps", [10, 25])
@pytest.mark.parametrize("name", CHAINS)
def test_parallel_equals_sequential(name, n_steps, method):
    """Every chain's joint fixed point, reached by the tolerance in fewer than T iterations, is its sequential
    chain (a preconditioned chain: the plain chain's) to ERROR_PER_TOLERANCE times the tolerance. T = 10 and 25
    (DeqIR's default); the 14 cases at 50 steps ran the same code for 44 % of this file's time."""
    chain, x_T = chain_and_start(name, n_steps)
    reference = sequential(chain_and_start(name.removesuffix("-preconditioned"), n_steps)[0], x_T)
    assert max_abs(solved_before_the_bound(chain, x_T, method), reference) < ERROR_PER_TOLERANCE * TOLERANCE[n_steps]


@pytest.mark.parametrize("n_steps", [10, 25, 50])
def test_sr3_chain_is_ddim_sample(n_steps):
    chain, model, y_T, gammas = sr3_problem(n_steps)
    reference = ddim_sample(model, y_T, gammas, eta=0.0, clip_y0=True)
    if n_steps == 10:  # the clamp is active, so the update is not affine (checked once: 50 calls cost seconds)
        assert max_abs(reference, ddim_sample(model, y_T, gammas, eta=0.0, clip_y0=False)) > 1e-2
    assert max_abs(sequential(chain, y_T), reference) < 1e-6


@pytest.mark.parametrize("n_steps", [10, 25, 50])
def test_rddm_chain_is_rddm_sample(n_steps):
    chain, predict, i_in, noise, schedule = rddm_problem(n_steps)
    reference = rddm_sample(predict, i_in, schedule, n_steps, eta=0.0, noise=noise)
    i_T = i_in + schedule.beta_bar[-1] * noise  # rddm.sample's start
    assert max_abs(sequential(chain, i_T), reference) < 1e-6


def test_run_chain_is_sequential_or_the_solve():
    chain, x_T, *_ = ddnm_problem(10)
    x0, report = run_chain(chain, x_T, SolverSettings())
    assert report is None and max_abs(x0, sequential(chain, x_T)) == 0.0
    x0, report = run_chain(chain, x_T, settings("picard", 1e-300))
    assert report is not None and report.stopped_by == "exact" and report.iterations == 10  # max_iter None: T
    assert max_abs(x0, sequential(chain, x_T)) < 1e-12
    with pytest.raises(ValueError, match="solver.method anderson or picard, got 'sequential'"):
        solve(chain, x_T, SolverSettings())


# ---------------------------------------------------------------------------------------------
# the solvers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_steps", [10, 25])
def test_picard_makes_k_states_exact_in_k_iterations_and_all_in_T(n_steps):
    chain, x_T, *_ = ddnm_problem(n_steps, "inpaint", eta=0.5)
    states = trajectory(chain, x_T)
    k = n_steps // 2
    partial = solve(chain, x_T, settings("picard", 1e-300, k)).states
    assert max_abs(partial[:k], states[:k]) < 1e-12
    assert max_abs(partial[k:], states[k:]) > 1e-8  # the rest is not exact yet
    after_T = solve(chain, x_T, settings("picard", 1e-300, n_steps))
    assert max_abs(after_T.states, states) < 1e-12
    assert after_T.iterations == n_steps  # the bound, not the tolerance (unless the residual is exactly 0)
    assert after_T.stopped_by == ("exact" if after_T.residuals[-1] > 1e-300 else "tolerance"), after_T.residuals[-1]
    assert after_T.converged  # the states solve the system exactly: no check iteration needed
    assert solve(chain, x_T, settings("picard", 1e-300, n_steps - 1)).stopped_by == "max_iter"


@pytest.mark.parametrize("problem", ["ddnm-sr2", "ddnm-inpaint", "sr3"])
def test_anderson_needs_fewer_iterations_than_picard(problem):
    """T = 50 at DeqIR's tolerance 1e-3 (measured: DDNM SR x2 Picard 15, Anderson 12; inpainting 17, 12;
    SR3 8, 7). At T <= 25 or at tight tolerances the two are within one or two iterations of each other."""
    n_steps = 50
    if problem == "sr3":
        chain, _, x_T, _ = sr3_problem(n_steps)
    else:
        chain, x_T, *_ = ddnm_problem(n_steps, problem.split("-")[1])
    picard = solve(chain, x_T, settings("picard", 1e-3, n_steps + 1))
    anderson = solve(chain, x_T, settings("anderson", 1e-3, n_steps + 1))
    assert picard.converged and anderson.converged
    assert anderson.iterations < picard.iterations, (anderson.iterations, picard.iterations)
    assert len(anderson.residuals) == anderson.iterations and anderson.residuals[-1] <= 1e-3 < anderson.residuals[-2]


def test_callback_sees_each_iteration_and_init_is_used():
    chain, x_T, *_ = ddnm_problem(10)
    seen = []
    result = solve(chain, x_T, settings(tol=1e-6, max_iter=30), True, callback=lambda i, r: seen.append((i, r)))
    assert seen == list(enumerate(result.residuals, start=1))
    assert not result.states.requires_grad  # the net's parameters require grad; the solver keeps no graph
    warm = solve(chain, x_T, settings(tol=1e-6, max_iter=30), init=result.states)  # start at the solution
    assert warm.iterations == 1 and warm.converged


@pytest.mark.parametrize("batch", [1, 2])
def test_chunking_gives_identical_results_within_the_budget(batch):
    n_steps, outputs = 10, []
    for chunk_size in (1, 7, None):
        seen: list[int] = []
        chain, x_T, *_ = ddnm_problem(n_steps, "inpaint", 0.5, batch=batch, seen=seen)
        if chunk_size is not None and chunk_size < batch:  # a call holds whole batches
            with pytest.raises(ValueError, match="chunk_size=1"):
                solve(chain, x_T, settings(chunk_size=chunk_size))
            continue
        result = solve(chain, x_T, settings(tol=1e-4, max_iter=20, chunk_size=chunk_size))
        budget = chunk_size or n_steps * batch
        per_call = budget // batch * batch  # whole batches per call
        assert max(seen) <= budget and seen[0] == min(per_call, n_steps * batch)
        steps_per_call = per_call // batch  # iteration i evaluates the T - i + 1 states not yet exact
        calls = sum(math.ceil((n_steps - i) / steps_per_call) for i in range(result.iterations))
        assert result.network_evaluations == calls and result.network_images == sum(seen)
        outputs.append(result)
    for other in outputs[1:]:
        assert other.iterations == outputs[0].iterations
        assert max_abs(other.states, outputs[0].states) < 1e-12


@pytest.mark.parametrize("operator", ["sr2", "inpaint"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddnm_output_is_data_consistent_even_before_convergence(operator, eta):
    chain, x_T, _, op, y = ddnm_problem(25, operator, eta)
    loose = solve(chain, x_T, settings(tol=1e-3, max_iter=3))
    assert not loose.converged
    for x0 in (sequential(chain, x_T), loose.x0):
        assert max_abs(op.forward(x0), y) < 1e-5


# ---------------------------------------------------------------------------------------------
# DEQ inversion
# ---------------------------------------------------------------------------------------------


def test_phantom_gradient_exact_in_the_limit_and_close_with_two_damped_steps():
    n_steps = 6
    chain, x_T, x_ref, *_ = ddnm_problem(n_steps, "sr2")
    loss_fn = lambda x0: (x0 - x_ref).pow(2).mean()  # noqa: E731
    leaf = x_T.clone().requires_grad_(True)
    loss_fn(sequential(chain, leaf)).backward()  # back-propagation through all T steps
    exact = leaf.grad.flatten()
    with torch.no_grad():
        solution = trajectory(chain, x_T)  # a warm start: the solver confirms it in one iteration

    def phantom_gradient(tau: float, phantom_steps: int, use_checkpoint: bool = True) -> Tensor:
        leaf = x_T.clone().requires_grad_(True)
        phantom_loss(chain, leaf, loss_fn, settings(tol=1e-10), tau, phantom_steps, use_checkpoint, solution).backward()
        return leaf.grad.flatten()

    # dG/dX is nilpotent: T undamped steps are the full back-propagation
    assert (phantom_gradient(1.0, n_steps) - exact).norm().item() < 1e-8 * exact.norm().item()
    # x_0 in G(X) has no drift (the last step lands on x0_hat), so one step reaches x_T not at all
    assert phantom_gradient(0.1, 1).abs().max().item() == 0.0
    two = phantom_gradient(0.1, 2)
    assert nn.functional.cosine_similarity(two, exact, dim=0).item() > 0.9
    assert (phantom_gradient(0.1, 2, use_checkpoint=False) - two).abs().max().item() < 1e-15


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(method="newton"),
            "solver.method must be one of sequential, anderson, picard, anderson_official, got 'newton'",
        ),
        (dict(memory=0), "solver.memory must be an integer >= 1, got 0"),
        (dict(memory=True), "solver.memory must be an integer >= 1, got True"),  # a bool is no integer
        (dict(memory=2.0), "solver.memory must be an integer >= 1, got 2.0"),
        (dict(regularisation=0.0), "solver.regularisation must be a number > 0, got 0.0"),
        (dict(mixing=1.5), r"solver.mixing must be a number in \(0, 1\], got 1.5"),
        (dict(mixing=0), r"solver.mixing must be a number in \(0, 1\], got 0"),
        (dict(tolerance=0.0), "solver.tolerance must be a number > 0, got 0.0"),
        (dict(tolerance=-1e-3), "solver.tolerance must be a number > 0, got -0.001"),
        (dict(tolerance=float("nan")), "solver.tolerance must be a number > 0, got nan"),
        (dict(max_iter=0), "solver.max_iter must be None or an integer >= 1, got 0"),
        (dict(chunk_size=False), "solver.chunk_size must be None or an integer >= 1, got False"),
    ],
)
def test_bad_solver_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SolverSettings(**kwargs)


def test_the_sampler_shortcut_knows_every_solver():
    """`--sampler NAME` sets sampling.solver.method for a solver's name (the loader lists them without torch)."""
    from ir_lightning.inference.loading import SOLVER_NAMES

    assert SOLVER_NAMES == SOLVERS


def test_solver_settings_accept_every_method_and_the_bounds():
    assert SOLVERS == ("sequential", "anderson", "picard", "anderson_official")
    for method in SOLVERS:
        bounds = SolverSettings(
            method, memory=1, regularisation=1, mixing=1, tolerance=1e-300, max_iter=1, chunk_size=1
        )
        assert bounds.method == method and bounds.max_iter == 1


def test_solve_checks_the_first_iterate_and_the_chunk_size():
    chain, x_T, *_ = ddnm_problem(10)
    with pytest.raises(ValueError, match=r"init must have shape \(10, 2, 3, 8, 8\)"):
        solve(chain, x_T, settings(), init=torch.zeros(3, *SHAPE))
    with pytest.raises(ValueError, match="chunk_size must be at least the batch size 2"):
        solve(chain, x_T, settings(chunk_size=1))


def test_bad_chains_name_the_value():
    with pytest.raises(ValueError, match="n_steps=0"):
        Chain(0, lambda s, k: s)
    op, y = AveragePoolSR(2), torch.zeros(2, 3, 4, 4, dtype=DTYPE)
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        ddnm_chain(lambda x, t: x, op, y, ALPHA_BARS, torch.tensor([0, 5]), 0.0)
    with pytest.raises(ValueError, match="noises of shape"):
        ddnm_chain(lambda x, t: x, op, y, ALPHA_BARS, torch.tensor([5, 0]), 0.5)
    with pytest.raises(ValueError, match="returned shape"):
        solve(Chain(2, lambda s, k: s[:1]), torch.zeros(2, 3, 4, 4), settings())


# ---------------------------------------------------------------------------------------------
# the exact prefix and preconditioning
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["anderson", "picard"])
def test_exact_states_are_not_re_evaluated_and_bound_the_rounds_by_T(method):
    """Iteration i evaluates the network on T - i + 1 states only; both solvers stop exact at T."""
    n_steps = 10
    seen: list[int] = []
    chain, x_T, *_ = ddnm_problem(n_steps, "sr2", seen=seen)
    states = trajectory(chain, x_T)
    seen.clear()
    result = solve(chain, x_T, settings(method, 1e-300, 3 * n_steps))
    assert result.converged and result.iterations == n_steps  # a tolerance no residual meets: the bound
    assert max_abs(result.states, states) < 1e-12
    batch = SHAPE[0]
    assert seen == [(n_steps - i) * batch for i in range(n_steps)]
    assert result.network_images == sum(seen) == batch * n_steps * (n_steps + 1) // 2


def circulant_covariance(variance: float, height: int, width: int) -> Tensor:
    """The covariance of one channel of the 1/f^2 prior, built entry by entry from the autocovariance
    c(d) = mean_f P(f) cos(2 pi f . d) (an explicit cosine sum, no FFT)."""
    f_y = torch.tensor([(k if k < (height + 1) // 2 else k - height) / height for k in range(height)], dtype=DTYPE)
    f_x = torch.tensor([(k if k < (width + 1) // 2 else k - width) / width for k in range(width)], dtype=DTYPE)
    power = 1.0 / (f_y[:, None] ** 2 + f_x[None, :] ** 2 + 1.0 / max(height, width) ** 2)
    power = variance * power / power.mean()
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rows, cols = rows.flatten().to(DTYPE), cols.flatten().to(DTYPE)
    d_y, d_x = rows[:, None] - rows[None, :], cols[:, None] - cols[None, :]
    phase = 2 * math.pi * (f_y.view(-1, 1, 1, 1) * d_y + f_x.view(1, -1, 1, 1) * d_x)
    return (power.view(height, width, 1, 1) * torch.cos(phase)).mean((0, 1))


def test_spectral_prior_eps_is_the_dense_gaussian_posterior_mean():
    height, width, variance, mean = 6, 8, 0.3, 0.1
    covariance = circulant_covariance(variance, height, width)
    assert abs(covariance.diagonal().mean().item() - variance) < 1e-12  # the pixel variance asked for
    eps_model = spectral_prior_eps(ALPHA_BARS, variance, mean)
    x = torch.randn(3, 2, height, width, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    t = torch.tensor([999, 500, 3])
    got = eps_model(x, t)
    for i, step in enumerate(t.tolist()):
        a = ALPHA_BARS[step].item()
        system = a * covariance + (1 - a) * torch.eye(height * width, dtype=DTYPE)
        centred = (x[i] - math.sqrt(a) * mean).reshape(2, -1).T  # pixels x channels
        expected = math.sqrt(1 - a) * torch.linalg.solve(system, centred)
        assert max_abs(got[i].reshape(2, -1).T, expected) < 1e-10


def test_preconditioning_with_the_chain_itself_is_exact_after_one_iteration():
    chain, x_T, *_ = ddnm_problem(25, "sr2")
    result = solve(precondition(chain, chain), x_T, settings("picard", 1e-300, 1))
    assert max_abs(result.states, trajectory(chain, x_T)) < 1e-12  # the update is 0: the scan is the chain


def photo_like_problem(n_steps: int, precondition_with: float | None):
    """DDNM x2 SR on 16 x 16 images whose eps-model is a 1/f^2 Gaussian prior (variance 0.3, unknown to
    the surrogate, which assumes 0.25) plus the seeded net: the chain of a photo prior, in float64."""
    net = TinyNet(seed=1)
    prior = spectral_prior_eps(ALPHA_BARS, variance=0.3)
    shape = (1, 3, 16, 16)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    reference = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=DTYPE).cumsum(-1).cumsum(-2) / 16
    op = AveragePoolSR(2)
    y = op.forward(reference)
    timesteps = timesteps_of(n_steps)
    chain = ddnm_chain(lambda x, t: prior(x, t) + net(x, t / 1000), op, y, ALPHA_BARS, timesteps)
    if precondition_with is not None:
        surrogate = ddnm_chain(spectral_prior_eps(ALPHA_BARS, precondition_with), op, y, ALPHA_BARS, timesteps)
        chain = precondition(chain, surrogate)
    return chain, x_T


def test_preconditioning_cuts_the_iterations_of_a_photo_like_prior():
    """T = 50, DeqIR's tolerance 1e-3 (measured: plain Picard 27, Anderson 29; preconditioned Picard 6,
    Anderson 6, with the surrogate's variance off by 17 %). The strong low frequencies make DDIM's step near the identity there,
    which the plain split leaves in the update (docs/solver.md)."""
    iterations = {}
    for name, variance in (("plain", None), ("spectral", 0.25)):
        chain, x_T = photo_like_problem(50, variance)
        reference = sequential(chain, x_T)
        for method in ("picard", "anderson"):
            result = solve(chain, x_T, settings(method, 1e-3, 60))
            assert result.converged and max_abs(result.x0, reference) < 2e-2
            iterations[name, method] = result.iterations
    for method in ("picard", "anderson"):
        assert iterations["spectral", method] * 3 <= iterations["plain", method], iterations
