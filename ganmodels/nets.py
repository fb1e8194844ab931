"""DCGAN and class-conditional GAN networks for 32, 64 and 128 px images (plain PyTorch, no Dagster).

The layout follows Radford et al., "Unsupervised Representation Learning with Deep Convolutional GANs"
(2015): no pooling (strided convolutions learn their own up/down-sampling), BatchNorm in both nets except
G's output layer and D's input layer (the paper found BN there causes sample oscillation and instability),
ReLU in G with tanh at the output, LeakyReLU(0.2) in D, weights drawn from N(0, 0.02).

At 64 px and ``width=64`` the generator is 100 -> 512 -> 256 -> 128 -> 64 -> 3 channels (4x4 -> 64x64)
and the discriminator mirrors it, 3 -> 64 -> 128 -> 256 -> 512 -> 1 logit. Each halving/doubling of
``resolution`` removes/adds one block, the widest block being ``width * resolution / 8`` feature maps.

A conv followed by BatchNorm has no bias (BN's shift makes it redundant); every other conv has one.

Class conditioning (``num_classes > 0``):

* G multiplies a learned label embedding into z (see :class:`Generator` for why multiply, not concat);
* D either uses the projection discriminator of Miyato & Koyama (2018), ``cond_d="projection"``, or sees
  the label as ``num_classes`` one-hot channels concatenated to the image, ``cond_d="concat"``.

D returns raw logits of shape (N,); losses are expected to work on logits (e.g. BCE-with-logits, hinge).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

RESOLUTIONS = (32, 64, 128)
UPSAMPLE_MODES = ("transposed", "resize_conv")
INIT_SCHEMES = ("dcgan", "xavier")
COND_D_MODES = ("projection", "concat")
ARCHS = ("dcgan", "resnet")

# Power iterations run once after (re)initialising spectrally-normalised weights, so sigma is accurate
# from the first training step instead of converging over the first few dozen steps.
_SN_WARMUP_ITERS = 50


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """Every architectural option of the generator/discriminator pair; validated on construction."""

    resolution: int = 64
    channels: int = 3
    latent_dim: int = 100
    width: int = 64  # base feature maps (DCGAN's ngf/ndf); the narrowest block has this many
    upsample: Literal["transposed", "resize_conv"] = "transposed"
    spectral_norm: bool = False  # in D only
    d_dropout: float = 0.0
    leaky_slope: float = 0.2
    init: Literal["dcgan", "xavier"] = "dcgan"
    num_classes: int = 0  # 0 = unconditional
    cond_d: Literal["projection", "concat"] = "projection"
    # "resnet": SNGAN/BigGAN ResNets (ganmodels.resnets; always SN in D, nearest-x2 upsampling, ReLU), for
    # which upsample, spectral_norm and leaky_slope do not apply and cond_d="concat" / d_dropout are rejected.
    arch: Literal["dcgan", "resnet"] = "dcgan"

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution!r}")
        for name in ("channels", "latent_dim", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if not 0.0 <= self.d_dropout < 1.0:
            raise ValueError(f"d_dropout must be in [0, 1), got {self.d_dropout!r}")
        if self.leaky_slope < 0.0:
            raise ValueError(f"leaky_slope must be >= 0, got {self.leaky_slope!r}")
        if self.init not in INIT_SCHEMES:
            raise ValueError(f"init must be one of {INIT_SCHEMES}, got {self.init!r}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0 = unconditional), got {self.num_classes!r}")
        if self.cond_d not in COND_D_MODES:
            raise ValueError(f"cond_d must be one of {COND_D_MODES}, got {self.cond_d!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.arch == "resnet" and self.cond_d != "projection":
            raise ValueError("arch 'resnet' conditions D by projection only; cond_d='concat' is a DCGAN option")
        if self.arch == "resnet" and self.d_dropout > 0:
            raise ValueError("arch 'resnet' has no D dropout (its D is spectrally normalised); set d_dropout: 0")

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def num_scale_blocks(self) -> int:
        """Stride-2 blocks between 4x4 and ``resolution`` (4 at 64 px), in G and in D alike."""
        return int(math.log2(self.resolution)) - 2


def _check_labels(cfg: NetConfig, labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    if not cfg.conditional:
        if labels is not None:
            raise ValueError("labels given to an unconditional network (num_classes=0)")
        return None
    if labels is None:
        raise ValueError(f"this network is class-conditional (num_classes={cfg.num_classes}); labels are required")
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
    return labels.long()


def check_d_input(cfg: NetConfig, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """A discriminator's input checked against ``cfg`` (shape; labels exactly when conditional); the labels."""
    r = cfg.resolution
    if x.dim() != 4 or x.shape[1:] != (cfg.channels, r, r):
        raise ValueError(f"x must have shape (N, {cfg.channels}, {r}, {r}), got {tuple(x.shape)}")
    return _check_labels(cfg, labels, x.shape[0])


