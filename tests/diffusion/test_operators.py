"""Tests of ir_lightning.diffusion.operators: pseudo-inverse identities, adjoints, dense references, noise."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from ir_lightning.diffusion.operators import (
    AveragePoolSR,
    BicubicSR,
    Blur,
    Colorization,
    Inpainting,
    LinearOperator,
    anisotropic_blur,
    gaussian_blur,
    make_operator,
    uniform_blur,
)

Shape = tuple[int, ...]


def _mask(shape: Shape, seed: int) -> torch.Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.6).double()


def _asymmetric_kernel() -> torch.Tensor:
    return torch.rand(3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.2


# name -> (operator, shape of one image 1 x C x H x W); the images are tiny so the dense matrix is cheap
CASES: dict[str, Callable[[], tuple[LinearOperator, Shape]]] = {
    "avgpool_x2": lambda: (AveragePoolSR(2), (1, 3, 8, 8)),
    "avgpool_x4_rect": lambda: (AveragePoolSR(4), (1, 2, 8, 12)),
    "bicubic_x2": lambda: (BicubicSR(2, (8, 8)), (1, 1, 8, 8)),
    "bicubic_x3_rect": lambda: (BicubicSR(3, (6, 12)), (1, 2, 6, 12)),
    "bicubic_x4": lambda: (BicubicSR(4, (16, 8)), (1, 1, 16, 8)),
    "gaussian_blur": lambda: (gaussian_blur(), (1, 1, 8, 8)),
    # a 9-tap box on 12 pixels has exact zeros in its spectrum (frequencies 4 and 8): a real null space
    "uniform_blur": lambda: (uniform_blur(9), (1, 1, 12, 12)),
    "anisotropic_blur": lambda: (anisotropic_blur(3.0, 1.0, 30.0, 7), (1, 2, 8, 10)),
    # not point-symmetric and of even width: its transfer function is complex, so A^T != A
    "asymmetric_blur": lambda: (Blur(_asymmetric_kernel()), (1, 1, 8, 8)),
    "inpainting_shared_mask": lambda: (Inpainting(_mask((1, 1, 8, 8), 0)), (1, 3, 8, 8)),
    "inpainting_per_channel": lambda: (Inpainting(_mask((1, 3, 8, 8), 1)), (1, 3, 8, 8)),
    "colorization": lambda: (Colorization(), (1, 3, 8, 8)),
}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (the scale of a zero-free reference)."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _random(shape: Shape, seed: int, batch: int = 2, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn((batch, *shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[LinearOperator, Shape]:
    return CASES[request.param]()


def test_shapes_and_penrose_identities(case: tuple[LinearOperator, Shape]) -> None:
    op, shape = case
    x = _random(shape, seed=0)
    y = _random(op.output_shape(shape), seed=1)
    ax = op.forward(x)
    assert tuple(ax.shape) == op.output_shape(tuple(x.shape))
    assert op.pinv(y).shape == op.adjoint(y).shape == x.shape
    # A A^+ A = A and A^+ A A^+ = A^+ (the first two Penrose conditions)
    assert rel_err(op.forward(op.pinv(ax)), ax) < 1e-5
    pinv_y = op.pinv(y)
    assert rel_err(op.pinv(op.forward(pinv_y)), pinv_y) < 1e-5


def test_adjoint_identity(case: tuple[LinearOperator, Shape]) -> None:
    op, shape = case
    x = _random(shape, seed=2)
    y = _random(op.output_shape(shape), seed=3)
    lhs = (op.forward(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    # relative to the size of the terms summed, since <Ax, y> itself may be near 0
    scale = (op.forward(x).abs() * y.abs()).sum()
    assert abs(lhs - rhs).item() / scale.item() < 1e-5


def test_range_null_decomposition(case: tuple[LinearOperator, Shape]) -> None:
    op, shape = case
    x = _random(shape, seed=4)
    ax = op.forward(x)
    range_part = op.project(torch.zeros_like(x), ax)  # A^+ A x
    null_part = op.project(x, torch.zeros_like(ax))  # (I - A^+ A) x
    assert rel_err(range_part + null_part, x) < 1e-5
    assert op.forward(null_part).abs().max().item() < 1e-5 * ax.abs().max().item()
    # Moore-Penrose: A^+ A is the orthogonal projector onto the row space, so the parts are orthogonal
    assert abs((range_part * null_part).sum().item()) < 1e-5 * (x * x).sum().item()
    assert rel_err(op.project(x, ax), x) < 1e-5  # x is consistent with its own measurement


def test_project_is_data_consistent(case: tuple[LinearOperator, Shape]) -> None:
    op, shape = case
    x, x0 = _random(shape, seed=5), _random(shape, seed=6)
    ax = op.forward(x)
    assert rel_err(op.forward(op.project(x0, ax)), ax) < 1e-5
    assert rel_err(op.project(x0, ax), x0) > 1e-2  # it did change x0


def _dense(op_apply: Callable[[torch.Tensor], torch.Tensor], in_shape: Shape) -> torch.Tensor:
    """The matrix of a linear map on images of `in_shape` (without batch), column k = map(e_k)."""
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    return op_apply(basis).reshape(n, -1).T


def test_adjoint_and_pinv_match_dense_matrix(case: tuple[LinearOperator, Shape]) -> None:
    op, shape = case
    out_shape = op.output_shape(shape)[1:]
    matrix = _dense(op.forward, shape[1:])
    adjoint = _dense(op.adjoint, out_shape)
    pinv = _dense(op.pinv, out_shape)
    assert rel_err(adjoint, matrix.T) < 1e-10
    rcond = getattr(op, "rcond", None)  # the same relative cut-off as the operator, where it has one
    reference = torch.linalg.pinv(matrix, rtol=rcond) if rcond is not None else torch.linalg.pinv(matrix)
    assert rel_err(pinv, reference) < 1e-8


def _circular_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """True convolution (flipped kernel) with a circular border, by F.conv2d."""
    kh, kw = kernel.shape
    padded = F.pad(x, (kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2), mode="circular")
    weight = kernel.flip(0, 1).to(x).expand(x.shape[1], 1, kh, kw)
    return F.conv2d(padded, weight, groups=x.shape[1])


def test_cutoff_drops_small_singular_values() -> None:
    """With a large rcond, A^+ is the pseudo-inverse of A with the weak directions removed: it matches
    torch.linalg.pinv with the same relative cut-off, and A^+ A is still an orthogonal projector."""
    blur = gaussian_blur(rcond=0.15)  # drops |K| <= 0.095 of the max on 8 x 8 and keeps |K| >= 0.19
    matrix = _dense(blur.forward, (1, 8, 8))
    pinv = _dense(blur.pinv, (1, 8, 8))
    assert rel_err(pinv, torch.linalg.pinv(matrix, rtol=0.15)) < 1e-8
    projector = pinv @ matrix
    assert rel_err(projector @ projector, projector) < 1e-8 and rel_err(projector.T, projector) < 1e-8
    assert 0 < torch.linalg.matrix_rank(projector).item() < 64  # some frequencies were dropped
    # bicubic x4 on 32 pixels has relative singular values 1 ... 0.73 per axis; 0.85 drops the last two
    bicubic = BicubicSR(4, (32, 32), rcond=0.85)
    assert rel_err(bicubic.pinv_h, torch.linalg.pinv(bicubic.matrix_h, rtol=0.85)) < 1e-10
    assert torch.linalg.matrix_rank(bicubic.pinv_h).item() == 6


def test_forward_matches_direct_formulas() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 8, 12, generator=gen, dtype=torch.float64)
    blocks = x.reshape(2, 3, 4, 2, 6, 2).mean(dim=(3, 5))
    assert rel_err(AveragePoolSR(2).forward(x), blocks) < 1e-12
    assert rel_err(Colorization().forward(x), (x[:, :1] + x[:, 1:2] + x[:, 2:]) / 3) < 1e-12
    mask = _mask((2, 1, 8, 12), 8)
    assert torch.equal(Inpainting(mask).forward(x), torch.where(mask.bool(), x, torch.zeros_like(x)))
    kernel = torch.rand(3, 5, generator=gen, dtype=torch.float64)  # asymmetric: catches a flip or shift
    assert rel_err(Blur(kernel).forward(x), _circular_conv(x, kernel)) < 1e-12
    # pinv of average pooling is nearest up-sampling
    y = torch.rand(2, 3, 4, 6, generator=gen, dtype=torch.float64)
    assert torch.equal(AveragePoolSR(2).pinv(y), F.interpolate(y, scale_factor=2, mode="nearest"))


def test_blur_kernel_factories() -> None:
    k = gaussian_blur().kernel  # sigma 10 over 5 taps
    assert k.shape == (5, 5) and abs(k.sum().item() - 1) < 1e-12
    assert abs(k[2, 0].item() / k[2, 2].item() - math.exp(-(2**2) / (2 * 10.0**2))) < 1e-12
    assert torch.allclose(uniform_blur(9).kernel, torch.full((9, 9), 1 / 81, dtype=torch.float64))
    # angle 0: sigma_x along W, sigma_y along H, separable
    k0 = anisotropic_blur(3.0, 1.0, 0.0, 9).kernel
    g = lambda s: torch.exp(-0.5 * (torch.arange(9, dtype=torch.float64) - 4) ** 2 / s**2)  # noqa: E731
    expected = torch.outer(g(1.0), g(3.0))
    assert rel_err(k0, expected / expected.sum()) < 1e-12
    # a quarter turn swaps the axes
    assert rel_err(anisotropic_blur(3.0, 1.0, 90.0, 9).kernel, anisotropic_blur(1.0, 3.0, 0.0, 9).kernel) < 1e-12
    # 45 degrees counter-clockwise with H pointing down: the long axis runs up-right (row -1, col +1)
    k45 = anisotropic_blur(3.0, 1.0, 45.0, 9).kernel
    assert k45[4 - 2, 4 + 2] > 10 * k45[4 + 2, 4 + 2]


def _symmetric_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """MATLAB's 'symmetric' padding (edge pixel repeated) on H and W."""
    x = torch.cat([x[..., :pad, :].flip(-2), x, x[..., -pad:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :pad].flip(-1), x, x[..., -pad:].flip(-1)], dim=-1)


