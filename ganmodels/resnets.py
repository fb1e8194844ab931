"""SNGAN/BigGAN-style ResNet generator and discriminator for 32, 64 and 128 px (plain PyTorch, no Dagster).

Selected with ``NetConfig(arch="resnet")``; :func:`ganmodels.nets.build` dispatches here, so training,
evaluation and snapshots work unchanged. The layout follows Miyato et al., "Spectral Normalization for
GANs" (2018, the ResNet nets of its appendix) with BigGAN's (Brock et al. 2019) channel progression:

* G: linear z -> 4x4 map, then ``n = log2(R/4)`` up-blocks, each
  ``BN-ReLU-upsample-conv3-BN-ReLU-conv3`` plus a shortcut ``upsample-conv1``, then ``BN-ReLU-conv3-tanh``.
  Upsampling is nearest x2 (no checkerboard artefacts, unlike transposed convolutions).
* D: an "optimized" first block (``conv3-ReLU-conv3-avgpool``, shortcut ``avgpool-conv1``: no ReLU on the
  raw image), ``n - 1`` down-blocks (``ReLU-conv3-ReLU-conv3-avgpool``, shortcut ``conv1-avgpool``), one
  block at 4x4 without downsampling (identity shortcut), then ReLU, global SUM pooling and a linear logit.
  Spectral norm wraps every D layer (convs, shortcuts, linear, projection embedding), whatever
  ``NetConfig.spectral_norm`` says: the ResNet D is an SN-GAN discriminator by design.

Channel plan, ``w = width`` (the narrowest block has ``w`` maps, the widest ``w * R / 8``, as for DCGAN)::

    R     G: 4x4 -> up-blocks                     D: opt-block -> down-blocks -> 4x4 block
    32    4w -> 2w -> w -> w                      w -> 2w -> 4w -> 4w
    64    8w -> 4w -> 2w -> w -> w                w -> 2w -> 4w -> 8w -> 8w
    128   16w -> 8w -> 4w -> 2w -> w -> w         w -> 2w -> 4w -> 8w -> 16w -> 16w

Two 3x3 convs per block (plus shortcuts) make a training step ~8x slower than the DCGAN of the same
``width``, whose up/down layers are single 4x4 stride-2 convs (measured on a CPU at 32 px, width 32,
batch 64: ~0.8 s against ~0.1 s), so on a CPU use a quarter to half of DCGAN's width (``width: 16`` is
~0.3 s there); BigGAN's own nets are ``width=64`` on accelerators.

Class conditioning (``num_classes > 0``): conditional BatchNorm in G (each G-block BN has per-class gain
and bias embeddings, gain initialised at 1, bias at 0: a fresh conditional G starts as the unconditional
one), and the projection discriminator of Miyato & Koyama (2018) in D: ``<embed(y), features>`` added to
the logit. ``cond_d="concat"`` and ``d_dropout`` are DCGAN options that :class:`~ganmodels.nets.NetConfig`
rejects for this architecture; ``upsample`` and ``leaky_slope`` do not apply (nearest x2, ReLU).

Only ops that run in float16 autocast and in ``channels_last`` (convs, BN, nearest interpolation,
average pooling, embeddings) are used, so the CUDA path of the trainer needs nothing special.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ganmodels.nets import NetConfig, _check_labels, check_d_input, init_weights

__all__ = ["ConditionalBatchNorm2d", "ResNetDiscriminator", "ResNetGenerator", "build_resnet"]


def _g_channels(cfg: NetConfig) -> list[int]:
    """G's feature maps at 4x4 then after each up-block: ``w * 2^(n-1)`` halving down to ``w``, kept at ``w``."""
    n = cfg.num_scale_blocks
    return [cfg.width * 2 ** max(n - 1 - k, 0) for k in range(n + 1)]


def _d_channels(cfg: NetConfig) -> list[int]:
    """D's feature maps after each downsampling block: ``w`` doubling up to ``w * 2^(n-1)`` at 4x4."""
    return [cfg.width * 2**k for k in range(cfg.num_scale_blocks)]


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, followed by a per-class gain and bias (de Vries et al. 2017).

    Unconditional (``num_classes == 0``) it is a plain affine BatchNorm2d. The embeddings start at gain 1
    and bias 0, i.e. as BN's default affine, so conditioning is learned from a neutral start.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        if num_classes:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        h = self.bn(x)
        if self.num_classes and labels is not None:
            h = h * self.gain(labels)[:, :, None, None] + self.bias(labels)[:, :, None, None]
        return h


