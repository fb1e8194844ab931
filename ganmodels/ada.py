"""Adaptive discriminator augmentation, ADA (Karras et al. 2020, "Training GANs with limited data").

Like DiffAugment, every image D sees is augmented differentiably (reals and fakes in D's step, fakes in
G's step, so G's gradients pass through the augmentation), but each transform is applied to each sample
only with probability ``p``, and ``p`` is tuned during training from how much D overfits. With ``p < 1``
the augmentations do not "leak": G cannot lower its loss by producing augmented-looking images, because
D still sees un-augmented images often enough to tell the augmented distribution from the clean one.

Pipeline (a CPU-cheap subset of the paper's "bgc": no arbitrary rotation, anisotropic scaling or
fractional translation, each of which needs a costly anti-aliased resampling), in this order, each
transform with its own per-sample coin ``rand < p``:

* ``xflip``: horizontal flip;
* ``rotate90``: rotation by k * 90 degrees, k uniform in {0, 1, 2, 3};
* ``translate``: integer shift by up to 1/8 of the size in x and y (uniform), reflect padding (as ADA:
  zero borders would be a give-away of the augmentation);
* ``scale``: isotropic zoom by 2^N(0, 0.2), bilinear resampling with reflect padding;
* ``brightness``: add N(0, 0.2);
* ``contrast``: multiply by 2^N(0, 0.5) (around 0, mid-grey for images in [-1, 1]);
* ``saturation``: scale the distance from the per-pixel channel mean (the luma axis) by 2^N(0, 1).

Every transform draws the same random numbers whatever ``p`` is (only ``p == 0`` skips the pipeline and
its draws), so the stream stays in step for a given ``p`` history; draws come from a caller-owned CPU
``torch.Generator`` (the Trainer's ``augment`` stream), which makes runs deterministic and resumable.

Controller: every ``interval`` D steps, ``r_t = E[sign(D(real))]`` over those steps' augmented reals
(summed over ranks under DDP, so every rank computes the same ``p``) and
``p += sign(r_t - target) * images / (kimg * 1000)``, clamped to ``[0, 1)``, where ``images`` is the
number of reals those steps saw (``batch * interval * ranks``): ``p`` can sweep [0, 1] in ``kimg``
thousand images. ``r_t`` near 1 means D calls nearly every real image real: it is overfitting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TRANSFORMS", "AdaptiveAugment", "augment"]

_BELOW_ONE = math.nextafter(1.0, 0.0)  # p stays < 1: some images always reach D un-augmented (no leaking)


def _draw(shape: tuple[int, ...], generator: torch.Generator, like: Tensor, normal: bool = False) -> Tensor:
    """Uniform [0, 1) (or standard normal) draws from the CPU ``generator``, moved to ``like``'s device."""
    fn = torch.randn if normal else torch.rand
    return fn(shape, generator=generator).to(like.device)


def _blend(mask: Tensor, new: Tensor, x: Tensor) -> Tensor:
    """Per-sample choice: ``new`` where ``mask`` (N,) is set, else ``x``; differentiable in both."""
    return torch.where(mask.view(-1, 1, 1, 1), new, x)


