"""Charbonnier, VGG19 features and perceptual loss (random weights saved like torchvision's file), GAN loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ir_lightning.losses import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG19_URL,
    GANLoss,
    PerceptualLoss,
    VGG19Features,
    charbonnier,
    vgg19_features_stack,
)

# torchvision's vgg19().features: the indices of its 16 convolutions (ReLU after each, max-pools at 4, 9, 18, 27, 36)
TORCHVISION_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
VGG19_FEATURES_PARAMS = 20_024_384  # torchvision's vgg19: 143,667,240 in all, minus 123,642,856 in the classifier
ALL_CONV5 = ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4")


@pytest.fixture(scope="module")
def torchvision_state() -> dict[str, torch.Tensor]:
    """A random VGG19 with torchvision's file layout: 'features.<i>.*' plus the classifier's keys."""
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg19_features_stack().state_dict().items()}
    state["classifier.0.weight"] = torch.randn(4, 8)  # stands in for the unused fully connected head
    state["classifier.0.bias"] = torch.randn(4)
    return state


@pytest.fixture(scope="module")
def vgg_file(torchvision_state, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    torch.save(torchvision_state, path)
    return str(path)


@pytest.fixture(scope="module")
def vgg(vgg_file) -> VGG19Features:
    return VGG19Features(vgg_file, layers=ALL_CONV5 + ("relu1_2", "pool5"))


# ---------------------------------------------------------------- charbonnier


def test_charbonnier_closed_form():
    # sqrt(d^2 + eps^2): d = 0 -> eps; d = 3, eps = 4 -> 5; the mean over elements
    assert charbonnier(torch.zeros(5), torch.zeros(5)).item() == pytest.approx(1e-3)
    assert charbonnier(torch.tensor([3.0]), torch.tensor([0.0]), eps=4.0).item() == pytest.approx(5.0)
    assert charbonnier(torch.tensor([0.0, 3.0]), torch.tensor([0.0, 0.0]), eps=4.0).item() == pytest.approx(4.5)
    assert charbonnier(torch.tensor([0.5]), torch.tensor([-0.5])).item() == pytest.approx(math.sqrt(1 + 1e-6))


def test_charbonnier_is_smooth_at_zero():
    pred = torch.zeros(3, requires_grad=True)
    charbonnier(pred, torch.zeros(3)).backward()
    assert (pred.grad == 0).all()  # L1 has no gradient there; Charbonnier's is 0


# ---------------------------------------------------------------- VGG19 features


def test_stack_has_torchvision_keys_and_size():
    stack = vgg19_features_stack()
    assert len(stack) == 37
    assert sorted(stack.state_dict(), key=lambda k: int(k.split(".")[0])) == [
        f"{i}.{p}" for i in TORCHVISION_CONV_INDICES for p in ("weight", "bias")
    ]
    assert sum(p.numel() for p in stack.parameters()) == VGG19_FEATURES_PARAMS


@pytest.mark.parametrize("prefix", ["features.", ""])
def test_loads_both_key_layouts(prefix, torchvision_state, tmp_path):
    if prefix:  # torchvision's file as saved, classifier included
        state = dict(torchvision_state)
    else:  # a bare features state dict
        state = {k.removeprefix("features."): v for k, v in torchvision_state.items() if k.startswith("features.")}
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    net = VGG19Features(str(path), layers=("conv1_1",))
    for i in TORCHVISION_CONV_INDICES:
        torch.testing.assert_close(net.features[i].weight, torchvision_state[f"features.{i}.weight"], rtol=0, atol=0)
        torch.testing.assert_close(net.features[i].bias, torchvision_state[f"features.{i}.bias"], rtol=0, atol=0)


def test_missing_file_says_what_to_get_and_where_to_set_it(tmp_path):
    path = tmp_path / "nowhere" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(FileNotFoundError) as error:
        VGG19Features(str(path))
    message = str(error.value)
    assert str(path) in message and VGG19_URL in message and "`weights`" in message and "PerceptualLoss" in message


def test_wrong_keys_are_named(torchvision_state, tmp_path):
    state = dict(torchvision_state)
    del state["features.34.weight"]
    state["features.99.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \['34.weight'\], unexpected keys \['99.weight'\]"):
        VGG19Features(str(path))


def test_wrong_shapes_are_named(torchvision_state, tmp_path):
    state = dict(torchvision_state)
    state["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"5.weight: \(128, 32, 3, 3\) instead of \(128, 64, 3, 3\)"):
        VGG19Features(str(path))


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="expected a state dict"):
        VGG19Features(str(path))


def test_unknown_layer_name(vgg_file):
    with pytest.raises(ValueError, match=r"unknown layers \['conv6_1'\]"):
        VGG19Features(vgg_file, layers=("conv1_2", "conv6_1"))
    with pytest.raises(ValueError, match="no layers requested"):
        PerceptualLoss(vgg_file, layer_weights={})


def test_named_layers_have_vgg_channels_and_strides(vgg):
    out = vgg(torch.randn(1, 3, 32, 48))
    expected = {
        "conv1_2": (64, 1),
        "conv2_2": (128, 2),
        "conv3_4": (256, 4),
        "conv4_4": (512, 8),
        "conv5_4": (512, 16),
        "relu1_2": (64, 1),
        "pool5": (512, 32),
    }
    assert set(out) == set(expected)
    for name, (channels, stride) in expected.items():
        assert out[name].shape == (1, channels, 32 // stride, 48 // stride), name


def test_conv_layers_are_taken_before_the_relu(vgg):
    out = vgg(torch.randn(1, 3, 32, 32))
    assert (out["conv1_2"] < 0).any()
    torch.testing.assert_close(out["relu1_2"], out["conv1_2"].clamp(min=0), rtol=0, atol=0)


def test_frozen_and_always_in_eval_mode(vgg):
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training and not any(m.training for m in vgg.modules())
    wrapper = torch.nn.Sequential(vgg).train()
    assert wrapper.training and not vgg.training


# ---------------------------------------------------------------- perceptual loss


@pytest.fixture(scope="module")
def perceptual(vgg_file) -> PerceptualLoss:
    return PerceptualLoss(vgg_file)


def test_perceptual_defaults_are_the_official_layer_weights(perceptual):
    assert perceptual.layer_weights == {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


def test_perceptual_zero_for_identical_images_positive_otherwise(perceptual):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    assert perceptual(x, x.clone()).item() == 0.0
    assert perceptual(x, (x + 0.1 * torch.randn_like(x)).clamp(0, 1)).item() > 0


def test_perceptual_equals_weighted_sum_of_feature_l1(perceptual):
    torch.manual_seed(2)
    pred, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    fp, ft = perceptual.vgg((pred - mean) / std), perceptual.vgg((target - mean) / std)
    weights = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
    by_hand = sum(w * (fp[name] - ft[name]).abs().mean() for name, w in weights.items())
    torch.testing.assert_close(perceptual(pred, target), by_hand, rtol=1e-5, atol=0)


def test_perceptual_options(vgg_file):
    torch.manual_seed(3)
    pred, target = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    l1 = PerceptualLoss(vgg_file, layer_weights={"conv1_2": 1.0, "conv2_2": 0.5})
    raw = l1.vgg(pred)["conv2_2"], l1.vgg(target)["conv2_2"]  # no input normalisation
    l2_raw = PerceptualLoss(
        vgg_file, layer_weights={"conv2_2": 1.0}, criterion="l2", use_input_norm=False, perceptual_weight=3.0
    )
    torch.testing.assert_close(l2_raw(pred, target), 3.0 * F.mse_loss(*raw), rtol=1e-5, atol=0)
    in_pm1 = PerceptualLoss(vgg_file, layer_weights={"conv1_2": 1.0, "conv2_2": 0.5}, range_norm=True)
    torch.testing.assert_close(in_pm1(2 * pred - 1, 2 * target - 1), l1(pred, target), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="criterion"):
        PerceptualLoss(vgg_file, criterion="fro")


def test_perceptual_gradient_reaches_the_input_not_vgg(perceptual):
    torch.manual_seed(4)
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    target = torch.rand(1, 3, 32, 32, requires_grad=True)
    perceptual(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None  # the ground truth is a constant
    assert all(p.grad is None for p in perceptual.parameters())


# ---------------------------------------------------------------- GAN loss


def test_gan_loss_closed_form_bce():
    gan = GANLoss()
    zeros = torch.zeros(2, 1, 4, 4)
    assert gan(zeros, True).item() == pytest.approx(math.log(2))
    assert gan(zeros, False, is_discriminator=True).item() == pytest.approx(math.log(2))
    logits = torch.tensor([[[[0.0, 2.0], [-2.0, 4.0]]]])
    softplus = [math.log1p(math.exp(z)) for z in (0.0, 2.0, -2.0, 4.0)]
    # real: mean softplus(-z) = mean log(1 + e^-z); fake: mean softplus(z)
    assert gan(logits, True).item() == pytest.approx(sum(s - z for s, z in zip(softplus, (0, 2, -2, 4))) / 4)
    assert gan(logits, False).item() == pytest.approx(sum(softplus) / 4)


def test_gan_loss_soft_labels():
    # BCE with a target y: softplus(z) - y z
    gan = GANLoss(real_label=0.9, fake_label=0.1)
    z = torch.ones(1, 1, 2, 2)
    assert gan(z, True).item() == pytest.approx(math.log1p(math.e) - 0.9)
    assert gan(z, False).item() == pytest.approx(math.log1p(math.e) - 0.1)


def test_gan_loss_weight_applies_to_the_generator_only():
    logits = torch.tensor([[[[0.5, -1.0, 3.0]]]])
    plain, weighted = GANLoss(), GANLoss(loss_weight=0.1)
    for target_is_real in (True, False):
        unweighted = plain(logits, target_is_real, is_discriminator=True)
        assert weighted(logits, target_is_real, is_discriminator=True).item() == pytest.approx(unweighted.item())
        assert weighted(logits, target_is_real).item() == pytest.approx(0.1 * unweighted.item())


def test_gan_loss_rejects_other_kinds():
    with pytest.raises(ValueError, match="vanilla"):
        GANLoss(kind="hinge")