class _GBlock(nn.Module):
    """``BN-ReLU-up-conv3-BN-ReLU-conv3`` + ``up-conv1`` shortcut; doubles the resolution."""

    def __init__(self, c_in: int, c_out: int, num_classes: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(c_in, num_classes)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.bn2 = ConditionalBatchNorm2d(c_out, num_classes)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, 1, 0)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        h = F.relu(self.bn1(x, labels), inplace=True)
        h = self.conv1(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.conv2(F.relu(self.bn2(h, labels), inplace=True))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResNetGenerator(nn.Module):
    """ResNet G: z (N, latent_dim) [+ labels] -> images (N, channels, R, R) in [-1, 1] (module docstring)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = _g_channels(cfg)
        self.linear = nn.Linear(cfg.latent_dim, ch[0] * 16)
        self.blocks = nn.ModuleList(_GBlock(ch[k], ch[k + 1], cfg.num_classes) for k in range(len(ch) - 1))
        self.bn = nn.BatchNorm2d(ch[-1])  # unconditional, as in SNGAN/BigGAN's output layer
        self.conv_out = nn.Conv2d(ch[-1], cfg.channels, 3, 1, 1)

    @property
    def first_layer(self) -> nn.Module:
        """The latent projection (z -> 4x4); its gradient norm shows whether G's signal reaches z."""
        return self.linear

    @property
    def last_layer(self) -> nn.Module:
        """The output conv (before tanh)."""
        return self.conv_out

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.cfg.latent_dim:
            raise ValueError(f"z must have shape (N, {self.cfg.latent_dim}), got {tuple(z.shape)}")
        labels = _check_labels(self.cfg, labels, z.shape[0])
        h = self.linear(z).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            h = block(h, labels)
        return torch.tanh(self.conv_out(F.relu(self.bn(h), inplace=True)))


class _DBlock(nn.Module):
    """SN ``[ReLU]-conv3-ReLU-conv3-[avgpool]`` + shortcut; ``optimized`` is SNGAN's first block."""

    def __init__(self, c_in: int, c_out: int, *, down: bool, optimized: bool = False) -> None:
        super().__init__()
        self.down, self.optimized = down, optimized
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, 1, 1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, 1, 1))
        learnable = c_in != c_out or down
        self.shortcut = spectral_norm(nn.Conv2d(c_in, c_out, 1, 1, 0)) if learnable else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The optimized block sees the raw image: no ReLU before its first conv (it would clip [-1, 0)).
        h = self.conv1(x if self.optimized else F.relu(x))  # not in place: x feeds the shortcut too
        h = self.conv2(F.relu(h, inplace=True))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.shortcut is None:
            return h + x
        if self.optimized:  # pool first: the 1x1 conv then runs on a quarter of the pixels
            return h + self.shortcut(F.avg_pool2d(x, 2))
        s = self.shortcut(x)
        return h + (F.avg_pool2d(s, 2) if self.down else s)


class ResNetDiscriminator(nn.Module):
    """ResNet D with spectral norm everywhere: images (N, channels, R, R) [+ labels] -> logits (N,)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = _d_channels(cfg)
        blocks = [_DBlock(cfg.channels, ch[0], down=True, optimized=True)]
        blocks += [_DBlock(ch[k - 1], ch[k], down=True) for k in range(1, len(ch))]
        blocks.append(_DBlock(ch[-1], ch[-1], down=False))
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = ch[-1]
        self.head = spectral_norm(nn.Linear(ch[-1], 1))
        self.embed = spectral_norm(nn.Embedding(cfg.num_classes, ch[-1])) if cfg.conditional else None

    @property
    def first_layer(self) -> nn.Module:
        """D's input conv (its gradient norm is the one training logs for D's input end)."""
        return self.blocks[0].conv1

    @property
    def last_layer(self) -> nn.Module:
        """The linear layer producing the (unconditional part of the) logit."""
        return self.head

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = check_d_input(self.cfg, x, labels)
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling: (N, feature_dim)
        logits = self.head(h).flatten()
        if self.embed is not None and labels is not None:
            logits = logits + (self.embed(labels) * h).sum(dim=1)
        return logits


def build_resnet(cfg: NetConfig) -> tuple[ResNetGenerator, ResNetDiscriminator]:
    """G and D for ``cfg`` with ``cfg.init`` applied; conditional BN embeddings keep gain 1 / bias 0."""
    g, d = ResNetGenerator(cfg), ResNetDiscriminator(cfg)
    cbn = [m for m in g.modules() if isinstance(m, ConditionalBatchNorm2d)]
    # init_weights would draw the gain/bias embeddings like any embedding, and BN without affine has no weight.
    init_weights(g, cfg.init, skip=tuple(sub for m in cbn if m.num_classes for sub in m.modules()))
    init_weights(d, cfg.init)
    return g, d
