"""RDDM's three network layouts: shapes, sizes, what they share, and that the conditioning is used."""

from __future__ import annotations

import pytest
import torch

from ir_lightning.nets.rddm import SharedEncoderUNet, TwoHeadUNet, TwoUNets
from ir_lightning.nets.unet import UNet, UNetDecoder, UNetEncoder

SMALL = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_levels=(1,), norm_groups=8)
LAYOUTS = (TwoUNets, SharedEncoderUNet, TwoHeadUNet)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def cond_batch(cond_dims: int, batch: int) -> torch.Tensor:
    return torch.rand(batch) if cond_dims == 1 else torch.rand(batch, cond_dims)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cond_dims", [1, 2])
@pytest.mark.parametrize("size", [(16, 16), (19, 27)])
def test_each_layout_predicts_residual_and_noise_at_the_input_size(layout, cond_dims, size):
    net = layout(**SMALL, cond_dims=cond_dims)
    res_hat, eps_hat = net(torch.randn(2, 6, *size), cond_batch(cond_dims, 2))
    assert res_hat.shape == eps_hat.shape == (2, 3, *size)


def test_two_decoders_with_skips_both_read_the_encoders_skips():
    # Each decoder must leave the skips for the other (a decoder that consumed them would fail here).
    net = SharedEncoderUNet(**SMALL, res_decoder_skips=True)
    res_hat, eps_hat = net(torch.randn(2, 6, 19, 27), torch.rand(2))
    assert res_hat.shape == eps_hat.shape == (2, 3, 19, 27)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_shadow_mask_channel_is_a_seventh_input(layout):
    res_hat, eps_hat = layout(**SMALL, in_channels=7)(torch.randn(1, 7, 12, 20), torch.rand(1))
    assert res_hat.shape == eps_hat.shape == (1, 3, 12, 20)


# Recorded when the networks were written (cond_dims 1 and 2); a change of architecture changes these on purpose only.
SMALL_COUNTS = {
    (TwoUNets, ()): (391_334, 393_382),
    (TwoUNets, (("coefficient_per_net", True),)): (None, 391_334),
    (SharedEncoderUNet, ()): (275_958, 276_982),
    (SharedEncoderUNet, (("res_decoder_skips", True),)): (298_982, 300_006),
    (TwoHeadUNet, ()): (196_102, 197_126),
}
# The paper's generic U-Net (base 64, multipliers 1, 2, 4, 8, 2 residual blocks, GroupNorm 8) = the classes' defaults.
GENERIC_COUNTS = {
    (TwoUNets, ()): (128_765_958, 128_798_726),
    (TwoUNets, (("coefficient_per_net", True),)): (None, 128_765_958),
    (SharedEncoderUNet, ()): (91_883_014, 91_899_398),
    (SharedEncoderUNet, (("res_decoder_skips", True),)): (101_573_254, 101_589_638),
    (TwoHeadUNet, ()): (64_384_710, 64_401_094),
}


@pytest.mark.parametrize(("config", "counts"), [(SMALL, SMALL_COUNTS), ({}, GENERIC_COUNTS)], ids=["small", "generic"])
def test_parameter_counts_of_recorded_configurations(config, counts):
    for (layout, options), by_cond_dims in counts.items():
        for cond_dims, expected in zip((1, 2), by_cond_dims):
            if expected is None:
                continue
            with torch.device("meta"):  # sizes only: no memory, no initialisation
                net = layout(**config, **dict(options), cond_dims=cond_dims)
            assert n_params(net) == expected, f"{layout.__name__} {dict(options)} cond_dims={cond_dims}"


@pytest.mark.parametrize("cond_dims", [1, 2])
def test_layout_sizes_follow_from_one_unet(cond_dims):
    # Closed forms in terms of one U-Net of the same arguments and of its halves.
    unet = UNet(**SMALL, cond_dims=cond_dims, dropout=0.0)
    shared = SharedEncoderUNet(**SMALL, cond_dims=cond_dims, res_decoder_skips=True)
    assert n_params(TwoUNets(**SMALL, cond_dims=cond_dims)) == 2 * n_params(unet)
    six_outputs = UNet(**SMALL, cond_dims=cond_dims, out_channels=6)
    assert n_params(TwoHeadUNet(**SMALL, cond_dims=cond_dims)) == n_params(six_outputs)
    # the U-Net is exactly embedding + encoder + decoder, so the shared layout is one U-Net plus one decoder
    assert n_params(unet) == n_params(shared.embed) + n_params(shared.encoder) + n_params(shared.noise_decoder)
    assert n_params(shared) == n_params(unet) + n_params(shared.res_decoder)


def test_the_shared_encoder_layout_is_one_encoder_with_two_decoders():
    torch.manual_seed(0)
    net = SharedEncoderUNet(**SMALL)
    kinds = [type(m) for m in net.modules()]
    assert kinds.count(UNetEncoder) == 1 and kinds.count(UNetDecoder) == 2 and kinds.count(UNet) == 0
    encoder_params = list(net.encoder.parameters())
    for output, idle_decoder in ((0, net.noise_decoder), (1, net.res_decoder)):
        net.zero_grad(set_to_none=True)
        net(torch.randn(2, 6, 16, 16), torch.rand(2))[output].square().sum().backward()
        # each output alone trains every encoder parameter, and not the other output's decoder
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder_params)
        assert all(p.grad is None for p in idle_decoder.parameters())


