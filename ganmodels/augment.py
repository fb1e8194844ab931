"""DiffAugment (Zhao et al. 2020): differentiable augmentations for data-efficient GAN training.

With a few thousand images D memorises the training set and its feedback to G collapses. Augmenting
ONLY D's inputs would let G learn to produce augmented-looking images; DiffAugment instead applies the
same augmentation family T to real AND fake images in D's step, and to the fakes in G's step too,
differentiably, so G gets gradients through T:

    d_loss(D(diff_augment(real)), D(diff_augment(fake)))   # D step
    g_loss(D(diff_augment(G(z))))                          # G step

Each sample gets its own random parameters (the transforms are the same, the draws are not).

Policy: comma-separated names from ``color`` (brightness, saturation, contrast), ``translation``
(shift by up to 1/8 of the size, zero padding) and ``cutout`` (a zeroed square of half the size).
An empty policy is the identity. Images are expected as ``(N, C, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AUGMENTS", "diff_augment", "parse_policy"]


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device).to(like.device, like.dtype)


def _randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(low, high, shape, generator=generator, device=device).to(like.device)


def rand_brightness(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Add a per-sample offset in [-0.5, 0.5)."""
    return x + (_rand((x.shape[0], 1, 1, 1), generator, x) - 0.5)


def rand_saturation(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Scale the distance from the per-pixel channel mean by a factor in [0, 2)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), generator, x) * 2) + mean


def rand_contrast(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Scale the distance from the per-image mean by a factor in [0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), generator, x) + 0.5) + mean


def rand_translation(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to ``ratio`` of its size in each direction, filling with zeros."""
    n, _, h, w = x.shape
    shift_h, shift_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = _randint(-shift_h, shift_h + 1, (n, 1, 1), generator, x)
    tx = _randint(-shift_w, shift_w + 1, (n, 1, 1), generator, x)
    gb, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    # Index into a 1-pixel zero border: every out-of-range position clamps onto that border.
    gy = torch.clamp(gy + ty + 1, 0, h + 1)
    gx = torch.clamp(gx + tx + 1, 0, w + 1)
    x_pad = F.pad(x, [1, 1, 1, 1])
    return x_pad.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2).contiguous()


def rand_cutout(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> Tensor:
    """Zero a square of ``ratio`` of the size at a random centre (may be clipped by the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = _randint(0, h + (1 - ch % 2), (n, 1, 1), generator, x)
    ox = _randint(0, w + (1 - cw % 2), (n, 1, 1), generator, x)
    gb, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(ch, device=x.device),
        torch.arange(cw, device=x.device),
        indexing="ij",
    )
    gy = torch.clamp(gy + oy - ch // 2, 0, h - 1)
    gx = torch.clamp(gx + ox - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gy, gx] = 0
    return x * mask.unsqueeze(1)


Augment = Callable[[Tensor, torch.Generator | None], Tensor]

AUGMENTS: dict[str, list[Augment]] = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "translation": [rand_translation],
    "cutout": [rand_cutout],
}


def parse_policy(policy: str) -> list[str]:
    """``"color, translation"`` -> ``["color", "translation"]``; empty -> ``[]``; unknown names raise."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in AUGMENTS]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown}; choose from {sorted(AUGMENTS)}")
    return names


def diff_augment(
    x: Tensor, policy: str = "color,translation,cutout", generator: torch.Generator | None = None
) -> Tensor:
    """Apply the policy's augmentations in order, differentiably in ``x``; identity for an empty policy.

    Random draws come from ``generator`` (CPU recommended), so a seeded generator makes it deterministic.
    """
    names = parse_policy(policy)
    if not names:
        return x
    if x.ndim != 4:
        raise ValueError(f"diff_augment expects (N, C, H, W), got {tuple(x.shape)}")
    for name in names:
        for fn in AUGMENTS[name]:
            x = fn(x, generator)
    return x
