"""The chains of the suite's samplers, each built on its sampler's step, and their preconditioning.

A chain's step k is the sampler's step (`samplers.ddim_step`, `rddm.ddim_step`) at the k-th level of its
schedule, evaluated on a step-major stack of many steps at once (see `Chain`). `step_chain` splits it into a
linear drift g_k s (the weight of the state in the step once the network's output is written through its
predicted clean image) and the update, the rest: how the split is chosen decides how fast the solver
converges (docs/solver.md gives the measurements).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from ir_lightning.diffusion.deq.solve import Chain, step_indices, tile
from ir_lightning.diffusion.gaussian import per_sample, predict_eps_from_y0, predict_y0_from_eps
from ir_lightning.diffusion.operators import LinearOperator
from ir_lightning.diffusion.rddm import ResidualSchedule
from ir_lightning.diffusion.rddm import ddim_step as rddm_step
from ir_lightning.diffusion.samplers import ddim_drift, ddim_sigma, ddim_step, gaussian_like, inference_levels

StackStep = Callable[[Tensor, Tensor], Tensor]
"""`step(states, steps) -> next states`: a whole sampler step on a step-major stack (see `Chain`)."""

EpsModel = Callable[[Tensor, Tensor], Tensor]
"""`eps_model(x_t, t) -> eps_hat` with t the integer DDPM timestep of each image, int64 of shape (N,)."""

StackSpectralFn = Callable[..., Tensor]
"""`fn(rows, s, *coefficients)`: `LinearOperator.spectral`'s fn for the rows `rows` of a step-major stack."""

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


def _blockwise(operator: LinearOperator, stack: Tensor, batch: int, apply: Callable[[slice], Tensor]) -> Tensor:
    """apply(rows) over a step-major stack of n B images (see `Chain`): one call on the whole stack when the
    operator accepts n B images (its `output_shape` says so); an operator built with per-image constants for B
    images (an inpainting mask per image) is applied one step's batch of rows at a time instead."""
    try:
        operator.output_shape(tuple(stack.shape))
    except ValueError:
        return torch.cat([apply(slice(start, start + batch)) for start in range(0, stack.shape[0], batch)])
    return apply(slice(None))


def _project_stack(operator: LinearOperator, x0: Tensor, y: Tensor) -> Tensor:
    """operator.project(x0, y) on a step-major stack of n B images, y (B, ...) repeated per step."""
    y_stack = tile(y, x0.shape[0] // y.shape[0])
    return _blockwise(operator, x0, y.shape[0], lambda rows: operator.project(x0[rows], y_stack[rows]))


def _check_timesteps(timesteps: Tensor, n_train: int) -> Tensor:
    timesteps = torch.as_tensor(timesteps).long().cpu()  # coefficients live on the CPU; moved per call
    if timesteps.ndim != 1 or timesteps.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(timesteps.shape)}")
    if not bool((timesteps[1:] < timesteps[:-1]).all()) or timesteps.min() < 0 or timesteps.max() >= n_train:
        raise ValueError(f"timesteps must decrease strictly within [0, {n_train - 1}], got {timesteps.tolist()}")
    return timesteps


NoiseWeights = Literal["ddim", "ddnm", "deqir", "deqir_without_svd"]
NOISE_WEIGHTS: tuple[str, ...] = ("ddim", "ddnm", "deqir", "deqir_without_svd")
"""Valid values of `ddnm_chain(weights=...)`: whose weights of eps and of the noise a step uses."""

Split = Literal["x0", "null_space"]
SPLITS: tuple[str, ...] = ("x0", "null_space")
"""Valid values of `ddnm_chain(split=...)`: which part of a step is the solver's drift."""


