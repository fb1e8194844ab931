"""Tests for ganmodels.resnets (arch "resnet"): shapes, channel plan, SN, conditioning, AMP/channels_last, and
training through the Trainer: determinism, exact resume with ADA + R1 on, evaluation loading the snapshots."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ganmodels.checkpoint import checkpoint_path, load_checkpoint
from ganmodels.evaluate import load_generator
from ganmodels.nets import NetConfig, build, count_parameters
from ganmodels.resnets import ConditionalBatchNorm2d, ResNetDiscriminator, ResNetGenerator
from ganmodels.train import Trainer
from tests.test_train import CLASSES, StepData, assert_same_weights, final_state, run, tiny_config

K = 5  # classes in conditional tests


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**kwargs) -> NetConfig:
    return NetConfig(**{"arch": "resnet", "resolution": 32, "width": 8, "latent_dim": 16, **kwargs})


def _labels(cfg: NetConfig, n: int) -> torch.Tensor | None:
    return torch.arange(n) % cfg.num_classes if cfg.conditional else None


@pytest.mark.parametrize("num_classes", [0, K])
@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_output_shapes_and_range(resolution: int, num_classes: int) -> None:
    torch.manual_seed(0)
    cfg = _cfg(resolution=resolution, num_classes=num_classes)
    g, d = build(cfg)
    assert isinstance(g, ResNetGenerator) and isinstance(d, ResNetDiscriminator)
    y = _labels(cfg, 4)
    x = g(torch.randn(4, cfg.latent_dim), y)
    assert x.shape == (4, 3, resolution, resolution)
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0
    logits = d(x, y)
    assert logits.shape == (4,) and torch.isfinite(logits).all()


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_channel_plan(resolution: int) -> None:
    """Narrowest block ``width``, widest ``width * R / 8`` (as DCGAN); n = log2(R/4) up and down blocks."""
    w, n = 8, resolution.bit_length() - 3
    g, d = build(_cfg(resolution=resolution))
    assert [b.conv1.in_channels for b in g.blocks] == [w * 2 ** max(n - k, 0) for k in range(1, n + 1)]
    assert [b.conv2.out_channels for b in g.blocks] == [w * 2 ** max(n - 1 - k, 0) for k in range(1, n + 1)]
    assert g.linear.out_features == w * resolution // 8 * 16
    assert [b.conv2.out_channels for b in d.blocks] == [w * 2**k for k in range(n)] + [w * resolution // 8]
    assert [b.down for b in d.blocks] == [True] * n + [False]  # down to 4x4, then one block at 4x4
    assert d.blocks[0].optimized and not any(b.optimized for b in d.blocks[1:])
    assert d.blocks[-1].shortcut is None  # same width, no downsampling: identity shortcut
    assert d.feature_dim == d.head.in_features == w * resolution // 8


def test_parameter_counts_32px() -> None:
    """Counted from the architecture: 3x3 convs and 1x1 shortcuts all with biases, BN affine 2 per channel."""
    w, z, k = 8, 16, K

    def conv(c_in: int, c_out: int, ks: int) -> int:
        return c_in * c_out * ks * ks + c_out

    def g_block(c_in: int, c_out: int) -> int:
        return 2 * (c_in + c_out) + conv(c_in, c_out, 3) + conv(c_out, c_out, 3) + conv(c_in, c_out, 1)

    def d_block(c_in: int, c_out: int, shortcut: bool) -> int:
        return conv(c_in, c_out, 3) + conv(c_out, c_out, 3) + (conv(c_in, c_out, 1) if shortcut else 0)

    g_body = z * 16 * 4 * w + 16 * 4 * w + 2 * w + conv(w, 3, 3)  # linear, output BN, output conv
    g_count = g_body + g_block(4 * w, 2 * w) + g_block(2 * w, w) + g_block(w, w)
    d_count = d_block(3, w, True) + d_block(w, 2 * w, True) + d_block(2 * w, 4 * w, True) + d_block(4 * w, 4 * w, False)
    d_count += 4 * w + 1  # linear head
    g, d = build(_cfg())
    assert count_parameters(g) == g_count == 19_707
    assert count_parameters(d) == d_count == 37_433
    gc, dc = build(_cfg(num_classes=k))
    # Conditional BN: per-class gain and bias (2 * k * c) replace BN's own affine (2 * c) in every G block.
    cbn_channels = (4 * w + 2 * w) + (2 * w + w) + (w + w)
    assert count_parameters(gc) - count_parameters(g) == 2 * (k - 1) * cbn_channels
    assert count_parameters(dc) - count_parameters(d) == k * 4 * w  # projection embedding


@pytest.mark.parametrize("num_classes", [0, K])
def test_spectral_norm_on_every_d_layer_and_none_in_g(num_classes: int) -> None:
    torch.manual_seed(0)
    cfg = _cfg(num_classes=num_classes)  # spectral_norm=False (the default) is DCGAN's flag: ResNet D has SN always
    g, d = build(cfg)
    layers = [m for m in d.modules() if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding)]
    assert len(layers) == 2 * 4 + 3 + 1 + (1 if num_classes else 0)  # convs, shortcuts, head, projection
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(parametrize.is_parametrized(m) for m in g.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    y = _labels(cfg, 4)
    for _ in range(3):
        d(g(torch.randn(4, cfg.latent_dim), y).detach(), y)
    for m in layers:
        with torch.no_grad():
            sigma = torch.linalg.matrix_norm(m.weight.flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.03), m


def test_conditional_bn_starts_neutral_and_conditions_g() -> None:
    torch.manual_seed(0)
    cfg = _cfg(num_classes=K)
    g, d = build(cfg)
    cbn = [m for m in g.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert len(cbn) == 6 and all(not m.bn.affine for m in cbn)
    assert all(torch.all(m.gain.weight == 1) and torch.all(m.bias.weight == 0) for m in cbn)
    z = torch.randn(1, cfg.latent_dim).expand(K, -1).contiguous()
    with torch.no_grad():
        same = g(z, torch.arange(K))
        assert torch.allclose(same, same[:1].expand_as(same))  # gain 1, bias 0: labels change nothing yet
        for m in cbn:
            m.bias.weight.normal_(0.0, 0.5)
        x = g(z, torch.arange(K))
        logits = d(x[:1].expand(K, -1, -1, -1), torch.arange(K))
    assert all((x[i] - x[j]).abs().max() > 1e-3 for i in range(K) for j in range(i + 1, K))
    assert torch.unique(logits).numel() == K  # projection: the label moves D's logit


def test_backward_reaches_first_and_last_layers_and_cbn_embeddings() -> None:
    torch.manual_seed(0)
    cfg = _cfg(num_classes=K)
    g, d = build(cfg)
    y = _labels(cfg, 4)
    nn.functional.softplus(-d(g(torch.randn(4, cfg.latent_dim), y), y)).mean().backward()
    for net in (g, d):
        for layer in (net.first_layer, net.last_layer):
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
            assert sum(p.grad.norm() for p in layer.parameters()) > 0
    assert g.blocks[0].bn1.gain.weight.grad.norm() > 0 and d.embed.parametrizations.weight.original.grad.norm() > 0
    assert isinstance(g.first_layer, nn.Linear) and isinstance(d.last_layer, nn.Linear)


def test_float16_autocast_and_channels_last() -> None:
    """The CUDA path (autocast float16, channels_last) uses only ops that support both; CPU runs them too."""
    torch.manual_seed(0)
    cfg = _cfg(num_classes=K)
    g, d = build(cfg)
    g.eval(), d.eval()  # no power iteration nor BN-statistics update between the compared forwards
    z, y = torch.randn(4, cfg.latent_dim), _labels(cfg, 4)
    with torch.no_grad():
        ref_x = g(z, y)
        ref = d(ref_x, y)
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
        assert torch.allclose(d(g(z, y), y), ref, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.float16):
            x = g(z, y)
            logits = d(x, y)
    assert x.dtype == torch.float16 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x.float(), ref_x, atol=0.02) and torch.allclose(logits.float(), ref, atol=0.02)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "stylegan"}, "arch must be one of"),
        ({"arch": "resnet", "num_classes": 2, "cond_d": "concat"}, "projection only"),
        ({"arch": "resnet", "d_dropout": 0.1}, "no D dropout"),
    ],
)
def test_invalid_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NetConfig(**kwargs)


def test_resnets_module_does_not_import_dagster() -> None:
    code = "import sys, ganmodels.resnets; assert not any(m.split('.')[0] == 'dagster' for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- through the Trainer ----------------------------------------------------------------------------------

RESNET = {"net": {"arch": "resnet"}}
# ADA moving fast (p sweeps [0, 1] in 100 images, ~0.1 per interval of two D steps) and lazy R1 every other
# D step, so both change what a resumed run computes; a quick D (lr_d) and a low target make p rise after step 3.
SMALL_DATA = {"ada_target": 0.05, "ada_interval": 2, "ada_kimg": 0.1, "r1_gamma": 1.0, "r1_every": 2, "lr_d": 2e-3}


def test_same_seed_same_resnet_weights_different_seed_different(tmp_path) -> None:
    a = run(tiny_config(**RESNET, steps=3), tmp_path / "a")
    b = run(tiny_config(**RESNET, steps=3), tmp_path / "b")
    c = run(tiny_config(**RESNET, steps=3, seed=1), tmp_path / "c")
    assert a.history == b.history != c.history
    sa, sb = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert "blocks.0.conv1.weight" in sa["G"]  # it is the ResNet that trained
    assert_same_weights(sa, sb)
    assert not torch.equal(sa["G"]["linear.weight"], final_state(tmp_path / "c")["G"]["linear.weight"])


def test_resume_with_ada_and_r1_is_bit_for_bit(tmp_path) -> None:
    """resnet + conditional + ADA + lazy R1: 6 steps straight == 3 steps + new Trainer + 3 steps, p included.

    Resuming at step 3 lands mid ADA interval (2) and between R1 steps (every 2nd), so the partial sums
    and the D-step counter must be restored for the runs to agree.
    """
    cfg = {**SMALL_DATA, "net": {"arch": "resnet", "num_classes": 2}, "negatives_class": "null"}
    straight = run(tiny_config(**cfg, steps=6, checkpoint_every=3), tmp_path / "a")
    first = run(tiny_config(**cfg, steps=3, checkpoint_every=3), tmp_path / "b")
    second = run(tiny_config(**cfg, steps=6, checkpoint_every=3), tmp_path / "b")
    assert second.resumed_from == 3
    assert first.history + second.history == straight.history
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert_same_weights(a, b)
    assert a["ada"] == b["ada"] and a["d_updates"] == b["d_updates"] == 6
    assert 0.0 < a["ada"]["p"] < 1.0  # p moved, so the comparison covers ADA at work
    mid = load_checkpoint(checkpoint_path(tmp_path / "b" / "checkpoints", 3))
    assert mid["ada"]["steps"] == 1 and mid["d_updates"] == 3


def test_evaluation_loads_resnet_snapshots(tmp_path) -> None:
    trainer = Trainer(tiny_config(**RESNET, steps=2, ema_decay=0.9), StepData(), tmp_path, class_names=CLASSES)
    trainer.run()
    g, info = load_generator(tmp_path / "generators" / "step-00000002.pt")
    assert isinstance(g, ResNetGenerator) and info["net"]["arch"] == "resnet" and info["ema"] is True
    with torch.no_grad():
        torch.testing.assert_close(g(trainer.frame_z), trainer.render_frame(), rtol=0, atol=0)
