"""The chains of the suite's samplers, each built on its sampler's step, and their preconditioning.

A chain's step k is the sampler's step (`samplers.ddim_step`, `rddm.ddim_step`) at the k-th level of its
schedule, evaluated on a step-major stack of many steps at once (see `Chain`). `step_chain` splits it into a
linear drift g_k s (the weight of the state in the step once the network's output is written through its
predicted clean image) and the update, the rest: how the split is chosen decides how fast the solver
converges (docs/solver.md gives the measurements).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor

from ir_lightning.diffusion.deq.solve import Chain, step_indices, tile
from ir_lightning.diffusion.gaussian import per_sample
from ir_lightning.diffusion.operators import LinearOperator
from ir_lightning.diffusion.rddm import ResidualSchedule
from ir_lightning.diffusion.rddm import ddim_step as rddm_step
from ir_lightning.diffusion.samplers import ddim_drift, ddim_step, gaussian_like, inference_levels

StackStep = Callable[[Tensor, Tensor], Tensor]
"""`step(states, steps) -> next states`: a whole sampler step on a step-major stack (see `Chain`)."""

EpsModel = Callable[[Tensor, Tensor], Tensor]
"""`eps_model(x_t, t) -> eps_hat` with t the integer DDPM timestep of each image, int64 of shape (N,)."""

ConditionedPredictor = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""`predict(I_t, I_in, alpha_bar_t, beta_bar_t, t) -> (I_res_hat, eps_hat)`: RDDM's predictor with the
input image as an argument, so the solver can evaluate many steps of the same images in one batch."""