def noise_weights(
    a_t: Tensor, a_prev: Tensor, kind: str = "ddim", eta: float = 0.0, noise_weight: float = 0.0
) -> tuple[Tensor, Tensor]:
    """(c_eps, c_z): the weights of the predicted noise and of the noise z in a step of the DDNM chain,
        x_prev = sqrt(a_prev) x0_hat + c_eps eps + c_z z,
    per step (float64, shaped like a_t), by `kind`:

    - "ddim": DDIM (eq. 12, 16): c_z = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev),
      c_eps = sqrt(1 - a_prev - c_z^2), as `samplers.ddim_step`.
    - "ddnm": DDNM's sampler (wyhuai/DDNM functions/svd_ddnm.py:63-64): c_z = sqrt(1 - a_prev) eta,
      c_eps = sqrt(1 - a_prev) sqrt(1 - eta^2).
    - "deqir": DeqIR with --use_svd (caojiezhang/DeqIR runners/diffusion.py:521-525): c_z = sqrt(1 - a_prev) nw,
      c_eps = sqrt(1 - a_prev) sqrt(1 - etw^2), with etw = `eta` and nw = `noise_weight` (official defaults 0;
      its README runs --etw 0.1). With nw^2 != etw^2, x_prev's noise variance is not 1 - a_prev.
    - "deqir_without_svd": "deqir" times sqrt(1 - a_prev^2), what DeqIR computes without --use_svd
      (runners/diffusion.py:519, 532, 544): a bug inherited from DDNM's simplified code
      (guided_diffusion/diffusion.py `simplified_ddnm_plus`, lines 356, 384), whose sigma_t = sqrt(1 - a_prev^2)
      squares a_prev and multiplies c1, c2 that already carry sqrt(1 - a_prev); DDNM's SVD sampler takes
      sigma_t = sqrt(1 - a_prev) (svd_ddnm.py:121) and does not multiply it again.
    """
    if kind == "ddim":
        c_z = ddim_sigma(a_t, a_prev, eta)
        return (1.0 - a_prev - c_z**2).clamp_min(0.0).sqrt(), c_z  # clamp_min: float round-off only
    scale = (1.0 - a_prev).sqrt()
    if kind == "ddnm":
        return scale * math.sqrt(1.0 - eta**2), scale * eta
    if kind == "deqir_without_svd":
        scale = scale * (1.0 - a_prev**2).sqrt()
    elif kind != "deqir":
        raise ValueError(f"weights must be one of {', '.join(NOISE_WEIGHTS)}, got {kind!r}")
    return scale * math.sqrt(1.0 - eta**2), scale * noise_weight


def _spectral_on_stack(operator: LinearOperator, batch: int, fn: StackSpectralFn, *stacks: Tensor) -> Tensor:
    """operator.spectral(fn, *stacks) on step-major stacks of n B images, `fn(rows, s, *coefficients)` told
    which rows it gets (for per-image constants)."""
    return _blockwise(
        operator,
        stacks[0],
        batch,
        lambda rows: operator.spectral(lambda s, *c: fn(rows, s, *c), *(stack[rows] for stack in stacks)),
    )


def _noise_aware_weights(s: Tensor, a: Tensor, sigma_y: float, c_eps: Tensor, c_z: Tensor):
    """DDNM+'s per-coefficient (lambda, d_z, d_eps) at singular values s (DDNM eq. 17-19; wyhuai/DDNM
    functions/svd_operators.py `Lambda`, `Lambda_noise`), a = sqrt(a_prev) and sigma_t = sqrt(c_eps^2 + c_z^2)
    (sqrt(1 - a_prev) for the "ddim" and "ddnm" weights). Where the scaled measurement noise a sigma_y / s
    exceeds sigma_t the correction is shrunk (lambda = s c_eps / (a sigma_y)) and only c_z z is added; where it
    is below, lambda = 1 and fresh noise tops it up to sigma_t (d_z = sqrt(sigma_t^2 - (a sigma_y / s)^2)); on
    the null space (s = 0), and where the two are equal, the step's own (1, c_z, c_eps)."""
    sigma_t = (c_eps**2 + c_z**2).sqrt()
    seen = s > 0
    scaled_noise = torch.where(seen, a * sigma_y / torch.where(seen, s, torch.ones_like(s)), torch.zeros_like(s))
    noisy, clean = seen & (sigma_t < scaled_noise), seen & (sigma_t > scaled_noise)
    one, zero = torch.ones_like(scaled_noise), torch.zeros_like(scaled_noise)
    lam = torch.where(noisy, s * c_eps / (a * sigma_y), one)
    d_z = torch.where(clean, (sigma_t**2 - scaled_noise**2).clamp_min(0.0).sqrt(), c_z * one)
    d_eps = torch.where(noisy | clean, zero, c_eps * one)
    return lam, d_z, d_eps