def test_the_shared_encoder_noise_branch_is_a_unet_split_in_two():
    # A U-Net's weights loaded into embedding + encoder + noise decoder give the same prediction.
    torch.manual_seed(0)
    unet = UNet(**SMALL, dropout=0.0).eval()
    shared = SharedEncoderUNet(**SMALL).eval()

    def owner(key: str) -> str:
        if key.startswith("embed."):
            return ""
        return "noise_decoder." if key.startswith(("up.", "upsample.", "tail.")) else "encoder."

    moved = {owner(k) + k: v for k, v in unet.state_dict().items()}
    missing, unexpected = shared.load_state_dict(moved, strict=False)
    assert not unexpected and all(k.startswith("res_decoder.") for k in missing)
    x, t = torch.randn(2, 6, 19, 27), torch.rand(2)
    torch.testing.assert_close(shared(x, t)[1], unet(x, t), atol=1e-6, rtol=0)


def test_the_shared_residual_decoder_reads_only_the_bottleneck_unless_asked():
    torch.manual_seed(0)
    for with_skips in (False, True):
        net = SharedEncoderUNet(**SMALL, res_decoder_skips=with_skips).eval()
        emb = net.embed(torch.rand(1))
        h, skips = net.encoder(torch.randn(1, 6, 16, 16), emb)
        scrambled = [torch.randn_like(s) for s in skips]
        change = (net.res_decoder(h, skips, emb) - net.res_decoder(h, scrambled, emb)).abs().max()
        assert (change > 1e-3) if with_skips else (change == 0)


def test_the_two_head_layout_is_one_unet_with_six_outputs():
    torch.manual_seed(0)
    net = TwoHeadUNet(**SMALL).eval()
    assert [type(m) for m in net.modules()].count(UNet) == 1
    reference = UNet(**SMALL, dropout=0.0, out_channels=6).eval()
    net.load_state_dict({"unet." + k: v for k, v in reference.state_dict().items()}, strict=True)
    x, t = torch.randn(2, 6, 16, 16), torch.rand(2)
    both = reference(x, t)
    res_hat, eps_hat = net(x, t)
    torch.testing.assert_close(res_hat, both[:, :3], atol=0, rtol=0)
    torch.testing.assert_close(eps_hat, both[:, 3:], atol=0, rtol=0)


def test_the_two_unet_layout_has_two_independent_unets():
    net = TwoUNets(**SMALL)
    assert [type(m) for m in net.modules()].count(UNet) == 2
    assert not {id(p) for p in net.res_net.parameters()} & {id(p) for p in net.noise_net.parameters()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_parameter_gets_a_gradient(layout):
    # DDP without find_unused_parameters needs every parameter in the graph of the loss.
    torch.manual_seed(0)
    net = layout(**SMALL, cond_dims=2)
    res_hat, eps_hat = net(torch.randn(2, 6, 16, 16), torch.rand(2, 2))
    (res_hat.abs().mean() + eps_hat.abs().mean()).backward()
    assert all(p.grad is not None for p in net.parameters())


def changes(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> tuple[bool, bool]:
    """Whether the residual, and the noise, prediction differ between two calls."""
    return tuple(bool((x - y).abs().max() > 1e-4) for x, y in zip(a, b))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_step_changes_both_predictions(layout):
    torch.manual_seed(0)
    net = layout(**SMALL, cond_dims=1).eval()
    x = torch.randn(1, 6, 16, 16)
    assert changes(net(x, torch.tensor([0.2])), net(x, torch.tensor([0.7]))) == (True, True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_coefficient_changes_both_predictions(layout):
    torch.manual_seed(0)
    net = layout(**SMALL, cond_dims=2).eval()
    x = torch.randn(1, 6, 16, 16)
    base = net(x, torch.tensor([[0.5, 0.08]]))
    assert changes(base, net(x, torch.tensor([[0.3, 0.08]]))) == (True, True)  # alpha_bar only
    assert changes(base, net(x, torch.tensor([[0.5, 0.03]]))) == (True, True)  # beta_bar only


def test_one_coefficient_per_net_conditions_residual_on_alpha_bar_and_noise_on_beta_bar():
    torch.manual_seed(0)
    net = TwoUNets(**SMALL, cond_dims=2, coefficient_per_net=True).eval()
    x = torch.randn(1, 6, 16, 16)
    base = net(x, torch.tensor([[0.5, 0.08]]))
    assert changes(base, net(x, torch.tensor([[0.3, 0.08]]))) == (True, False)
    assert changes(base, net(x, torch.tensor([[0.5, 0.03]]))) == (False, True)


def test_one_coefficient_per_net_needs_two_coefficients():
    with pytest.raises(ValueError, match="coefficient_per_net needs cond_dims=2"):
        TwoUNets(**SMALL, cond_dims=1, coefficient_per_net=True)
    net = TwoUNets(**SMALL, cond_dims=2, coefficient_per_net=True)
    with pytest.raises(ValueError, match=r"cond of shape \(2,\), expected \(B, 2\)"):
        net(torch.randn(2, 6, 16, 16), torch.rand(2))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_step_where_coefficients_are_expected_is_refused(layout):
    net = layout(**SMALL, cond_dims=2)
    with pytest.raises(ValueError, match=r"conditioning of shape \(2,\), expected \(B, 2\)"):
        net(torch.randn(2, 6, 16, 16), torch.rand(2))