@pytest.mark.parametrize(("scale", "size"), [(1, (8, 8)), (2, (16, 24)), (3, (12, 18)), (4, (32, 16))])
def test_bicubic_matches_torch_with_symmetric_border(scale: int, size: tuple[int, int]) -> None:
    """torch's antialiased bicubic (a = -0.5, support 2 scale) on the symmetrically padded image is
    an independent construction of MATLAB's imresize: every output pixel, borders included, agrees."""
    op = BicubicSR(scale, size)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    pad = 2 * scale  # the stretched cubic reaches 2 scale input pixels beyond the output's centre
    ref = F.interpolate(_symmetric_pad(x, pad), scale_factor=1 / scale, mode="bicubic", antialias=True)
    ref = ref[..., 2:-2, 2:-2]  # pad / scale = 2 output pixels each side
    assert (op.forward(x) - ref).abs().max().item() < 1e-12
    # the stored SVD reconstructs each 1-D matrix
    assert rel_err(op.u_h @ torch.diag(op.s_h) @ op.v_h.T, op.matrix_h) < 1e-12
    assert rel_err(op.u_w @ torch.diag(op.s_w) @ op.v_w.T, op.matrix_w) < 1e-12


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_close_to_interpolate_on_smooth_image(scale: int) -> None:
    """Plain F.interpolate(bicubic, antialias=True) agrees to rounding away from the border. At the
    2 outermost output pixels torch drops the taps that fall outside the image and renormalises,
    where imresize mirrors them; on this smooth image (values in [0, 1], slope up to 4.4 per image
    width) that moves the border by 0.005 (x2) and 0.011 (x4), measured, bounded here by 0.02."""
    n = 64
    t = torch.arange(n, dtype=torch.float64) / n
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    x = (0.5 + 0.5 * torch.sin(2 * math.pi * (0.7 * xx + 0.4 * yy) + 0.3)).expand(1, 3, n, n)
    reference = F.interpolate(x, scale_factor=1 / scale, mode="bicubic", antialias=True)
    diff = (BicubicSR(scale, (n, n)).forward(x) - reference).abs()
    assert diff[..., 2:-2, 2:-2].max().item() < 1e-12
    assert 1e-4 < diff.max().item() < 0.02  # the borders differ, by a little


