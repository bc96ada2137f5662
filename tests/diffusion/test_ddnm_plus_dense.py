"""DDNM+'s noise-aware step (`deq.chains`, `ddnm_chain(sigma_y > 0)`) against a dense reference where the singular
values are not all 0 or 1: A is written out as a matrix, its SVD taken with numpy, and DDNM eq. 17-19 applied per
singular value in that basis (the official fixture, tests/diffusion/test_deq_official.py, has inpainting only,
whose singular values are 0 and 1, so a factor s could go missing there unseen)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ir_lightning.diffusion.deq.chains import _noise_aware_step
from ir_lightning.diffusion.operators import make_operator

SHAPE = (1, 3, 8, 8)


def dense(operator) -> np.ndarray:
    """A as a matrix (outputs x inputs), column j = A e_j, float64."""
    n = int(np.prod(SHAPE))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *SHAPE[1:])
    return operator.forward(basis).reshape(n, -1).T.numpy()


def reference_step(matrix, y, x0_t, eps, z, a_prev, c_eps, c_z, sigma_y):
    """DDNM eq. 17-19 in A's SVD basis: coefficient i with singular value s_i > 0 is corrected by lambda_i and
    gets noise d_z,i z_i + d_eps,i eps_i; on the null space (s_i = 0) the plain step's c_z z + c_eps eps."""
    _, s, vt = np.linalg.svd(matrix, full_matrices=True)
    s = np.concatenate([s, np.zeros(vt.shape[0] - s.size)])
    s = np.where(s > 1e-10 * s.max(), s, 0.0)
    a, sigma_t = np.sqrt(a_prev), np.hypot(c_eps, c_z)
    lam, d_z, d_eps = np.ones_like(s), np.full_like(s, c_z), np.full_like(s, c_eps)
    for i, value in enumerate(s):
        if value == 0:
            continue
        measured = a * sigma_y / value  # the measurement noise this coefficient carries into x_prev
        if sigma_t >= measured:  # lambda 1, fresh noise tops it up to sigma_t
            d_z[i], d_eps[i] = np.sqrt(sigma_t**2 - measured**2), 0.0
        else:  # shrink the correction so that the carried noise is sigma_t
            lam[i], d_z[i], d_eps[i] = value * c_eps / (a * sigma_y), c_z, 0.0
    residual = np.linalg.pinv(matrix, rcond=1e-10) @ (y - matrix @ x0_t)
    x0_hat = x0_t + vt.T @ (lam * (vt @ residual))
    return a * x0_hat + vt.T @ (d_z * (vt @ z) + d_eps * (vt @ eps))


@pytest.mark.parametrize("name", ["deblur_gauss_sep", "bicubic2", "deblur_gauss"])
@pytest.mark.parametrize("sigma_y", [0.02, 0.3])
def test_the_noise_aware_step_is_ddnm_plus_per_singular_value(name, sigma_y):
    operator = make_operator(name, SHAPE[-2:])
    matrix = dense(operator)
    singular = np.linalg.svd(matrix, compute_uv=False)
    assert ((singular > 1e-8) & (np.abs(singular - 1) > 0.3)).sum() >= 40  # many far from 0 and 1
    g = torch.Generator().manual_seed(0)
    x0_t, eps, z, x = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(4))
    y = operator.forward(x) + sigma_y * torch.randn(operator.output_shape(SHAPE), generator=g, dtype=torch.float64)
    a_prev, c_eps, c_z = 0.6, 0.5, 0.3
    level = torch.tensor([a_prev], dtype=torch.float64)
    ours = _noise_aware_step(
        operator, y, sigma_y, x0_t, eps, z, level, level.new_tensor([c_eps]), level.new_tensor([c_z])
    )
    flat = [t.reshape(-1).numpy() for t in (y, x0_t, eps, z)]
    expected = reference_step(matrix, *flat, a_prev, c_eps, c_z, sigma_y)
    assert np.abs(ours.reshape(-1).numpy() - expected).max() < 1e-8
