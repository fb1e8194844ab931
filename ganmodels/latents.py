"""Truncation grids and latent interpolation clips from a trained generator snapshot (``generators/step-N.pt``).

Truncation trick (BigGAN; Brock et al., 2018). Our generators take ``z ~ N(0, I)`` directly (no mapping
network, so no mean latent to pull toward), so truncation draws each latent component from the normal
*truncated* to ``[-t, t]``. ``psi`` in ``(0, 1]`` is the share of the normal's probability mass kept per
component, ``t = Phi^-1((1 + psi) / 2)``: ``psi = 1`` is the plain sampler (``t`` infinite), ``0.7`` keeps
``|z| <= 1.04``, ``0.5`` keeps ``|z| <= 0.67``. Smaller ``psi``: more typical, cleaner samples, less variety.
Draws go through the inverse CDF, ``z_psi = Phi^-1(1/2 + psi (Phi(z) - 1/2))`` for one ``z ~ N(0, I)``: exactly
the truncated normal (what BigGAN gets by resampling components beyond ``t``), but the same ``z`` for every
``psi``, so grids at several ``psi`` show the same samples pulled toward the mode, not different ones.

Interpolation: spherical (slerp; White, "Sampling Generative Networks", 2016) between ``keyframes`` fixed
latents per path and back to the first, so the clip loops without a jump. In high dimensions N(0, I)'s mass
lies near a sphere; a straight line between two latents cuts through its improbable inside.

Conditional generators: a label-conditional run's grids have one row per label (like its progress frames);
a clip's path ``i`` keeps label ``i mod num_classes`` throughout.

``python -m ganmodels.latents SNAPSHOT --out DIR`` writes ``interpolation.mp4`` and one
``truncation-psi<psi>.png`` per ``--psi``, and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ganmodels.frames import make_grid, mean_pairwise_distance, save_frame
from ganmodels.timelapse import ClipResult, render_clip

__all__ = [
    "DEFAULT_PSIS",
    "InterpolationClip",
    "LatentMedia",
    "TruncationGrid",
    "interpolation_clip",
    "interpolation_path",
    "main",
    "render_snapshot",
    "slerp",
    "truncated_noise",
    "truncation_grids",
    "truncation_threshold",
]

DEFAULT_PSIS = (1.0, 0.7, 0.5)


def _check_psi(psi: float) -> None:
    if not 0.0 < psi <= 1.0:
        raise ValueError(f"psi must be in (0, 1] (1 = no truncation), got {psi!r}")


def truncation_threshold(psi: float) -> float:
    """The ``t`` that truncation ``psi`` bounds every latent component by (``inf`` for ``psi = 1``)."""
    _check_psi(psi)
    return math.inf if psi == 1.0 else float(torch.special.ndtri(torch.tensor((1.0 + psi) / 2, dtype=torch.float64)))


def truncated_noise(n: int, dim: int, psi: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, dim)`` latents from N(0, I) truncated to ``psi`` (module docstring); ``psi = 1`` is ``torch.randn``."""
    _check_psi(psi)
    z = torch.randn(n, dim, generator=generator)
    if psi == 1.0:
        return z
    # float64: Phi saturates at 1 for z > ~5.4 in float32, and Phi^-1(1) is inf.
    u = 0.5 + psi * (torch.special.ndtr(z.double()) - 0.5)
    return torch.special.ndtri(u).float()


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between the rows of ``a`` and ``b`` (``t = 0`` gives ``a`` exactly).

    Falls back to linear interpolation for (nearly) parallel rows, where the spherical formula divides by ~0.
    """
    dot = (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True))
    omega = torch.acos(dot.clamp(-1.0, 1.0))
    so = torch.sin(omega)
    parallel = so.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(so), so)
    spherical = torch.sin((1.0 - t) * omega) / safe * a + torch.sin(t * omega) / safe * b
    return torch.where(parallel, (1.0 - t) * a + t * b, spherical)


def interpolation_path(keyframes: torch.Tensor, steps: int) -> Iterator[torch.Tensor]:
    """``K * steps`` latents ``(P, D)`` through keyframes ``(P, K, D)``: slerp from each to the next, the
    last back to the first (a loop: the frame after the last would be the first)."""
    if keyframes.ndim != 3 or keyframes.shape[1] < 2:
        raise ValueError(f"keyframes must be (paths, >= 2 keyframes, latent_dim), got {tuple(keyframes.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    k = keyframes.shape[1]
    for i in range(k):
        a, b = keyframes[:, i], keyframes[:, (i + 1) % k]
        for s in range(steps):
            yield a if s == 0 else slerp(a, b, s / steps)


def _label_count(info: dict[str, Any]) -> int:
    """The snapshot's conditioning classes (0: unconditional)."""
    return int(info["net"]["num_classes"])