def test_float32_matches_float64(case: tuple[LinearOperator, Shape]) -> None:
    """Float32 in, float32 out, within float32 rounding; A^+ may amplify that rounding by the condition
    number of A (3.6e4 for the anisotropic blur here, whose measured error is 5.6e-5)."""
    op, shape = case
    x = _random(shape, seed=10)
    y = _random(op.output_shape(shape), seed=11)
    singular = torch.linalg.svdvals(_dense(op.forward, shape[1:]))
    cond = (singular[0] / singular[singular > 1e-10 * singular[0]][-1]).item()
    eps32 = torch.finfo(torch.float32).eps
    for apply, arg, bound in ((op.forward, x, 1e-5), (op.adjoint, y, 1e-5), (op.pinv, y, max(1e-5, cond * eps32))):
        out32 = apply(arg.float())
        assert out32.dtype == torch.float32
        assert rel_err(out32.double(), apply(arg)) < bound


def test_measure_noise_std_and_seed(case: tuple[LinearOperator, Shape]) -> None:
    op, shape = case
    x = _random(shape, seed=12, batch=64)
    sigma_y = 0.1
    noise = op.measure(x, sigma_y, torch.Generator().manual_seed(13)) - op.forward(x)
    n = noise.numel()
    assert abs(noise.mean().item()) < 3 * sigma_y / math.sqrt(n)
    # standard error of a Gaussian sample std: sigma / sqrt(2 (n - 1))
    assert abs(noise.std().item() - sigma_y) < 3 * sigma_y / math.sqrt(2 * (n - 1))
    again = op.measure(x, sigma_y, torch.Generator().manual_seed(13))
    assert torch.equal(again, noise + op.forward(x))
    assert not torch.equal(op.measure(x, sigma_y, torch.Generator().manual_seed(14)), again)
    assert torch.equal(op.measure(x), op.forward(x))