def step_chain(n_steps: int, step: StackStep, drift_gain: Tensor) -> Chain:
    """The chain s_{k+1} = step(s_k, k), split as drift_k(s) = g_k s and update_k(s) = step(s, k) - g_k s.

    `drift_gain` holds g_0..g_{T-1} (T,); any g gives the same chain, a good one (the step's own weight of
    the state) a fast solve.
    """
    gains = drift_gain.detach().double().cpu()
    if gains.shape != (n_steps,):
        raise ValueError(f"drift_gain must have shape ({n_steps},), got {tuple(gains.shape)}")

    def drift(k: int, s: Tensor) -> Tensor:
        return gains[k].item() * s

    def update(states: Tensor, steps: Tensor) -> Tensor:
        return step(states, steps) - per_sample(gains[steps.cpu()], states) * states

    return Chain(n_steps, update, drift)


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
    return operator.project(x0, tile(y, x0.shape[0] // y.shape[0]))


def _check_timesteps(timesteps: Tensor, n_train: int) -> Tensor:
    timesteps = torch.as_tensor(timesteps).long().cpu()  # coefficients live on the CPU; moved per call
    if timesteps.ndim != 1 or timesteps.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(timesteps.shape)}")
    if not bool((timesteps[1:] < timesteps[:-1]).all()) or timesteps.min() < 0 or timesteps.max() >= n_train:
        raise ValueError(f"timesteps must decrease strictly within [0, {n_train - 1}], got {timesteps.tolist()}")
    return timesteps


def ddnm_chain(
    eps_model: EpsModel,
    operator: LinearOperator,
    y: Tensor,
    alpha_bars: Tensor,
    timesteps: Tensor,
    eta: float = 0.0,
    noises: Tensor | None = None,
) -> Chain:
    """DeqIR's chain: DDIM with DDNM's range-null projection, on an unconditional eps-model.

    Step k is `samplers.ddim_step` from a_t = alpha_bars[timesteps[k]] to a_prev (that of the next
    timestep, 1 after the last), unclamped, with the predicted x0 projected by the x0 hook
        x0_hat = A^+ y + (I - A^+ A) x0|t                                                    (DDNM eq. 13)
    and the fixed noise z_k = noises[k]; the last step lands on x0_hat, so A x_0 = y for y in A's range.
    Drift: `ddim_drift`, c_t / sqrt(1 - a_t) x_t (docs/solver.md compares the splits).

    `eps_model(x, t)` takes t as int64 of shape (N,); `y` is the measurement, B x ...; `timesteps` the T
    integer timesteps visited, strictly decreasing (e.g. `schedules.respaced_timesteps`); `noises` the T
    fixed z_k (T x B x C x H x W, e.g. from `draw_noises`), needed when eta > 0.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got eta={eta}")
    timesteps = _check_timesteps(timesteps, alpha_bars.numel())
    n_steps, batch = timesteps.numel(), y.shape[0]
    if eta > 0 and (noises is None or noises.shape[:2] != (n_steps, batch)):
        got = None if noises is None else tuple(noises.shape)
        raise ValueError(f"eta > 0 needs noises of shape ({n_steps}, {batch}, C, H, W), got {got}")
    a_t = alpha_bars.detach().double().cpu()[timesteps]
    a_prev = torch.cat([a_t[1:], a_t.new_ones(1)])

    def project(x0: Tensor) -> Tensor:
        return _project_stack(operator, x0, y)

    def step(states: Tensor, steps: Tensor) -> Tensor:
        index = steps.cpu()
        eps = eps_model(states, timesteps.to(states.device)[steps])
        noise = None
        if eta > 0:
            noise = rearrange(noises[step_indices(steps, batch).to(noises.device)], "n b ... -> (n b) ...")
            noise = noise.to(device=states.device, dtype=states.dtype)
        gamma_t, gamma_prev = a_t[index].to(states.device), a_prev[index].to(states.device)
        return ddim_step(states, eps, gamma_t, gamma_prev, eta=eta, noise=noise, clip_y0=False, x0_hook=project)[0]

    return step_chain(n_steps, step, ddim_drift(a_t, a_prev, eta))


def sr3_ddim_chain(
    model: Callable[..., Tensor], gammas: Tensor, clip_y0: bool = True, condition: Tensor | None = None
) -> Chain:
    """The chain of `samplers.ddim_sample` with eta = 0: T = len(gammas) `ddim_step`s down to gamma_0 = 1.

    Drift: `ddim_drift`, sqrt((1 - gamma_prev) / (1 - gamma_t)) y_t; the update is c y0_hat with
    c = sqrt(gamma_prev) - sqrt((1 - gamma_prev) gamma_t / (1 - gamma_t)), non-affine when y0_hat is clamped
    (the fixed point is still the chain). `model(y_t, sqrt(gamma))` as for the samplers, or
    `model(y_t, sqrt(gamma), condition)` when a `condition` (B x ..., e.g. SR3's up-sampled input) is given:
    the chain repeats it alongside the states, since the solver evaluates many steps in one batch.
    """
    levels = inference_levels(gammas, torch.device("cpu"))  # [1, gamma_1, ..., gamma_T]
    gamma_t, gamma_prev = levels.flip(0)[:-1], levels.flip(0)[1:]  # step k: gamma_{T-k} -> gamma_{T-k-1}

    def step(states: Tensor, steps: Tensor) -> Tensor:
        index = steps.cpu()
        g_t, g_prev = gamma_t[index].to(states.device), gamma_prev[index].to(states.device)
        extra = () if condition is None else (tile(condition, states.shape[0] // condition.shape[0]),)
        eps_hat = model(states, g_t.sqrt().to(torch.float32), *extra)
        return ddim_step(states, eps_hat, g_t, g_prev, clip_y0=clip_y0)[0]

    return step_chain(gamma_t.numel(), step, ddim_drift(gamma_t, gamma_prev))


def rddm_chain(predict: ConditionedPredictor, i_in: Tensor, schedule: ResidualSchedule, n_steps: int) -> Chain:
    """The chain of `rddm.sample` with eta = 0: `rddm.ddim_step` at the `sampling_times(n_steps)` (T .. 0).

    Drift: the identity (the step is I_t minus the network's terms). Start the solver from
    I_T = I_in + beta_bar_T * noise, as `rddm.sample` does.
    """
    times = schedule.sampling_times(n_steps)
    batch = i_in.shape[0]

    def step(states: Tensor, steps: Tensor) -> Tensor:
        t, s = times[steps.cpu()].to(states.device), times[steps.cpu() + 1].to(states.device)
        coeff_t, coeff_s = schedule.at(t), schedule.at(s)
        res_hat, eps_hat = predict(states, tile(i_in, states.shape[0] // batch), *coeff_t, t)
        return rddm_step(states, res_hat, eps_hat, coeff_t, coeff_s)[0]

    return step_chain(n_steps, step, torch.ones(n_steps, dtype=torch.float64))


def spectral_prior_eps(alpha_bars: Tensor, variance: float = 0.25, mean: float = 0.0) -> EpsModel:
    """The exact E[eps | x_t] when the clean images are a stationary Gaussian with a 1/f^2 spectrum.

    x_0 - mean has, at the discrete frequency f = (f_y, f_x) in cycles per pixel of an H x W image (periodic
    boundaries), the power P(f) proportional to 1 / (|f|^2 + f_0^2) with f_0 = 1 / max(H, W), scaled so that
    the pixel variance (the mean of P, by Parseval) is `variance`; channels are independent. Then
        E[eps | x_t](f) = sqrt(1 - a) / (a P(f) + 1 - a) * (x_t - sqrt(a) mean)(f).
    The returned `eps(x, t)` (x: N x C x H x W, t: DDPM timesteps (N,)) evaluates it by FFT in the input's
    dtype: a network-free surrogate for `precondition`. The defaults fit photos on the signed [-1, 1] scale
    (pixel variance about 0.25); the surrogate only has to be roughly right.
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

    step_k(s) = drift_k(s) + update_k(s) becomes surrogate_k(s) + [step_k(s) - surrogate_k(s)]: every step,
    hence the sequential chain and the fixed point, is unchanged; only the split moves. The surrogate (a
    chain of the same length over a cheap model, e.g. `ddnm_chain` on `spectral_prior_eps`) runs inside the
    solver's serial scan, so it must need no network. With surrogate = chain the update is zero and one
    iteration gives the sequential chain.
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
