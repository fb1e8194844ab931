"""Progress frames: image grids of a fixed noise batch, made with numpy/PIL (no torchvision).

:func:`make_grid` tiles ``(N, C, H, W)`` images in ``[-1, 1]`` into one PIL image, ``nrow`` images per
row with ``padding`` pixels of ``pad_value`` between and around them (the layout of torchvision's
``make_grid``). :func:`save_frame` writes ``frames/step-00000100.png`` atomically (temp file + rename),
so a kill mid-write never leaves a truncated PNG behind.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.storage import atomic_file

__all__ = ["frame_path", "grid_size", "make_grid", "mean_pairwise_distance", "save_frame"]


def grid_size(n: int, height: int, width: int, nrow: int, padding: int = 2) -> tuple[int, int]:
    """``(width, height)`` in pixels of the grid :func:`make_grid` builds for ``n`` images."""
    cols = max(1, min(nrow, n))
    rows = math.ceil(n / cols)
    return cols * (width + padding) + padding, rows * (height + padding) + padding


def make_grid(images: torch.Tensor, nrow: int = 8, *, padding: int = 2, pad_value: int = 0) -> Image.Image:
    """Tile ``images`` (N, C, H, W), values in [-1, 1], into an RGB (C=3) or greyscale (C=1) PIL image."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    n, c, h, w = images.shape
    arr = images.detach().float().cpu().clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8).numpy()
    cols = max(1, min(nrow, n))
    rows = math.ceil(n / cols)
    gw, gh = grid_size(n, h, w, nrow, padding)
    grid = np.full((gh, gw, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = arr[i].transpose(1, 2, 0)
    assert rows * (h + padding) + padding == gh
    return Image.fromarray(grid[:, :, 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")


def frame_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.png"


def save_frame(image: Image.Image, path: Path) -> Path:
    """Write ``image`` as PNG to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    with atomic_file(path) as f:
        image.save(f, format="PNG")
    return path


@torch.no_grad()
def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance between all pairs of samples: a cheap diversity measure (falls on mode collapse)."""
    flat = images.detach().float().flatten(1)
    n = flat.shape[0]
    if n < 2:
        return 0.0
    d = torch.cdist(flat, flat)
    return float(d.sum() / (n * (n - 1)))