@torch.no_grad()
def _images(generator: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
    """G's outputs for ``z`` (and ``labels``) in batches of ``batch``, on the CPU."""
    device = next(generator.parameters()).device
    out = []
    for i in range(0, z.shape[0], batch):
        y = labels[i : i + batch].to(device) if labels is not None else None
        out.append(generator(z[i : i + batch].to(device), y).float().cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class TruncationGrid:
    """One grid of :func:`truncation_grids`: its ``psi``, the bound ``threshold`` on ``|z|``, the PNG, and the
    samples' mean pairwise distance (``diversity``; it falls as ``psi`` does)."""

    psi: float
    threshold: float
    path: Path
    diversity: float


def truncation_grids(
    generator: torch.nn.Module,
    info: dict[str, Any],
    out_dir: Path,
    *,
    psis: Sequence[float] = DEFAULT_PSIS,
    count: int = 32,
    per_row: int = 8,
    seed: int = 0,
    batch: int = 256,
) -> list[TruncationGrid]:
    """One grid PNG per ``psi`` (``out_dir/truncation-psi0.70.png``) of the same samples at each truncation.

    Unconditional: ``count`` samples, ``per_row`` per row. Conditional: one row of ``per_row`` samples per
    label. ``info`` is the snapshot's (``net``, ...) as :func:`ganmodels.evaluate.load_generator` returns it.
    """
    for psi in psis:
        _check_psi(psi)
    labels_n = _label_count(info)
    n = labels_n * per_row if labels_n else count
    labels = torch.arange(labels_n).repeat_interleave(per_row) if labels_n else None
    state = torch.Generator().manual_seed(seed).get_state()
    grids = []
    for psi in psis:
        z = truncated_noise(n, int(info["net"]["latent_dim"]), psi, torch.Generator().set_state(state))
        images = _images(generator, z, labels, batch)
        path = save_frame(make_grid(images, per_row), Path(out_dir) / f"truncation-psi{psi:.2f}.png")
        grids.append(TruncationGrid(psi, truncation_threshold(psi), path, mean_pairwise_distance(images)))
    return grids


@dataclass(frozen=True)
class InterpolationClip:
    """What :func:`interpolation_clip` wrote: the MP4 (``clip``), and the ``paths`` x ``keyframes`` latents
    ``(P, K, D)`` it passes through (``keyframes[:, 0]`` is the first frame's)."""

    clip: ClipResult
    keyframes: torch.Tensor
    labels: torch.Tensor | None
    psi: float


def interpolation_clip(
    generator: torch.nn.Module,
    info: dict[str, Any],
    mp4_path: Path,
    *,
    paths: int = 8,
    per_row: int = 8,
    keyframes: int = 4,
    steps: int = 24,
    psi: float = 1.0,
    seed: int = 0,
    fps: float = 24,
    size: int = 512,
) -> InterpolationClip:
    """A looping MP4 of ``paths`` latent walks side by side (``per_row`` per row), ``keyframes * steps`` frames.

    Keyframes are drawn with ``seed`` (truncated to ``psi``); frames are rendered and encoded one at a time.
    """
    if paths < 1:
        raise ValueError(f"paths must be >= 1, got {paths}")
    labels_n = _label_count(info)
    labels = torch.arange(paths) % labels_n if labels_n else None
    gen = torch.Generator().manual_seed(seed)
    latent_dim = int(info["net"]["latent_dim"])
    keys = truncated_noise(paths * keyframes, latent_dim, psi, gen).view(paths, keyframes, latent_dim)
    frames = (
        make_grid(_images(generator, z, labels, paths), per_row) for z in interpolation_path(keys, steps)
    )  # a generator: one frame in memory at a time
    clip = render_clip(frames, mp4_path, size=size, fps=fps)
    return InterpolationClip(clip=clip, keyframes=keys, labels=labels, psi=psi)


@dataclass(frozen=True)
class LatentMedia:
    """What :func:`render_snapshot` wrote for one snapshot."""

    snapshot: Path
    step: int
    label_names: list[str]
    clip: InterpolationClip
    grids: list[TruncationGrid]


def render_snapshot(
    snapshot: Path,
    out_dir: Path,
    *,
    psis: Sequence[float] = DEFAULT_PSIS,
    seed: int = 0,
    per_row: int = 8,
    count: int = 32,
    paths: int = 8,
    keyframes: int = 4,
    steps: int = 24,
    fps: float = 24,
    size: int = 512,
) -> LatentMedia:
    """``out_dir/interpolation.mp4`` and the truncation grids of a generator snapshot, on the CPU."""
    from ganmodels.evaluate import load_generator

    generator, info = load_generator(snapshot, "cpu")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grids = truncation_grids(generator, info, out_dir, psis=psis, count=count, per_row=per_row, seed=seed)
    clip = interpolation_clip(
        generator,
        info,
        out_dir / "interpolation.mp4",
        paths=paths,
        per_row=per_row,
        keyframes=keyframes,
        steps=steps,
        seed=seed,
        fps=fps,
        size=size,
    )
    names = list(info.get("labels") or info.get("classes") or [])
    return LatentMedia(Path(snapshot), int(info["step"]), names, clip, grids)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ganmodels.latents``: render a snapshot's clip and grids; one JSON line on stdout."""
    p = argparse.ArgumentParser(prog="python -m ganmodels.latents", description=__doc__.split("\n\n")[0])
    p.add_argument("snapshot", type=Path, help="a generator snapshot, e.g. runs/.../generators/step-00003000.pt")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--psi", type=float, nargs="+", default=list(DEFAULT_PSIS), help="truncation psi values")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paths", type=int, default=8, help="interpolation walks side by side")
    p.add_argument("--keyframes", type=int, default=4, help="latents each walk passes through")
    p.add_argument("--steps", type=int, default=24, help="frames from one keyframe to the next")
    p.add_argument("--fps", type=float, default=24)
    p.add_argument("--size", type=int, default=512, help="longer side of the video in pixels")
    args = p.parse_args(argv)
    media = render_snapshot(
        args.snapshot,
        args.out,
        psis=args.psi,
        seed=args.seed,
        paths=args.paths,
        keyframes=args.keyframes,
        steps=args.steps,
        fps=args.fps,
        size=args.size,
    )
    summary = {
        "step": media.step,
        "interpolation": str(media.clip.clip.mp4_path),
        "frames": media.clip.clip.frame_count,
        "truncation": [{"psi": g.psi, "path": str(g.path), "diversity": g.diversity} for g in media.grids],
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
