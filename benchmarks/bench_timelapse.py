"""Time-lapse rendering: 1,000 progress frames (8x8 grids of 64 px samples, 530x530 PNG) -> 512 px MP4 + GIF.

Run by hand: ``python benchmarks/bench_timelapse.py [--frames 1000]``. The frames are generated first in a temp
dir (not timed): smooth random "samples" drifting from step to step plus pixel noise, like a training run's
grids. Each variant then runs in a fresh process, so its peak RSS (``ru_maxrss``, and that of its largest
ffmpeg child) is its own:

- ``mp4``: :func:`ganmodels.timelapse.render_timelapse`, MP4 only (libx264 ``veryfast``, the default);
- ``mp4 medium``: the same with libx264's own default preset;
- ``mp4 no label``: without drawing the step number;
- ``gif``: GIF only (256 px, palettegen + paletteuse);
- ``mp4 + gif``: both, as the pipeline renders them;
- ``in memory``: the obvious alternative: read every frame into a list of arrays, scale each (same
  nearest-neighbour, no label), then hand the list to ``imageio_ffmpeg.write_frames`` (same codec settings).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imageio_ffmpeg
import numpy as np
from PIL import Image

from ganmodels.timelapse import list_frames, render_timelapse

SAMPLES, SAMPLE_PX, PADDING, SIZE = 64, 64, 2, 512
VARIANTS = ["mp4", "mp4 medium", "mp4 no label", "gif", "mp4 + gif", "in memory"]


def make_frames(directory: Path, n: int, seed: int = 0) -> None:
    """``n`` grids whose samples drift smoothly from a random start to a random end, plus noise."""
    rng = np.random.default_rng(seed)
    start, end = rng.uniform(0, 255, (2, SAMPLES, 8, 8, 3))
    cols = 8
    side = cols * (SAMPLE_PX + PADDING) + PADDING
    for k in range(n):
        t = k / max(1, n - 1)
        grid = np.zeros((side, side, 3), np.uint8)
        for i in range(SAMPLES):
            low = ((1 - t) * start[i] + t * end[i]).astype(np.uint8)
            sample = np.asarray(Image.fromarray(low).resize((SAMPLE_PX, SAMPLE_PX), Image.Resampling.BILINEAR))
            noisy = np.clip(sample + rng.normal(0, 6, sample.shape), 0, 255).astype(np.uint8)
            r, c = divmod(i, cols)
            y, x = PADDING + r * (SAMPLE_PX + PADDING), PADDING + c * (SAMPLE_PX + PADDING)
            grid[y : y + SAMPLE_PX, x : x + SAMPLE_PX] = noisy
        # frames.frame_path names, without importing torch (it would dominate the peak RSS measured here)
        Image.fromarray(grid).save(directory / f"step-{100 * k:08d}.png", compress_level=1)


def in_memory(frames: list[tuple[int, Path]], mp4: Path) -> None:
    """The alternative: every frame decoded and scaled into a list first, then encoded."""
    arrays = []
    for _, path in frames:
        with Image.open(path) as im:
            arrays.append(np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.NEAREST)))
    params = ["-preset", "veryfast", "-crf", "20", "-movflags", "+faststart"]
    writer = imageio_ffmpeg.write_frames(
        str(mp4), (SIZE, SIZE), fps=10, codec="libx264", quality=None, macro_block_size=1, output_params=params
    )
    writer.send(None)
    for arr in arrays:
        writer.send(arr)
    writer.close()


def run_variant(variant: str, directory: Path, out: Path) -> dict[str, float]:
    """One timed render; returns seconds, output sizes and peak RSS (this process, largest ffmpeg)."""
    frames = list_frames(directory)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mp4, gif = out / "t.mp4", out / "t.gif"
    start = time.perf_counter()
    if variant == "in memory":
        in_memory(frames, mp4)
    else:
        render_timelapse(
            frames,
            mp4_path=None if variant == "gif" else mp4,
            gif_path=gif if "gif" in variant else None,
            size=SIZE,
            label=variant != "mp4 no label",
            preset="medium" if variant == "mp4 medium" else "veryfast",
        )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "mp4_mib": mp4.stat().st_size / 2**20 if mp4.exists() else 0.0,
        "gif_mib": gif.stat().st_size / 2**20 if gif.exists() else 0.0,
        "rss_before_mib": rss_before,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ffmpeg_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--variants", nargs="*", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "FRAMES_DIR", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, directory, out = args.child
        print(json.dumps(run_variant(variant, Path(directory), Path(out))))
        return

    with tempfile.TemporaryDirectory(prefix="bench-timelapse-") as tmp:
        directory = Path(tmp) / "frames"
        directory.mkdir()
        start = time.perf_counter()
        make_frames(directory, args.frames)
        png_mib = sum(p.stat().st_size for _, p in list_frames(directory)) / 2**20
        with Image.open(list_frames(directory)[0][1]) as im:
            frame_size = im.size
        print(f"generated {args.frames} frames of {frame_size[0]}x{frame_size[1]} px ({png_mib:,.0f} MiB of PNG) "
              f"in {time.perf_counter() - start:.1f} s; rendering at {SIZE} px, 10 fps")  # fmt: skip
        results = {}
        for variant in args.variants:
            out = Path(tmp) / variant.replace(" ", "_")
            out.mkdir()
            cmd = [sys.executable, __file__, "--child", variant, str(directory), str(out)]
            results[variant] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            r = results[variant]
            print(f"{variant:>13}: {r['seconds']:6.1f} s  {args.frames / r['seconds']:6.1f} frames/s  "
                  f"mp4 {r['mp4_mib']:5.1f} MiB  gif {r['gif_mib']:5.1f} MiB  peak RSS {r['rss_mib']:5.0f} MiB "
                  f"(start {r['rss_before_mib']:3.0f}; ffmpeg {r['ffmpeg_rss_mib']:4.0f} MiB)", flush=True)  # fmt: skip
        if {"mp4 no label", "in memory"} <= results.keys():
            ours, alt = results["mp4 no label"], results["in memory"]
            print(f"streaming vs in memory (both unlabelled): time x{alt['seconds'] / ours['seconds']:.2f}, "
                  f"peak RSS x{alt['rss_mib'] / ours['rss_mib']:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
