"""Truncation grids and latent interpolation clips (ganmodels.latents), the clip encoder, the CLI and the
metadata the time-lapse asset gets from them."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import dagster as dg
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from assets.evaluation import LATENT_PSIS, latent_media
from ganmodels import latents
from ganmodels.checkpoint import save_checkpoint
from ganmodels.frames import grid_size, make_grid
from ganmodels.latents import interpolation_clip, interpolation_path, slerp, truncated_noise, truncation_threshold
from ganmodels.nets import NetConfig, build
from ganmodels.timelapse import padded_size, render_clip, scaled_size
from pipelines.storage import LocalStorage


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_generator(num_classes: int = 0) -> torch.nn.Module:
    """The real 32 px architecture, in eval mode, with conv weights large enough that outputs vary with z (an
    untrained DCGAN-initialised G in eval mode draws nearly one image for every z)."""
    torch.manual_seed(0)
    g, _ = build(NetConfig(resolution=32, width=8, latent_dim=16, num_classes=num_classes))
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                m.weight.normal_(0.0, 0.15)
    return g.eval()


class Pattern(torch.nn.Module):
    """A stand-in generator whose 8x8 images change sharply with z (a fixed random projection, tanh)."""

    def __init__(self, latent_dim: int = 16) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(latent_dim, 3 * 8 * 8)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(3 * 8 * 8, latent_dim, generator=seeded(7)))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.proj(z)).view(-1, 3, 8, 8)


def read_video(path: Path) -> tuple[dict, list[np.ndarray]]:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return meta, [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]


def as_rendered(grid: Image.Image, size: int) -> np.ndarray:
    """A grid as render_clip shows it: nearest-neighbour to longer side ``size``, padded to even sides."""
    canvas = Image.new("RGB", padded_size(grid.width, grid.height, size))
    canvas.paste(grid.resize(scaled_size(grid.width, grid.height, size), Image.Resampling.NEAREST), (0, 0))
    return np.asarray(canvas).astype(np.float32)


# ---- truncation ---------------------------------------------------------------------------------------------


def test_psi_one_is_the_plain_sampler_and_psi_bounds_every_component() -> None:
    assert torch.equal(truncated_noise(64, 16, 1.0, seeded(3)), torch.randn(64, 16, generator=seeded(3)))
    assert truncation_threshold(1.0) == math.inf
    plain = torch.randn(4096, 16, generator=seeded(3))
    for psi, t in ((0.7, 1.0364), (0.5, 0.6745)):
        assert truncation_threshold(psi) == pytest.approx(t, abs=1e-4)
        z = truncated_noise(4096, 16, psi, seeded(3))
        assert float(z.abs().max()) <= t + 1e-4 and float(z.abs().max()) > 0.99 * t
        # the same draw pulled toward 0: same signs, never farther out
        assert torch.equal(torch.sign(z), torch.sign(plain)) and bool((z.abs() <= plain.abs() + 1e-6).all())
        # the truncated normal's variance, 1 - 2 t phi(t) / (2 Phi(t) - 1)
        phi, mass = math.exp(-t * t / 2) / math.sqrt(2 * math.pi), psi
        assert float(z.var()) == pytest.approx(1 - 2 * t * phi / mass, rel=0.03)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"psi must be in \(0, 1\]"):
            truncated_noise(2, 2, bad)


def test_smaller_psi_reduces_sample_variance_and_grids_follow_the_frame_layout(tmp_path: Path) -> None:
    g = random_generator()
    spread = []
    for psi in (1.0, 0.7, 0.5):
        with torch.no_grad():
            spread.append(float(g(truncated_noise(256, 16, psi, seeded(1))).var(0).mean()))
    assert spread[1] < 0.6 * spread[0] and spread[2] < 0.6 * spread[1]

    info = {"net": {"num_classes": 0, "latent_dim": 16}}
    grids = latents.truncation_grids(g, info, tmp_path, psis=LATENT_PSIS, count=12, per_row=4)
    assert [p.psi for p in grids] == [1.0, 0.7, 0.5]
    assert [p.path.name for p in grids] == [
        "truncation-psi1.00.png",
        "truncation-psi0.70.png",
        "truncation-psi0.50.png",
    ]
    assert grids[0].diversity > grids[1].diversity > grids[2].diversity > 0
    with Image.open(grids[0].path) as im:
        assert im.size == grid_size(12, 32, 32, 4)  # 3 rows of 4

    cond = latents.truncation_grids(random_generator(3), {"net": {"num_classes": 3, "latent_dim": 16}}, tmp_path / "c",
                                    psis=[0.5], per_row=5)  # fmt: skip
    with Image.open(cond[0].path) as im:
        assert im.size == grid_size(15, 32, 32, 5)  # one row of 5 per label


# ---- interpolation -----------------------------------------------------------------------------------------


def test_slerp_endpoints_sphere_and_parallel_fallback() -> None:
    a, b = torch.randn(5, 16, generator=seeded(0)), torch.randn(5, 16, generator=seeded(1))
    assert torch.equal(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    ua, ub = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    mid = slerp(ua, ub, 0.5)
    assert torch.allclose(mid.norm(dim=1), torch.ones(5), atol=1e-5)  # stays on the sphere; lerp would not
    assert float(((ua + ub) / 2).norm(dim=1).max()) < 0.99
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: linear, no division by sin(0)


def test_interpolation_clip_is_a_looping_mp4_starting_at_the_first_latent(tmp_path: Path) -> None:
    g, info = Pattern(), {"net": {"num_classes": 0, "latent_dim": 16}}
    made = interpolation_clip(
        g, info, tmp_path / "walk.mp4", paths=4, per_row=2, keyframes=3, steps=5, size=176, fps=10
    )
    keys = made.keyframes
    assert keys.shape == (4, 3, 16) and made.clip.frame_count == 15
    path = list(interpolation_path(keys, 5))
    assert len(path) == 15 and torch.equal(path[0], keys[:, 0]) and torch.equal(path[5], keys[:, 1])
    assert torch.allclose(slerp(keys[:, 2], keys[:, 0], 1.0), keys[:, 0], atol=1e-5)  # the step after the last

    meta, frames = read_video(tmp_path / "walk.mp4")
    grid_side = grid_size(4, 8, 8, 2)[0]  # 2 x 2 tiles of 8 px: 22 px
    assert len(frames) == 15 and tuple(meta["size"]) == padded_size(grid_side, grid_side, 176) == (176, 176)
    assert meta["fps"] == 10 and meta["codec"].startswith("h264")

    with torch.no_grad():
        first, second = (as_rendered(make_grid(g(keys[:, k]), 2), 176) for k in (0, 1))
    err_first = float(np.abs(frames[0].astype(np.float32) - first).mean())
    err_other = float(np.abs(frames[0].astype(np.float32) - second).mean())
    assert err_first < 6 and err_other > 10 * err_first  # H.264 is lossy; the other latent's images are far off


def test_render_clip_rejects_bad_input_and_leaves_no_temp_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images"):
        render_clip(iter([]), tmp_path / "a.mp4")
    images = [Image.new("RGB", (8, 8)), Image.new("RGB", (10, 8))]
    with pytest.raises(ValueError, match=r"image 1 is \(10, 8\), the first was \(8, 8\)"):
        render_clip(images, tmp_path / "a.mp4", size=16)
    assert list(tmp_path.iterdir()) == []


# ---- from a snapshot: the CLI and the time-lapse asset's metadata ------------------------------------------


def test_snapshot_cli_and_timelapse_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = dataclasses.asdict(NetConfig(resolution=32, width=8, latent_dim=16, num_classes=2))
    snapshot = {"net": net, "classes": ["dog"], "label_field": "breed", "labels": ["pug", "other"], "ema": False}
    run_dir = tmp_path / "run"
    path = save_checkpoint(run_dir / "generators", 7, {**snapshot, "G": random_generator(2).state_dict()}, keep=0)

    assert latents.main([str(path), "--out", str(tmp_path / "cli"), "--psi", "1", "0.5", "--keyframes", "2",
                         "--steps", "3", "--size", "64"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 7 and summary["frames"] == 6
    assert [t["psi"] for t in summary["truncation"]] == [1.0, 0.5]
    assert all(Path(t["path"]).is_file() for t in summary["truncation"]) and Path(summary["interpolation"]).is_file()

    store = LocalStorage(tmp_path / "store")
    md = latent_media(store, "breeds", "abc123", run_dir, 7)
    assert md["truncation_psi"].value == [1.0, 0.7, 0.5]
    assert md["truncation_rows"].value == ["pug", "other"]  # one grid row per label
    assert md["interpolation_frames"].value == 4 * 12
    video = store.local_path("timelapse/breeds/abc123-interpolation.mp4")
    assert md["interpolation_video"].value == video.as_uri() and video.stat().st_size > 0
    assert set(md["truncation_grids"].value) == {"1", "0.7", "0.5"}
    assert store.local_path("timelapse/breeds/abc123-truncation-psi0.50.png").is_file()
    diversity = md["truncation_diversity"].value
    assert diversity["1"] > diversity["0.7"] > diversity["0.5"]
    assert md["truncation_preview"].value.startswith("![truncation psi 0.5](data:image/png;base64,")
    with pytest.raises(dg.Failure, match="no generator snapshot of step 8"):
        latent_media(store, "breeds", "abc123", run_dir, 8)
