"""The U-Net discriminator with spectral norm: per-pixel output size, spectral norms, size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ir_lightning.nets.discriminator import UNetDiscriminatorSN


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def normalised_convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d) and hasattr(m, "parametrizations")]


def sigma_max(weight: torch.Tensor) -> torch.Tensor:
    """Largest singular value of a conv weight reshaped to out x (in k k): sqrt of the top eigenvalue
    of W W^T (float64; an eigensolve of the small Gram matrix is much faster than an SVD of W).

    The eigensolve runs on one thread: on a shared CPU, multi-threaded LAPACK calls of this size were
    seen to take seconds instead of ~20 ms."""
    w = weight.detach().flatten(1).double()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigvalsh(w @ w.T)[-1].sqrt()
    finally:
        torch.set_num_threads(threads)


def largest_singular_values(net: UNetDiscriminatorSN) -> torch.Tensor:
    """sigma_max of each normalised conv's effective weight, read in eval mode (no power iteration)."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        sigmas = torch.stack([sigma_max(m.weight) for m in normalised_convs(net)])
    net.train(was_training)
    return sigmas


def closed_form_parameter_count(c: int, in_channels: int = 3) -> int:
    """Weights of every conv from its shape (out x in x k x k), plus the two biases.

    conv_in 3x3 in->C (+C bias); down 4x4: C->2C, 2C->4C, 4C->8C; up 3x3: 8C->4C, 4C->2C, 2C->C;
    refine 3x3: C->C twice; conv_out 3x3 C->1 (+1 bias).
    """
    conv_in = 9 * in_channels * c + c
    down = 16 * (c * 2 * c + 2 * c * 4 * c + 4 * c * 8 * c)  # 16 * 42 C^2 = 672 C^2
    up = 9 * (8 * c * 4 * c + 4 * c * 2 * c + 2 * c * c)  # 9 * 42 C^2 = 378 C^2
    refine = 2 * 9 * c * c  # 18 C^2
    conv_out = 9 * c + 1
    return conv_in + down + up + refine + conv_out


def test_parameter_count_matches_the_layer_shapes():
    assert closed_form_parameter_count(64) == 1068 * 64**2 + 37 * 64 + 1 == 4_376_897
    assert n_params(UNetDiscriminatorSN()) == 4_376_897
    assert n_params(UNetDiscriminatorSN(in_channels=1, base_channels=8)) == closed_form_parameter_count(8, 1)


@pytest.mark.parametrize("size", [(64, 64), (96, 80), (33, 47)])
def test_one_logit_per_input_pixel(size):
    net = UNetDiscriminatorSN(base_channels=16)
    assert net(torch.rand(2, 3, *size)).shape == (2, 1, *size)


def test_skip_connection_changes_the_output_not_the_parameters():
    torch.manual_seed(0)
    with_skips = UNetDiscriminatorSN(base_channels=8).eval()
    without = UNetDiscriminatorSN(base_channels=8, skip_connection=False).eval()
    without.load_state_dict(with_skips.state_dict())
    x = torch.rand(1, 3, 32, 32)
    assert (with_skips(x) - without(x)).abs().max() > 1e-4


def test_only_the_inner_convolutions_are_spectrally_normalised():
    net = UNetDiscriminatorSN()
    assert len(normalised_convs(net)) == 8  # 3 down, 3 up, 2 refine
    assert not hasattr(net.conv_in, "parametrizations") and not hasattr(net.conv_out, "parametrizations")
    assert all(m.bias is None for m in normalised_convs(net))


def test_effective_weights_have_largest_singular_value_one_after_train_mode_forwards():
    torch.manual_seed(0)
    net = UNetDiscriminatorSN().train()
    raw = torch.stack([sigma_max(m.parametrizations.weight.original) for m in normalised_convs(net)])
    assert (raw < 0.9).all()  # the initial weights are not normalised themselves
    with torch.no_grad():
        for _ in range(10):
            net(torch.rand(1, 3, 8, 8))
    sigmas = largest_singular_values(net)
    # the power iteration underestimates sigma_max, so W / sigma_estimate has sigma_max >= 1
    assert (sigmas > 1 - 1e-4).all() and (sigmas < 1.05).all(), sigmas


def test_power_iterations_run_in_train_mode_only():
    torch.manual_seed(0)
    net = UNetDiscriminatorSN(base_channels=16)
    with torch.no_grad():  # new raw weights: the stored singular vectors no longer fit them
        for m in normalised_convs(net):
            m.parametrizations.weight.original.add_(0.3 * torch.randn_like(m.parametrizations.weight.original))
    stale = largest_singular_values(net)
    assert (stale > 2).all()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        net.eval()(x)
        torch.testing.assert_close(largest_singular_values(net), stale)  # eval: estimate frozen
        sigmas = [stale]
        for _ in range(10):
            net.train()(x)
            sigmas.append(largest_singular_values(net))
    sigmas = torch.stack(sigmas)
    assert (sigmas[1:] <= sigmas[:-1] + 1e-5).all()  # each iteration moves the estimate up to sigma_max
    assert (sigmas[-1] < 1.1).all() and (sigmas[-1] > 1 - 1e-4).all(), sigmas[-1]