class Generator(nn.Module):
    """DCGAN generator: z (N, latent_dim) -> images (N, channels, R, R) in [-1, 1].

    z is treated as a 1x1 map and projected to 4x4 by a ConvTranspose2d (the paper's "project and
    reshape"), then each stride-2 block doubles the resolution and halves the feature maps, down to
    ``width`` before the output layer. Upsampling is either ConvTranspose2d(k4, s2, p1) or, with
    ``upsample="resize_conv"``, nearest x2 + Conv2d(k3, p1), which avoids the checkerboard artefacts of
    overlapping transposed-conv kernels (Odena et al., 2016).

    Conditioning multiplies a label embedding into z rather than concatenating it: z keeps its size, so
    the network body (and its parameter count) is exactly the unconditional one, and every class gets its
    own per-dimension rescaling of the whole latent instead of a few extra input channels that the first
    layer can learn to ignore. The embedding keeps PyTorch's N(0, 1) init so z * e keeps z's scale.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.num_scale_blocks
        top = cfg.width * 2 ** (n - 1)  # 512 at 64 px, width 64
        self.embed = nn.Embedding(cfg.num_classes, cfg.latent_dim) if cfg.conditional else None

        layers: list[nn.Module] = [
            nn.ConvTranspose2d(cfg.latent_dim, top, 4, 1, 0, bias=False),
            nn.BatchNorm2d(top),
            nn.ReLU(True),
        ]
        ch = top
        for _ in range(n - 1):
            layers += [self._up(ch, ch // 2, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        # Output layer: no BatchNorm (the paper: BN here makes samples oscillate), tanh to [-1, 1].
        layers += [self._up(ch, cfg.channels, bias=True), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def _up(self, c_in: int, c_out: int, *, bias: bool) -> nn.Module:
        if self.cfg.upsample == "transposed":
            return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias)
        return _ResizeConv(c_in, c_out, bias=bias)

    @property
    def first_layer(self) -> nn.Module:
        """The projection layer (latent -> 4x4); its gradient norm shows whether G's signal reaches z."""
        return self.net[0]

    @property
    def last_layer(self) -> nn.Module:
        """The output conv (before tanh)."""
        last = self.net[-2]
        return last.conv if isinstance(last, _ResizeConv) else last

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.cfg.latent_dim:
            raise ValueError(f"z must have shape (N, {self.cfg.latent_dim}), got {tuple(z.shape)}")
        labels = _check_labels(self.cfg, labels, z.shape[0])
        if self.embed is not None and labels is not None:
            z = z * self.embed(labels)
        return self.net(z[:, :, None, None])