def ddnm_chain(
    eps_model: EpsModel,
    operator: LinearOperator,
    y: Tensor,
    alpha_bars: Tensor,
    timesteps: Tensor,
    eta: float = 0.0,
    noises: Tensor | None = None,
    *,
    weights: NoiseWeights = "ddim",
    noise_weight: float = 0.0,
    sigma_y: float = 0.0,
    split: Split = "x0",
) -> Chain:
    """DeqIR's chain: DDIM with DDNM's range-null projection, on an unconditional eps-model.

    Step k goes from a_t = alpha_bars[timesteps[k]] to a_prev (that of the next timestep, 1 after the last, as
    the official `compute_alpha` gives at t = -1), unclamped:
        x0|t = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)                                        (DDNM eq. 12)
        x0_hat = A^+ y + (I - A^+ A) x0|t                                                    (DDNM eq. 13)
        x_prev = sqrt(a_prev) x0_hat + c_eps eps + c_z z_k
    with (c_eps, c_z) from `noise_weights(weights, eta, noise_weight)` (default "ddim": `samplers.ddim_step`)
    and the fixed noise z_k = noises[k]. The last step lands on x0_hat, so A x_0 = y for y in A's range.

    `sigma_y` > 0 (the measurement noise std on the signed [-1, 1] scale) applies DDNM+'s noise-aware correction
    instead (DDNM eq. 17-19, `_noise_aware_weights`, through `operator.spectral`): x0_hat = x0|t + V Lambda V^T
    A^+ (y - A x0|t) and the noise terms V (D_z V^T z_k + D_eps V^T eps). DDNM's SR, deblurring and colorization
    operators scale the coefficients of eps and z without V^T (their `Lambda_noise`); this chain uses V^T as
    DDNM's inpainting and the paper do (for z, the same distribution).

    Fresh noises per step (DDNM) or one noise for every step (DeqIR: noises = z repeated T times) are both drawn
    before the chain runs, so the chain is deterministic and its fixed point is the sequential chain.

    `split` chooses the solver's drift (docs/solver.md): "x0" (default), c_eps / sqrt(1 - a_t) x_t, the step's
    weight of x_t once eps is written through x0|t; "null_space", DeqIR's own: sqrt(a_prev / a_t) (I - A^+ A) x_t,
    with which the joint map G equals the official `compute_multi_step_sr` on the same iterate. Any split gives
    the same chain; only the solver's iterates differ.

    `eps_model(x, t)` takes t as int64 of shape (N,); `y` is the measurement, B x ...; `timesteps` the T
    integer timesteps visited, strictly decreasing (`schedules.respaced_timesteps` or `official_timesteps`);
    `noises` the T fixed z_k (T x B x C x H x W), needed when the weights put noise in a step or sigma_y > 0.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got eta={eta}")
    if weights not in NOISE_WEIGHTS or split not in SPLITS:
        raise ValueError(
            f"weights must be one of {', '.join(NOISE_WEIGHTS)} and split one of {', '.join(SPLITS)}, "
            f"got weights={weights!r}, split={split!r}"
        )
    if not noise_weight >= 0.0 or not sigma_y >= 0.0:
        raise ValueError(f"noise_weight and sigma_y must be >= 0, got {noise_weight}, {sigma_y}")
    timesteps = _check_timesteps(timesteps, alpha_bars.numel())
    n_steps, batch = timesteps.numel(), y.shape[0]
    a_t = alpha_bars.detach().double().cpu()[timesteps]
    a_prev = torch.cat([a_t[1:], a_t.new_ones(1)])
    c_eps, c_z = noise_weights(a_t, a_prev, weights, eta, noise_weight)
    noisy = bool((c_z > 0).any()) or sigma_y > 0
    if noisy and (noises is None or noises.shape[:2] != (n_steps, batch)):
        got = None if noises is None else tuple(noises.shape)
        raise ValueError(
            f"a step with noise (eta, noise_weight or sigma_y > 0) needs noises of shape ({n_steps}, {batch}, C, H, W), "
            f"got {got}"
        )

    def step(states: Tensor, steps: Tensor) -> Tensor:
        index = steps.cpu()
        eps = eps_model(states, timesteps.to(states.device)[steps])
        gamma_t, gamma_prev = a_t[index].to(states.device), a_prev[index].to(states.device)
        x0_t = predict_y0_from_eps(states, gamma_t, eps)  # DDNM eq. 12 (DDIM eq. 9)
        eps = predict_eps_from_y0(states, gamma_t, x0_t)  # the eps x0|t implies, as `samplers.ddim_step`
        noise = None
        if noisy:
            noise = rearrange(noises[step_indices(steps, batch).to(noises.device)], "n b ... -> (n b) ...")
            noise = noise.to(device=states.device, dtype=states.dtype)
        weight_eps, weight_z = c_eps[index].to(states.device), c_z[index].to(states.device)
        if sigma_y > 0:
            return _noise_aware_step(operator, y, sigma_y, x0_t, eps, noise, gamma_prev, weight_eps, weight_z)
        # x_prev = sqrt(a_prev) x0_hat + c_eps eps + c_z z (DDIM eq. 12 with DDNM eq. 13's x0_hat)
        x_prev = per_sample(gamma_prev.sqrt(), states) * _project_stack(operator, x0_t, y)
        x_prev = x_prev + per_sample(weight_eps, states) * eps
        return x_prev if noise is None else x_prev + per_sample(weight_z, states) * noise

    if split == "x0":
        return step_chain(n_steps, step, c_eps / (1.0 - a_t).sqrt())
    return _null_space_split(n_steps, step, operator, y, (a_prev / a_t).sqrt())


def _noise_aware_step(
    operator: LinearOperator,
    y: Tensor,
    sigma_y: float,
    x0_t: Tensor,
    eps: Tensor,
    noise: Tensor,
    a_prev: Tensor,
    c_eps: Tensor,
    c_z: Tensor,
) -> Tensor:
    """DDNM+'s step on a step-major stack (`ddnm_chain` with sigma_y > 0), per-image levels a_prev, c_eps, c_z."""
    batch, a = y.shape[0], a_prev.sqrt()

    def weights(rows: slice, s: Tensor, like: Tensor):
        def level(values: Tensor) -> Tensor:  # per image, in s's (real) dtype: coefficients may be complex
            return values[rows].reshape(-1, *([1] * (like.ndim - 1))).to(device=s.device, dtype=s.dtype)

        return _noise_aware_weights(s, level(a), sigma_y, level(c_eps), level(c_z))

    correction = _project_stack(operator, x0_t, y) - x0_t  # A^+ (y - A x0|t)
    # x0_hat = x0|t + V Lambda V^T A^+ (y - A x0|t) (DDNM eq. 17)
    x0_hat = x0_t + _spectral_on_stack(operator, batch, lambda rows, s, c: weights(rows, s, c)[0] * c, correction)

    def noise_terms(rows: slice, s: Tensor, z: Tensor, e: Tensor) -> Tensor:
        _, d_z, d_eps = weights(rows, s, z)
        return d_z * z + d_eps * e

    # x_prev = sqrt(a_prev) x0_hat + V (D_z V^T z + D_eps V^T eps) (DDNM eq. 19 with DDIM's eps term)
    return per_sample(a, x0_hat) * x0_hat + _spectral_on_stack(operator, batch, noise_terms, noise, eps)


def _null_space_split(n_steps: int, step: StackStep, operator: LinearOperator, y: Tensor, gain: Tensor) -> Chain:
    """The chain s_{k+1} = step(s_k, k) split as drift_k(s) = g_k (I - A^+ A) s and the rest (DeqIR's split)."""
    zeros = torch.zeros_like(y)

    def null_part(s: Tensor) -> Tensor:  # (I - A^+ A) s = project(s, 0)
        return _project_stack(operator, s, zeros.to(device=s.device, dtype=s.dtype))

    def drift(k: int, s: Tensor) -> Tensor:
        return gain[k].item() * null_part(s)

    def update(states: Tensor, steps: Tensor) -> Tensor:
        return step(states, steps) - per_sample(gain[steps.cpu()], states) * null_part(states)

    return Chain(n_steps, update, drift)


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
