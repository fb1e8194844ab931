"""Tests for ganmodels.nets: shapes, DCGAN layer/parameter counts, BN/SN placement, init, conditioning."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ganmodels.nets import Discriminator, Generator, NetConfig, build, count_parameters, init_weights

K = 5  # classes in conditional tests
CONDITIONING = {
    "uncond": {},
    "projection": {"num_classes": K, "cond_d": "projection"},
    "concat": {"num_classes": K, "cond_d": "concat"},
}


def _labels(cfg: NetConfig, n: int) -> torch.Tensor | None:
    return torch.arange(n) % cfg.num_classes if cfg.conditional else None


def _convs(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


@pytest.mark.parametrize("cond", list(CONDITIONING))
@pytest.mark.parametrize("upsample", ["transposed", "resize_conv"])
@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_output_shapes_and_range(resolution: int, upsample: str, cond: str) -> None:
    torch.manual_seed(0)
    cfg = NetConfig(resolution=resolution, upsample=upsample, width=8, **CONDITIONING[cond])
    g, d = build(cfg)
    z = torch.randn(4, cfg.latent_dim)
    y = _labels(cfg, 4)
    x = g(z, y)
    assert x.shape == (4, 3, resolution, resolution)
    assert x.min() >= -1.0 and x.max() <= 1.0
    logits = d(x, y)
    assert logits.shape == (4,)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_layer_count_per_resolution(resolution: int) -> None:
    """DCGAN: a 4x4 projection then log2(R/4) stride-2 layers in G; D mirrors it plus a 4x4 head."""
    g, d = build(NetConfig(resolution=resolution, width=8))
    n_up = int(math.log2(resolution)) - 2
    assert len(_convs(g)) == 1 + n_up
    assert len(_convs(d)) == n_up + 1
    # widest block is width * R / 8 (512 at 64 px with width 64)
    assert g.first_layer.out_channels == 8 * resolution // 8
    assert d.head.in_channels == 8 * resolution // 8


def test_dcgan_64px_channels_and_parameter_counts() -> None:
    g, d = build(NetConfig())  # 64 px, width 64, latent 100
    g_convs, d_convs = _convs(g), _convs(d)
    assert [g_convs[0].in_channels] + [c.out_channels for c in g_convs] == [100, 512, 256, 128, 64, 3]
    assert [d_convs[0].in_channels] + [c.out_channels for c in d_convs] == [3, 64, 128, 256, 512, 1]

    # Computed from the architecture: 4x4 kernels; convs followed by BN have no bias, the rest have one.
    g_conv_w = (100 * 512 + 512 * 256 + 256 * 128 + 128 * 64 + 64 * 3) * 16  # 3,574,784
    g_bn = 2 * (512 + 256 + 128 + 64)  # 1,920
    g_bias = 3  # output layer
    d_conv_w = (3 * 64 + 64 * 128 + 128 * 256 + 256 * 512 + 512 * 1) * 16  # 2,763,776
    d_bn = 2 * (128 + 256 + 512)  # 1,792
    d_bias = 64 + 1  # input layer and head
    assert count_parameters(g) == g_conv_w + g_bn + g_bias == 3_576_707
    assert count_parameters(d) == d_conv_w + d_bn + d_bias == 2_765_633
    # Without biases these are the 3,576,704 / 2,765,568 of the reference PyTorch DCGAN (all bias=False).
    assert count_parameters(g) - g_bias == 3_576_704
    assert count_parameters(d) - d_bias == 2_765_568


def test_conditional_parameter_counts() -> None:
    g0, d0 = build(NetConfig())
    gp, dp = build(NetConfig(num_classes=10, cond_d="projection"))
    _, dc = build(NetConfig(num_classes=10, cond_d="concat"))
    assert count_parameters(gp) - count_parameters(g0) == 10 * 100  # embedding only: z keeps its size
    assert count_parameters(dp) - count_parameters(d0) == 10 * 512  # projection embedding
    assert count_parameters(dc) - count_parameters(d0) == 10 * 64 * 16  # 10 extra input channels


def test_spectral_norm_does_not_change_count_except_biases() -> None:
    _, d = build(NetConfig())
    _, d_sn = build(NetConfig(spectral_norm=True))
    # SN drops D's BatchNorms (1,792 params) and gives those three convs biases (128 + 256 + 512).
    assert count_parameters(d_sn) == count_parameters(d) - 1792 + 896


@pytest.mark.parametrize("upsample", ["transposed", "resize_conv"])
def test_batchnorm_placement(upsample: str) -> None:
    g, d = build(NetConfig(upsample=upsample, width=8))
    # G: BN + ReLU after every layer but the output, which goes straight into tanh.
    g_layers = list(g.net)
    assert isinstance(g_layers[-1], nn.Tanh)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in g_layers[-2:])
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g.modules()) == len(_convs(g)) - 1
    assert sum(isinstance(m, nn.ReLU) for m in g.modules()) == len(_convs(g)) - 1
    # D: no BN right after the input conv, BN on every later block, never on the head.
    assert isinstance(d.body[0], nn.Conv2d) and isinstance(d.body[1], nn.LeakyReLU)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == len(_convs(d)) - 2
    assert d.body[1].negative_slope == 0.2
    # no pooling anywhere (DCGAN: strided convs instead)
    pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    assert not any(isinstance(m, pools) for m in [*g.modules(), *d.modules()])


def test_resize_conv_uses_no_strided_transposed_convs() -> None:
    g, _ = build(NetConfig(upsample="resize_conv", width=8))
    transposed = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert transposed == [g.first_layer]  # only the 1x1 -> 4x4 projection
    assert sum(isinstance(m, nn.Upsample) for m in g.modules()) == 4
    assert isinstance(g.last_layer, nn.Conv2d) and g.last_layer.out_channels == 3


@pytest.mark.parametrize("cond", list(CONDITIONING))
def test_spectral_norm_applied(cond: str) -> None:
    torch.manual_seed(0)
    cfg = NetConfig(spectral_norm=True, width=16, **CONDITIONING[cond])
    g, d = build(cfg)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert not any(parametrize.is_parametrized(m) for m in g.modules())  # SN is a D-only option
    sn_modules = [m for m in d.modules() if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding)]
    assert sn_modules and all(parametrize.is_parametrized(m, "weight") for m in sn_modules)
    assert parametrize.is_parametrized(d.first_layer, "weight") and parametrize.is_parametrized(d.last_layer, "weight")

    d.train()
    for _ in range(5):
        d(g(torch.randn(4, cfg.latent_dim), _labels(cfg, 4)).detach(), _labels(cfg, 4))
    for m in sn_modules:
        with torch.no_grad():
            sigma = torch.linalg.matrix_norm(m.weight.flatten(1), ord=2).item()
            raw_sigma = torch.linalg.matrix_norm(m.parametrizations.weight.original.flatten(1), ord=2).item()
        # Power iteration slightly underestimates sigma on near-isotropic random weights; build() warms it up.
        assert sigma == pytest.approx(1.0, abs=0.03), m
        assert raw_sigma != pytest.approx(1.0, abs=0.05)  # so the normalisation did something


def test_dcgan_init_statistics() -> None:
    torch.manual_seed(0)
    g, d = build(NetConfig(num_classes=K))
    for m in [*_convs(g), *_convs(d)]:
        if m.weight.numel() >= 10_000:  # enough samples for a tight std estimate
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.05)
            assert abs(m.weight.mean().item()) < 0.002
        if m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
    bns = [m for m in [*g.modules(), *d.modules()] if isinstance(m, nn.BatchNorm2d)]
    gammas = torch.cat([m.weight.detach() for m in bns])
    assert gammas.mean().item() == pytest.approx(1.0, abs=0.005)
    assert gammas.std().item() == pytest.approx(0.02, rel=0.15)
    assert all(torch.count_nonzero(m.bias) == 0 for m in bns)
    assert d.embed.weight.std().item() == pytest.approx(0.02, rel=0.1)
    # G's embedding multiplies z, so it keeps N(0, 1) instead of being shrunk to 0.02.
    assert g.embed.weight.std().item() == pytest.approx(1.0, rel=0.2)


def test_dcgan_init_with_spectral_norm_initialises_original_weight() -> None:
    torch.manual_seed(0)
    _, d = build(NetConfig(spectral_norm=True))
    for m in _convs(d):
        w = m.parametrizations.weight.original
        if w.numel() >= 10_000:
            assert w.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.count_nonzero(m.bias) == 0


def test_xavier_init_statistics() -> None:
    torch.manual_seed(0)
    g, d = build(NetConfig(init="xavier"))
    for m in [*_convs(g), *_convs(d)]:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
        if m.weight.numel() >= 10_000:
            assert m.weight.std().item() == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.05)
        if m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
    bns = [m for m in [*g.modules(), *d.modules()] if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0 for m in bns)


def test_init_weights_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="init"):
        init_weights(nn.Conv2d(1, 1, 1), "kaiming")


def test_conditional_generator_depends_on_label() -> None:
    torch.manual_seed(0)
    cfg = NetConfig(num_classes=K, width=8)
    g, _ = build(cfg)
    g.train()  # eval-mode BN with fresh running stats shrinks outputs to ~1e-5, hiding any difference
    z = torch.randn(1, cfg.latent_dim).expand(K, -1)
    with torch.no_grad():
        x = g(z, torch.arange(K))
    for i in range(K):
        for j in range(i + 1, K):
            assert (x[i] - x[j]).abs().max() > 1e-3, (i, j)
    with torch.no_grad():
        again = g(z, torch.arange(K))
    torch.testing.assert_close(x, again)


@pytest.mark.parametrize("cond_d", ["projection", "concat"])
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_conditional_discriminator_depends_on_label(cond_d: str, spectral_norm: bool) -> None:
    torch.manual_seed(0)
    cfg = NetConfig(num_classes=K, cond_d=cond_d, spectral_norm=spectral_norm, width=8)
    _, d = build(cfg)
    d.eval()
    x = torch.rand(1, 3, 64, 64).mul(2).sub(1).expand(K, -1, -1, -1)
    with torch.no_grad():
        logits = d(x, torch.arange(K))
    assert logits.shape == (K,)
    assert torch.unique(logits).numel() == K


def test_labels_required_and_rejected() -> None:
    g, d = build(NetConfig(width=8))
    gc, dc = build(NetConfig(width=8, num_classes=K))
    z, x = torch.randn(2, 100), torch.zeros(2, 3, 64, 64)
    with pytest.raises(ValueError, match="unconditional"):
        g(z, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        d(x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels are required"):
        gc(z)
    with pytest.raises(ValueError, match="labels are required"):
        dc(x)
    with pytest.raises(ValueError, match="shape"):
        gc(z, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="z must have shape"):
        g(torch.randn(2, 99))
    with pytest.raises(ValueError, match="x must have shape"):
        d(torch.zeros(2, 3, 32, 32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resolution": 48}, "resolution"),
        ({"resolution": 256}, "resolution"),
        ({"upsample": "bilinear"}, "upsample"),
        ({"init": "kaiming"}, "init"),
        ({"cond_d": "acgan"}, "cond_d"),
        ({"num_classes": -1}, "num_classes"),
        ({"width": 0}, "width"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"channels": 0}, "channels"),
        ({"d_dropout": 1.0}, "d_dropout"),
        ({"d_dropout": -0.1}, "d_dropout"),
        ({"leaky_slope": -0.2}, "leaky_slope"),
    ],
)
def test_invalid_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NetConfig(**kwargs)


def test_config_defaults_and_frozen() -> None:
    cfg = NetConfig()
    assert (cfg.resolution, cfg.channels, cfg.latent_dim, cfg.width) == (64, 3, 100, 64)
    assert (cfg.upsample, cfg.spectral_norm, cfg.d_dropout, cfg.leaky_slope) == ("transposed", False, 0.0, 0.2)
    assert (cfg.init, cfg.num_classes, cfg.cond_d) == ("dcgan", 0, "projection")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.resolution = 32  # type: ignore[misc]


def test_dropout_and_leaky_slope_options() -> None:
    _, d = build(NetConfig(width=8, d_dropout=0.3, leaky_slope=0.1))
    drops = [m for m in d.modules() if isinstance(m, nn.Dropout2d)]
    assert len(drops) == 4 and all(m.p == 0.3 for m in drops)
    assert all(m.negative_slope == 0.1 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    _, d0 = build(NetConfig(width=8))
    assert not any(isinstance(m, nn.Dropout2d) for m in d0.modules())


@pytest.mark.parametrize("cond", list(CONDITIONING))
@pytest.mark.parametrize("spectral_norm", [False, True])
@pytest.mark.parametrize("upsample", ["transposed", "resize_conv"])
def test_backward_through_g_and_d(upsample: str, spectral_norm: bool, cond: str) -> None:
    torch.manual_seed(0)
    cfg = NetConfig(resolution=32, upsample=upsample, spectral_norm=spectral_norm, width=8, **CONDITIONING[cond])
    g, d = build(cfg)
    y = _labels(cfg, 4)
    loss = nn.functional.softplus(-d(g(torch.randn(4, cfg.latent_dim), y), y)).mean()  # non-saturating G loss
    loss.backward()
    for net in (g, d):
        for layer in (net.first_layer, net.last_layer):
            grad = next(layer.parameters()).grad  # SN: the 'original' weight
            assert grad is not None and torch.isfinite(grad).all() and grad.norm() > 0
    if cfg.conditional:
        assert g.embed.weight.grad is not None and g.embed.weight.grad.norm() > 0


def test_first_and_last_layer_properties() -> None:
    g, d = build(NetConfig(width=8))
    assert isinstance(g.first_layer, nn.ConvTranspose2d) and g.first_layer.in_channels == 100
    assert isinstance(g.last_layer, nn.ConvTranspose2d) and g.last_layer.out_channels == 3
    assert isinstance(d.first_layer, nn.Conv2d) and d.first_layer.in_channels == 3
    assert isinstance(d.last_layer, nn.Conv2d) and d.last_layer.out_channels == 1
    # registered once each: no duplicate state_dict entries for the aliased layers
    assert len(g.state_dict()) == len(set(g.state_dict()))
    assert not any(k.startswith("_") for k in [*g.state_dict(), *d.state_dict()])


def test_same_seed_same_weights() -> None:
    cfg = NetConfig(num_classes=K, spectral_norm=True, width=16)

    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        g, d = build(cfg)
        return {**{f"g.{k}": v for k, v in g.state_dict().items()}, **{f"d.{k}": v for k, v in d.state_dict().items()}}

    a, b, c = weights(1), weights(1), weights(2)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


def test_direct_construction_without_build() -> None:
    """G and D work on their own (PyTorch default init); build() only adds the configured init."""
    cfg = NetConfig(width=8, num_classes=K)
    x = Generator(cfg)(torch.randn(2, 100), torch.tensor([0, 1]))
    assert Discriminator(cfg)(x, torch.tensor([0, 1])).shape == (2,)


def test_nets_module_does_not_import_dagster() -> None:
    code = "import sys, ganmodels.nets; assert not any(m.split('.')[0] == 'dagster' for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