def xflip(x: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror the selected samples left-right (no parameters to draw)."""
    return _blend(mask, x.flip(3), x)


def rotate90(x: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
    """Rotate the selected samples by k * 90 degrees, k uniform in {0, 1, 2, 3} (square images only)."""
    k = (_draw((x.shape[0],), generator, x) * 4).long().clamp(max=3)
    k = torch.where(mask, k, torch.zeros_like(k))
    out = x
    for quarter in (1, 2, 3):
        out = _blend(k == quarter, torch.rot90(x, quarter, dims=(2, 3)), out)
    return out


def translate(x: Tensor, mask: Tensor, generator: torch.Generator, ratio: float = 0.125) -> Tensor:
    """Shift the selected samples by whole pixels, up to ``ratio`` of the size per axis, reflect padding."""
    n, _, h, w = x.shape
    pad = max(1, round(min(h, w) * ratio))
    shift = ((_draw((2, n), generator, x) * 2 - 1) * pad).round().long() * mask.long()
    xp = F.pad(x, [pad, pad, pad, pad], mode="reflect")
    rows = (torch.arange(h, device=x.device) + pad)[None, :] - shift[0][:, None]  # (N, H)
    cols = (torch.arange(w, device=x.device) + pad)[None, :] - shift[1][:, None]  # (N, W)
    c = x.shape[1]
    out = xp.gather(2, rows[:, None, :, None].expand(n, c, h, xp.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def scale(x: Tensor, mask: Tensor, generator: torch.Generator, std: float = 0.2) -> Tensor:
    """Zoom the selected samples about the centre by 2^N(0, std), bilinear, reflect padding."""
    n = x.shape[0]
    s = torch.exp2(_draw((n,), generator, x, normal=True) * std)
    if not bool(mask.any()):
        return x
    inv = torch.where(mask, 1.0 / s, torch.ones_like(s)).to(torch.float32)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = inv
    theta[:, 1, 1] = inv
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return _blend(mask, out.to(x.dtype), x)


def brightness(x: Tensor, mask: Tensor, generator: torch.Generator, std: float = 0.2) -> Tensor:
    """Add N(0, std) to every pixel of the selected samples."""
    b = _draw((x.shape[0],), generator, x, normal=True) * std * mask
    return x + b.to(x.dtype).view(-1, 1, 1, 1)


def contrast(x: Tensor, mask: Tensor, generator: torch.Generator, std: float = 0.5) -> Tensor:
    """Multiply the selected samples by 2^N(0, std) (0 is mid-grey in [-1, 1])."""
    c = torch.exp2(_draw((x.shape[0],), generator, x, normal=True) * std * mask)
    return x * c.to(x.dtype).view(-1, 1, 1, 1)


def saturation(x: Tensor, mask: Tensor, generator: torch.Generator, std: float = 1.0) -> Tensor:
    """Scale each pixel's distance from its channel mean (grey) by 2^N(0, std) in the selected samples."""
    s = torch.exp2(_draw((x.shape[0],), generator, x, normal=True) * std)
    mean = x.mean(dim=1, keepdim=True)
    return _blend(mask, mean + (x - mean) * s.to(x.dtype).view(-1, 1, 1, 1), x)  # exactly x where unselected


Transform = Callable[[Tensor, Tensor, torch.Generator], Tensor]

TRANSFORMS: dict[str, Transform] = {
    "xflip": xflip,
    "rotate90": rotate90,
    "translate": translate,
    "scale": scale,
    "brightness": brightness,
    "contrast": contrast,
    "saturation": saturation,
}


def augment(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Apply every transform of :data:`TRANSFORMS` to each sample with probability ``p``; identity at 0."""
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"ADA expects square (N, C, H, W) images, got {tuple(x.shape)}")
    if p <= 0:
        return x
    for fn in TRANSFORMS.values():
        mask = _draw((x.shape[0],), generator, x) < p
        x = fn(x, mask, generator)
    return x


class AdaptiveAugment:
    """The ADA pipeline at the current ``p`` plus the controller that tunes ``p`` (module docstring)."""

    def __init__(self, target: float = 0.6, interval: int = 4, kimg: float = 100.0) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"target must be in (0, 1), got {target}")
        if interval < 1 or kimg <= 0:
            raise ValueError("need interval >= 1 and kimg > 0")
        self.target, self.interval, self.kimg = target, interval, kimg
        self.p = 0.0
        self.rt: float | None = None  # the last interval's E[sign(D(real))]
        self._signs = 0.0  # this rank's sign sum and image count over the current interval
        self._count = 0.0
        self._steps = 0

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return augment(x, self.p, generator)

    @torch.no_grad()
    def observe(self, real_logits: Tensor, reduce: Callable[[Tensor], Any] | None = None) -> None:
        """Add one D step's logits on (augmented) reals; every ``interval`` steps, adjust ``p``.

        ``reduce`` sums a tensor in place over ranks (``torch.distributed.all_reduce``); every rank must
        call ``observe`` once per D step so that they reduce together.
        """
        logits = real_logits.detach().float()
        self._signs += float(torch.sign(logits).sum())
        self._count += logits.numel()
        self._steps += 1
        if self._steps < self.interval:
            return
        totals = torch.tensor([self._signs, self._count], dtype=torch.float64, device=real_logits.device)
        if reduce is not None:
            reduce(totals)
        signs, count = totals.tolist()
        self._signs, self._count, self._steps = 0.0, 0.0, 0
        if count <= 0:
            return
        self.rt = signs / count
        direction = (self.rt > self.target) - (self.rt < self.target)
        self.p = min(max(self.p + direction * count / (self.kimg * 1000.0), 0.0), _BELOW_ONE)

    def state_dict(self) -> dict[str, Any]:
        """``p``, the last ``r_t`` and the partial interval's sums: a resumed run continues exactly."""
        return {"p": self.p, "rt": self.rt, "signs": self._signs, "count": self._count, "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = float(state["p"])
        self.rt = None if state["rt"] is None else float(state["rt"])
        self._signs, self._count, self._steps = float(state["signs"]), float(state["count"]), int(state["steps"])