def test_inpainting_per_sample_mask() -> None:
    mask = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    x = torch.ones(2, 3, 4, 4)
    y = Inpainting(mask).forward(x)
    assert y[0].abs().max().item() == 0.0 and torch.equal(y[1], x[1])


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: AveragePoolSR(2).forward(torch.zeros(1, 1, 7, 8)), "multiples of the scale"),
        (lambda: AveragePoolSR(0), "scale must be"),
        (lambda: BicubicSR(4, (30, 32)), r"\(30, 32\)"),
        (lambda: BicubicSR(2, (8, 8)).forward(torch.zeros(1, 1, 8, 10)), r"built for H, W = \(8, 8\)"),
        (lambda: BicubicSR(2, (8, 8)).pinv(torch.zeros(1, 1, 4, 5)), r"\(1, 1, 4, 5\)"),
        (lambda: Blur(torch.ones(5)), r"2-D tensor .* got shape \(5,\)"),
        (lambda: Blur(torch.ones(1, 3, 3)), r"got shape \(1, 3, 3\)"),
        (lambda: Blur(torch.ones(9, 9)).forward(torch.zeros(1, 1, 8, 8)), "larger than the image"),
        (lambda: gaussian_blur(size=4), r"odd integer .*got 4"),
        (lambda: gaussian_blur(sigma=0.0), "sigma must be positive, got 0.0"),
        (lambda: Inpainting(torch.ones(8, 8)), r"got shape \(8, 8\)"),
        (lambda: Inpainting(torch.full((1, 1, 4, 4), 0.5)), "only 0"),
        (lambda: Inpainting(torch.ones(1, 1, 8, 8)).forward(torch.zeros(1, 1, 8, 6)), r"\(1, 1, 8, 8\) does not fit"),
        (lambda: Inpainting(torch.ones(2, 1, 4, 4)).forward(torch.zeros(3, 1, 4, 4)), "does not fit"),
        (lambda: Inpainting(torch.ones(1, 2, 4, 4)).forward(torch.zeros(1, 3, 4, 4)), "does not fit"),
        (lambda: Colorization().forward(torch.zeros(1, 1, 4, 4)), "needs 3 channels"),
        (lambda: Colorization().pinv(torch.zeros(1, 3, 4, 4)), r"B x 1 x H x W, got shape \(1, 3, 4, 4\)"),
        (lambda: AveragePoolSR(2).measure(torch.zeros(1, 1, 4, 4), sigma_y=-0.1), "sigma_y .* got -0.1"),
    ],
)
def test_errors_name_the_bad_value(build: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    ("name", "kind", "out_hw"),
    [
        ("sr4", AveragePoolSR, (4, 6)),
        ("bicubic2", BicubicSR, (8, 12)),
        ("deblur_gauss", Blur, (16, 24)),
        ("deblur_uni", Blur, (16, 24)),
        ("deblur_aniso", Blur, (16, 24)),
        ("inpaint_box", Inpainting, (16, 24)),
        ("inpaint_random50", Inpainting, (16, 24)),
        ("colorization", Colorization, (16, 24)),
    ],
)
def test_make_operator_by_name(name, kind, out_hw):
    operator = make_operator(name, (16, 24), seed=1)
    assert isinstance(operator, kind)
    assert tuple(operator.output_shape((2, 3, 16, 24))[-2:]) == out_hw
    if name == "inpaint_box":  # a quarter of the area: the central 8 x 12 box
        assert float(operator.mask.sum()) == 16 * 24 - 8 * 12
    if name == "inpaint_random50":
        assert abs(float(operator.mask.mean()) - 0.5) < 0.1  # 384 Bernoulli(0.5) draws: 5 standard errors
        assert torch.equal(operator.mask, make_operator(name, (16, 24), seed=1).mask)


def test_make_operator_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown operator 'sr'; valid: sr<k>, bicubic<k>"):
        make_operator("sr", (16, 16))
