"""Tests of the SVD operators (DDRM's zero-boundary blurs, Walsh-Hadamard compressed sensing) and of the spectral
interface of every operator: Penrose identities by name, singular values and V g(S) V^T against dense SVDs, and the
official DeqIR operators' numbers (tests/fixtures/official/deqir_operators)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ir_lightning.diffusion.operators import OPERATOR_NAMES, LinearOperator, gaussian_taps, make_operator
from ir_lightning.diffusion.operators_svd import (
    SeparableBlur,
    WalshHadamardCS,
    ddrm_anisotropic_blur,
    ddrm_blur_matrix,
    ddrm_gaussian_blur,
    ddrm_uniform_blur,
    walsh_hadamard_matrix,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "deqir_operators" / "fixture.pt"

# one instance of every name make_operator knows (OPERATOR_NAMES' <k> and <p> filled in)
NAMES = (
    "sr2",
    "bicubic4",
    "deblur_gauss",
    "deblur_uni",
    "deblur_aniso",
    "inpaint_box",
    "inpaint_random50",
    "colorization",
    "deblur_gauss_ddrm",
    "deblur_uni_ddrm",
    "deblur_aniso_ddrm",
    "deblur_gauss_sep",
    "deblur_uni_sep",
    "deblur_aniso_sep",
    "cs_wh4",
)
THREE_CHANNELS = ("colorization", "deblur_gauss_ddrm", "deblur_uni_ddrm", "deblur_aniso_ddrm")


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _random(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dense(apply: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a linear map on images of `in_shape` (C x H x W), column k = map(e_k)."""
    n = math.prod(in_shape)
    return apply(torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)).reshape(n, -1).T


def _small_case(name: str) -> tuple[LinearOperator, tuple[int, int, int]]:
    """The operator on the smallest image its dense matrix needs: 1 x 16 x 16, or 3 x 8 x 8 where it needs 3 channels."""
    channels, size = (3, 8) if name in THREE_CHANNELS else (1, 16)
    return make_operator(name, (size, size), seed=1), (channels, size, size)