class _ResizeConv(nn.Module):
    """Nearest-neighbour x2 upsampling then Conv2d(k3, p1): a checkerboard-free stride-2 up block."""

    def __init__(self, c_in: int, c_out: int, *, bias: bool) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class Discriminator(nn.Module):
    """DCGAN discriminator: images (N, channels, R, R) [+ labels] -> logits (N,), no sigmoid.

    Stride-2 Conv2d(k4, s2, p1) blocks halve the resolution and double the feature maps down to 4x4,
    then a 4x4 conv gives one logit. BatchNorm on every block but the first: BN on D's input layer
    destabilises training (DCGAN paper), and with ``spectral_norm=True`` BN is dropped from D altogether,
    since SN already controls D's Lipschitz constant and BN's batch statistics would undo that guarantee.
    Spectral norm, when on, wraps every conv/linear/embedding weight of D.

    Conditioning: ``cond_d="projection"`` adds <embed(y), sum-pooled features> to the unconditional logit
    (Miyato & Koyama 2018), ``cond_d="concat"`` feeds one-hot label maps as extra input channels.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        sn = cfg.spectral_norm
        concat = cfg.conditional and cfg.cond_d == "concat"
        c_in = cfg.channels + (cfg.num_classes if concat else 0)

        layers: list[nn.Module] = []
        ch_in, ch = c_in, cfg.width
        for i in range(cfg.num_scale_blocks):
            use_bn = i > 0 and not sn
            layers.append(self._sn(nn.Conv2d(ch_in, ch, 4, 2, 1, bias=not use_bn)))
            if use_bn:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(cfg.leaky_slope, inplace=True))
            if cfg.d_dropout > 0:
                layers.append(nn.Dropout2d(cfg.d_dropout))
            ch_in, ch = ch, ch * 2
        self.body = nn.Sequential(*layers)
        self.feature_dim = ch_in  # 512 at 64 px, width 64
        self.head = self._sn(nn.Conv2d(ch_in, 1, 4, 1, 0, bias=True))
        self.embed = (
            self._sn(nn.Embedding(cfg.num_classes, ch_in)) if cfg.conditional and cfg.cond_d == "projection" else None
        )

    def _sn(self, module: nn.Module) -> nn.Module:
        return _spectral_norm(module) if self.cfg.spectral_norm else module

    @property
    def first_layer(self) -> nn.Module:
        """D's input conv (its gradient norm is the one training logs for D's input end)."""
        return self.body[0]

    @property
    def last_layer(self) -> nn.Module:
        """The 4x4 conv producing the (unconditional part of the) logit."""
        return self.head

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = check_d_input(self.cfg, x, labels)
        if labels is not None and self.cfg.cond_d == "concat":
            onehot = F.one_hot(labels, self.cfg.num_classes).to(x.dtype)
            x = torch.cat([x, onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        h = self.body(x)  # (N, feature_dim, 4, 4)
        logits = self.head(h).flatten()
        if self.embed is not None and labels is not None:
            logits = logits + (self.embed(labels) * h.sum(dim=(2, 3))).sum(dim=1)
        return logits


def _weight(module: nn.Module) -> torch.Tensor:
    """The trainable weight tensor, i.e. the pre-spectral-norm original when the weight is parametrized."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original  # type: ignore[union-attr]
    return module.weight  # type: ignore[return-value]


@torch.no_grad()
def init_weights(net: nn.Module, scheme: str = "dcgan", *, skip: tuple[nn.Module, ...] = ()) -> None:
    """Initialise conv/linear/embedding/BatchNorm weights in place.

    ``dcgan``: weights N(0, 0.02), BatchNorm weight N(1, 0.02) (as in the DCGAN paper and reference code);
    ``xavier``: xavier_uniform weights, BatchNorm weight 1. Biases are zero in both. Modules in ``skip``
    keep their default init. Spectrally-normalised weights get their power iteration re-warmed, so the
    sigma estimate matches the new weights.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {INIT_SCHEMES}, got {scheme!r}")
    for m in net.modules():
        if any(m is s for s in skip):
            continue
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
            w = _weight(m)
            if scheme == "dcgan":
                nn.init.normal_(w, 0.0, 0.02)
            else:
                nn.init.xavier_uniform_(w)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
            if parametrize.is_parametrized(m, "weight"):
                was_training = m.training
                m.train()
                for _ in range(_SN_WARMUP_ITERS):
                    _ = m.weight  # each access in train mode runs one power iteration
                m.train(was_training)
        elif isinstance(m, nn.BatchNorm2d):
            if scheme == "dcgan":
                nn.init.normal_(m.weight, 1.0, 0.02)
            else:
                nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build(cfg: NetConfig) -> tuple[nn.Module, nn.Module]:
    """Construct G and D for ``cfg`` and apply ``cfg.init`` (seed torch beforehand for reproducibility).

    ``cfg.arch="resnet"`` builds :mod:`ganmodels.resnets` nets (same forward signatures). For DCGAN, G's
    label embedding is left at N(0, 1): it multiplies z, and N(0, 0.02) would shrink z fiftyfold.
    """
    if cfg.arch == "resnet":
        from ganmodels.resnets import build_resnet  # imported here: resnets builds on this module

        return build_resnet(cfg)
    g, d = Generator(cfg), Discriminator(cfg)
    init_weights(g, cfg.init, skip=(g.embed,) if g.embed is not None else ())
    init_weights(d, cfg.init)
    return g, d


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters (spectral norm's u/v are buffers, so SN does not change the count)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