def test_names_cover_operator_names() -> None:
    patterns = {name.rstrip("0123456789") for name in NAMES}
    assert patterns == {pattern.split("<")[0] for pattern in OPERATOR_NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_penrose_identities_by_name(name: str) -> None:
    """A A^+ A = A and A^+ A A^+ = A^+ on random images and measurements (3 x 16 x 16, batch 2)."""
    op = make_operator(name, (16, 16), seed=3)
    x = _random((2, 3, 16, 16), seed=0)
    y = _random(op.output_shape(tuple(x.shape)), seed=1)
    ax, pinv_y = op.forward(x), op.pinv(y)
    assert rel_err(op.forward(op.pinv(ax)), ax) < 1e-10
    assert rel_err(op.pinv(op.forward(pinv_y)), pinv_y) < 1e-10


def _g_range(s: torch.Tensor) -> torch.Tensor:
    return s / (s + 0.3)


def _g_null(s: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + 2.0 * s)  # 1 on the null space, so a null space given the wrong s shows


@pytest.mark.parametrize("name", NAMES)
def test_spectral_matches_dense_svd(name: str) -> None:
    """spectral(g1(s) c1 + g2(s) c2) = V g1(S) V^T x1 + V g2(S) V^T x2 from the dense SVD of A's matrix, V square
    and s = 0 on the null space (a function of s makes V g(S) V^T unique under repeated singular values); the
    identity and A^+ A fall out of it; and the singular values and noise gain are the dense matrix's."""
    op, shape = _small_case(name)
    matrix = _dense(op.forward, shape)
    _, s, vh = torch.linalg.svd(matrix, full_matrices=True)
    s_full = torch.cat([s, s.new_zeros(vh.shape[0] - s.numel())])
    x1, x2 = _random((2, *shape), seed=4), _random((2, *shape), seed=5)

    def dense(g: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return ((vh.T * g(s_full)) @ vh @ x.reshape(2, -1).T).T.reshape(x.shape)

    result = op.spectral(lambda s, c1, c2: _g_range(s) * c1 + _g_null(s) * c2, x1, x2)
    assert rel_err(result, dense(_g_range, x1) + dense(_g_null, x2)) < 1e-6  # BicubicSR and Blur drop s < 1e-6
    assert rel_err(op.spectral(lambda s, c: c, x1), x1) < 1e-12
    assert rel_err(op.spectral(lambda s, c: (s > 0) * c, x1), op.pinv(op.forward(x1))) < 1e-10
    assert (op.singular_values((1, *shape))[0] - s_full).abs().max().item() < 1e-6
    assert abs(op.noise_gain((1, *shape)) - 1.0 / s[s > 1e-6].min().item()) < 1e-6 * op.noise_gain((1, *shape))


@pytest.mark.parametrize("name", ["deblur_uni_ddrm", "deblur_aniso_sep", "cs_wh2", "deblur_gauss", "colorization"])
def test_spectral_float32_and_batch(name: str) -> None:
    op = make_operator(name, (16, 16), seed=0)
    x = _random((3, 3, 16, 16), seed=6)
    fn = lambda s, c: _g_range(s) * c  # noqa: E731
    out = op.spectral(fn, x.float())
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert rel_err(out.double(), op.spectral(fn, x)) < 1e-5
    assert rel_err(op.spectral(fn, x[1:2]), op.spectral(fn, x)[1:2]) < 1e-12


@pytest.mark.parametrize("name", ["deblur_gauss_ddrm", "deblur_aniso_ddrm", "deblur_uni_sep", "cs_wh2", "cs_wh4"])
def test_svd_operator_singular_values_and_adjoint(name: str) -> None:
    """The new operators at 3 x 16 x 16: A's singular values (after the 3e-2 truncation) are those of the dense matrix
    (block-diagonal over the channels), A^T is its transpose and A^+ its pseudo-inverse."""
    op = make_operator(name, (16, 16), seed=2)
    shape = (3, 16, 16)
    matrix = _dense(op.forward, shape)
    out_shape = op.output_shape((1, *shape))[1:]
    m, n = matrix.shape[0] // 3, 256
    blocks = [matrix[c * m : (c + 1) * m, c * n : (c + 1) * n] for c in range(3)]
    assert (matrix - torch.block_diag(*blocks)).abs().max().item() == 0.0
    if not name.endswith("_ddrm"):  # the same A in every channel: one block's SVD serves
        assert torch.equal(blocks[1], blocks[0]) and torch.equal(blocks[2], blocks[0])
    dense_s = torch.cat([torch.linalg.svdvals(b) for b in (blocks if name.endswith("_ddrm") else blocks[:1])])
    dense_s = dense_s if name.endswith("_ddrm") else dense_s.repeat(3)
    dense_s = torch.cat([dense_s, dense_s.new_zeros(3 * n - dense_s.numel())]).sort(descending=True).values
    ours = op.singular_values((1, *shape))[0]
    assert (ours - dense_s).abs().max().item() < 1e-12
    if name.startswith("cs_wh"):
        assert torch.equal(ours.unique(), ours.new_tensor([0.0, 1.0]))
    else:  # products of two 1-D values >= 3e-2
        assert ours[ours > 0].min().item() >= 3e-2**2
    assert rel_err(_dense(op.adjoint, out_shape), matrix.T) < 1e-12
    assert rel_err(_dense(op.pinv, out_shape)[:n, :m], torch.linalg.pinv(blocks[0], atol=1e-9)) < 1e-9


def test_ddrm_blur_matrix_leaves_out_the_last_tap() -> None:
    """Row i holds kernel[a] at column i + a - 2 for a = 0..3 (offsets -2..+1); kernel[4] (offset +2) never enters.
    An even kernel keeps all its taps (offsets -2..+1)."""
    kernel = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    matrix = ddrm_blur_matrix(kernel, 8)
    assert matrix[4].tolist() == [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0]
    assert matrix[0].tolist() == [3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # zero boundary
    assert matrix[7].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
    assert ddrm_blur_matrix(kernel[:4], 8)[4].tolist() == [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0]


def test_kronecker_order_is_the_separable_blur() -> None:
    """channel_order "kronecker": A X = A_h X A_w^T with the truncated 1-D matrices, the same in every channel."""
    op = ddrm_anisotropic_blur((12, 16), channel_order="kronecker")
    truncated = [(a.u * a.s[: a.u.shape[0]]) @ a.v.mT for a in (op.axis_h, op.axis_w)]
    x = _random((2, 3, 12, 16), seed=7)
    assert rel_err(op.forward(x), truncated[0] @ x @ truncated[1].T) < 1e-12
    assert (op.axis_w.s > 0).sum().item() < 16  # sigma 20 over 9 taps: a near box, some directions truncated
    assert rel_err(truncated[1], ddrm_blur_matrix(gaussian_taps(20.0, 9), 16)) > 1e-3  # the truncation is in A


@pytest.fixture(scope="module")
def official() -> dict:
    return torch.load(FIXTURE, weights_only=True)


BLUR_BUILDERS = {
    "deblur_gauss": ddrm_gaussian_blur,
    "deblur_uni": ddrm_uniform_blur,
    "deblur_aniso": ddrm_anisotropic_blur,
}
ONE_D_KERNELS = {
    "deblur_gauss": lambda: gaussian_taps(10.0, 5),
    "deblur_uni": lambda: torch.full((9,), 1.0 / 9, dtype=torch.float64),
}


@pytest.mark.parametrize("name", sorted(BLUR_BUILDERS))
def test_blurs_reproduce_official(official: dict, name: str) -> None:
    """DeqIR's `Deblurring` / `Deblurring2D` at 3 x 16 x 16: A x, A^T y, A^+ A x, A^+ of a noisy y and the sorted
    singular values to 1e-5, given the official ranking of tied singular values; the "kronecker" order is the blur
    with the official truncated 1-D matrices."""
    record, x = official["operators"][name], official["x"].double()
    op = BLUR_BUILDERS[name]((16, 16), channel_order="ddrm", ranking=record["ranking"])

    def image(flat: torch.Tensor) -> torch.Tensor:
        return flat.double().reshape(x.shape)

    assert (op.forward(x) - image(record["y"])).abs().max().item() < 1e-5
    assert (op.adjoint(image(record["noisy_y"])) - image(record["adjoint"])).abs().max().item() < 1e-5
    assert (op.pinv(image(record["y"])) - image(record["pinv"])).abs().max().item() < 1e-5
    assert (op.pinv(image(record["noisy_y"])) - image(record["pinv_noisy"])).abs().max().item() < 1e-5
    kronecker_values = torch.outer(op.axis_h.s, op.axis_w.s).flatten()
    assert (kronecker_values[record["ranking"]] - record["singulars"]).abs().max().item() < 1e-6
    singular = op.singular_values((1, 3, 16, 16))[0]
    assert (singular - record["singulars"].double().repeat_interleave(3)).abs().max().item() < 1e-6
    # the blur DDRM meant: A_h X A_w^T with the official truncated 1-D matrices
    kronecker = BLUR_BUILDERS[name]((16, 16), channel_order="kronecker")
    blurred = record["truncated_h"].double() @ x @ record["truncated_w"].double().T
    assert (kronecker.forward(x) - blurred).abs().max().item() < 1e-5
    assert (kronecker.forward(x) - op.forward(x)).abs().max().item() > 0.1  # the official function is not that blur
    if name in ONE_D_KERNELS:  # the official 1-D matrix before truncation (its SVD, multiplied back)
        built = ddrm_blur_matrix(ONE_D_KERNELS[name](), 16)
        assert (built - record["matrix_1d"].double()).abs().max().item() < 1e-6


@pytest.mark.parametrize("ratio", [2, 4])
def test_walsh_hadamard_reproduces_official(official: dict, ratio: int) -> None:
    """DeqIR's `WalshHadamardCS` at 3 x 16 x 16 with a fixed permutation: A x (channel-interleaved there), A^T y
    and A^+ y to 1e-5."""
    record, x = official["operators"][f"cs_wh{ratio}"], official["x"].double()
    op = WalshHadamardCS(ratio, (16, 16), permutation=record["permutation"])

    def ours(flat: torch.Tensor) -> torch.Tensor:  # official (B, 3 M) interleaved -> B x 3 x M x 1
        return flat.double().reshape(x.shape[0], -1, 3).permute(0, 2, 1).unsqueeze(-1)

    assert (op.forward(x) - ours(record["y"])).abs().max().item() < 1e-5
    assert (op.adjoint(ours(record["noisy_y"])) - record["adjoint"].double().reshape(x.shape)).abs().max() < 1e-5
    assert (op.pinv(ours(record["y"])) - record["pinv"].double().reshape(x.shape)).abs().max().item() < 1e-5
    assert (op.pinv(ours(record["noisy_y"])) - record["pinv_noisy"].double().reshape(x.shape)).abs().max() < 1e-5


def test_walsh_hadamard_matrix_and_refusals() -> None:
    h = walsh_hadamard_matrix(8)
    i = torch.arange(8)
    popcount = torch.tensor([bin(int(v)).count("1") for v in (i[:, None] & i[None, :]).flatten()]).reshape(8, 8)
    assert torch.equal(h * math.sqrt(8), (-1.0) ** popcount.double())
    assert rel_err(h @ h, torch.eye(8, dtype=torch.float64)) < 1e-15
    for size, ratio, match in (
        ((12, 16), 2, "powers of two"),
        ((16, 16), 3, "dividing H W = 256"),
        ((8, 8), 0, "ratio"),
    ):
        with pytest.raises(ValueError, match=match):
            WalshHadamardCS(ratio, size)
    with pytest.raises(ValueError, match="powers of two"):
        make_operator("cs_wh2", (24, 24))
    with pytest.raises(ValueError, match="each of 0 .. 63 once"):
        WalshHadamardCS(2, (8, 8), permutation=torch.zeros(64, dtype=torch.long))
    first, again = make_operator("cs_wh4", (8, 16), seed=5), make_operator("cs_wh4", (8, 16), seed=5)
    assert torch.equal(first.permutation, again.permutation)
    assert not torch.equal(first.permutation, make_operator("cs_wh4", (8, 16), seed=6).permutation)
    assert first.output_shape((2, 3, 8, 16)) == (2, 3, 32, 1)


def test_separable_blur_refusals() -> None:
    with pytest.raises(ValueError, match="needs 3 channels"):
        make_operator("deblur_gauss_ddrm", (8, 8)).forward(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"built for H, W = \(8, 8\)"):
        make_operator("deblur_gauss_sep", (8, 8)).forward(torch.zeros(1, 3, 8, 10))
    with pytest.raises(ValueError, match="from the largest down"):
        ddrm_gaussian_blur((4, 4), ranking=torch.arange(16).flip(0))
    with pytest.raises(ValueError, match="only to channel_order='ddrm'"):
        SeparableBlur(torch.ones(3), torch.ones(3), (4, 4), ranking=torch.arange(16))


def test_noise_gains() -> None:
    """|A^+| = 1 / (smallest kept singular value): the scale for the pooling SR, sqrt(3) for colorization, 1 for the
    masks and compressed sensing; at least 1 / 0.03^2 / ... for DDRM's blurs, whose 1-D values stop at the cut-off."""
    shape = (1, 3, 16, 16)
    gains = {
        name: make_operator(name, (16, 16)).noise_gain(shape)
        for name in ("sr4", "colorization", "inpaint_box", "cs_wh2")
    }
    assert gains == pytest.approx({"sr4": 4.0, "colorization": math.sqrt(3), "inpaint_box": 1.0, "cs_wh2": 1.0})
    ddrm = make_operator("deblur_uni_ddrm", (16, 16))
    smallest_1d = ddrm.axis_h.s[ddrm.axis_h.s > 0].min().item()
    assert smallest_1d >= 3e-2 and ddrm.noise_gain(shape) == pytest.approx(1 / smallest_1d**2)
