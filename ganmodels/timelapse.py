"""Training time-lapse: turn a directory of progress frames (``step-00000250.png``) into an MP4 and a GIF.

Frames are streamed one at a time (decode, scale, label, pipe into ffmpeg), so thousands of frames cost
no more memory than one. The ffmpeg binary is the one ``imageio-ffmpeg`` ships; no system ffmpeg needed.

- Scaling is nearest-neighbour (progress grids are small pixel images; smoothing would blur the samples),
  so that the longer side equals ``size``; the result is padded (never stretched) to even dimensions,
  which H.264 in ``yuv420p`` requires.
- Each frame carries its step number in the top-left corner, drawn after scaling so it stays crisp.
- The MP4 is H.264 ``yuv420p`` with ``+faststart`` (the index up front), which browsers play. The GIF is
  made from a lossless intermediate of the GIF-sized frames with a generated palette (``palettegen`` then
  ``paletteuse``: two ffmpeg passes over a file, because one filter graph would buffer every frame).
- Outputs are written to hidden temp files next to the targets and renamed into place only when
  everything succeeded: a failed render leaves any previous output untouched and no temp files behind.
- A frame that cannot be decoded (e.g. a truncated PNG) is skipped with a warning and counted; a frame
  whose size differs from the first decodable frame is resized (nearest-neighbour) to that size.

:func:`render_clip` encodes any stream of images to an MP4 the same way (scaling, padding, H.264, temp file
and rename), without step labels: the latent interpolation clips of :mod:`ganmodels.latents`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import re
import subprocess
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
from PIL import Image, ImageDraw, ImageFont

from pipelines.storage import temp_file_beside

__all__ = [
    "ClipResult",
    "TimelapseResult",
    "list_frames",
    "padded_size",
    "render_clip",
    "render_timelapse",
    "scaled_size",
    "subsample",
]

log = logging.getLogger(__name__)

_FRAME_RE = re.compile(r"step-(\d+)\.png")

Frames = Sequence[tuple[int, Path]]

# palettegen on noisy samples (hundreds of thousands of distinct colours) spends ~20 s in its median cut
# whatever the frame count; 5 bits per channel (<= 32k colours) cut that to well under a second, and
# paletteuse still maps the full-precision pixels (with dithering) onto the palette.
_PALETTEGEN = "lutrgb=r='bitand(val,248)':g='bitand(val,248)':b='bitand(val,248)',palettegen"


@dataclass(frozen=True)
class TimelapseResult:
    """What :func:`render_timelapse` wrote.

    ``width`` x ``height``: the frames rendered at ``size`` (the MP4's and ``preview``'s); ``preview`` is the
    last rendered frame, for a UI (e.g. Dagster metadata). ``skipped``: undecodable frames left out.
    """

    mp4_path: Path | None
    gif_path: Path | None
    frame_count: int
    skipped: int
    duration_s: float
    fps: float
    width: int
    height: int
    gif_width: int | None
    gif_height: int | None
    preview: Image.Image


def list_frames(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-XXXXXXXX.png`` in ``directory``, by step; anything else is ignored."""
    found = []
    for path in Path(directory).iterdir():
        m = _FRAME_RE.fullmatch(path.name)
        if m and path.is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def subsample(frames: Frames, count: int) -> list[tuple[int, Path]]:
    """``count`` frames evenly spread over ``frames``, first and last always kept (all when fewer)."""
    n = len(frames)
    if count >= n:
        return list(frames)
    if count < 2:
        raise ValueError(f"count must be >= 2 to keep the first and the last frame, got {count}")
    return [frames[round(i * (n - 1) / (count - 1))] for i in range(count)]


def scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Size of a ``width`` x ``height`` frame scaled so that its longer side is ``size`` (aspect kept)."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def padded_size(width: int, height: int, size: int) -> tuple[int, int]:
    """:func:`scaled_size` padded up to even sides: the size of the rendered (H.264-compatible) frame."""
    w, h = scaled_size(width, height, size)
    return w + w % 2, h + h % 2


@functools.lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow >= 10.1 takes a size here when built with FreeType, else it returns the fixed bitmap font.
    return ImageFont.load_default(size=px)


def _render(image: Image.Image, size: int, step: int | None) -> Image.Image:
    """Scale ``image`` nearest-neighbour to longer side ``size``, pad to even sides, draw the step label."""
    scaled = image.resize(scaled_size(image.width, image.height, size), Image.Resampling.NEAREST)
    padded = padded_size(image.width, image.height, size)
    if scaled.size != padded:
        canvas = Image.new("RGB", padded)
        canvas.paste(scaled, (0, 0))
        scaled = canvas
    if step is not None:
        draw = ImageDraw.Draw(scaled)
        font = _font(max(8, scaled.height // 24))
        text = f"step {step:,}"
        margin = max(1, scaled.height // 128)
        _, _, right, bottom = draw.textbbox((2 * margin, 2 * margin), text, font=font)
        draw.rectangle((0, 0, right + 2 * margin, bottom + 2 * margin), fill=(0, 0, 0))
        draw.text((2 * margin, 2 * margin), text, font=font, fill=(255, 255, 255))
    return scaled


def _decode(path: Path) -> Image.Image:
    """Fully decode one frame to RGB (``load`` forces a truncated file to fail here, not in ffmpeg)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def _decoded(frames: Frames) -> Iterator[tuple[int, Image.Image] | None]:
    """Yield ``(step, image)`` one at a time, ``None`` for a frame that cannot be decoded (logged)."""
    for step, path in frames:
        try:
            yield step, _decode(path)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            log.warning("skipping undecodable frame %s: %s", path, e)
            yield None


def _temp_path(target: Path, temps: list[Path]) -> Path:
    """A hidden ``.<name>.*.tmp`` next to ``target`` (ignored by LocalStorage.list), recorded for cleanup."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, path = temp_file_beside(target)  # the umask's mode, like any file a user writes (mkstemp: 0600)
    os.close(fd)
    temps.append(path)
    return path


def _writer(path: Path, size: tuple[int, int], fps: float, codec: str, pix_fmt: str, params: list[str]) -> Generator:
    """A started ``imageio_ffmpeg.write_frames`` generator taking raw RGB frames of ``size``."""
    writer = imageio_ffmpeg.write_frames(
        str(path),
        size,
        fps=fps,
        codec=codec,
        pix_fmt_out=pix_fmt,
        quality=None,
        macro_block_size=1,  # sizes are already even; never let imageio rescale
        ffmpeg_log_level="error",
        output_params=params,
    )
    writer.send(None)
    return writer


def _ffmpeg(*args: str) -> None:
    """Run the bundled ffmpeg; raise with its stderr on failure."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-v", "error", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")


def _check_written(path: Path, what: str) -> None:
    # write_frames does not report ffmpeg's exit status; an empty output is how a failed encode shows.
    if path.stat().st_size == 0:
        raise RuntimeError(f"ffmpeg wrote an empty {what} ({path})")


def render_timelapse(
    frames: Frames,
    *,
    mp4_path: Path | None,
    gif_path: Path | None,
    size: int = 512,
    fps: float = 10,
    max_seconds: float | None = None,
    label: bool = True,
    gif_size: int = 256,
    crf: int = 20,
    preset: str = "veryfast",
) -> TimelapseResult:
    """Render ``frames`` (``(step, path)``, in order, e.g. from :func:`list_frames`) to an MP4 and/or a GIF.

    ``size``/``gif_size``: longer side of the MP4/GIF frames (nearest-neighbour). ``max_seconds``: when
    ``len(frames) / fps`` would be longer, evenly subsample to ``floor(max_seconds * fps)`` frames (at
    least 2: the first and the last are always kept). ``crf``/``preset``: libx264 quality and speed.
    Raises ``ValueError`` for no frames, or when none can be decoded.
    """
    if mp4_path is None and gif_path is None:
        raise ValueError("nothing to render: give mp4_path and/or gif_path")
    if not frames:
        raise ValueError("no frames to render")
    if fps <= 0 or size < 2 or gif_size < 2:
        raise ValueError(f"fps must be > 0 and sizes >= 2, got fps={fps}, size={size}, gif_size={gif_size}")
    if max_seconds is not None and len(frames) / fps > max_seconds:
        frames = subsample(frames, max(2, math.floor(max_seconds * fps)))

    temps: list[Path] = []
    try:
        with contextlib.ExitStack() as stack:
            decoded = _decoded(frames)
            skipped = 0
            for first in decoded:
                if first is not None:
                    break
                skipped += 1
            else:
                raise ValueError(f"none of the {len(frames)} frames could be decoded")
            base_size = first[1].size
            width, height = padded_size(*base_size, size)
            gif_width, gif_height = padded_size(*base_size, gif_size)
            writers = []
            if mp4_path is not None:
                mp4_tmp = _temp_path(Path(mp4_path), temps)
                params = ["-preset", preset, "-crf", str(crf), "-movflags", "+faststart", "-f", "mp4"]
                writers.append((size, _writer(mp4_tmp, (width, height), fps, "libx264", "yuv420p", params)))
            if gif_path is not None:
                inter_tmp = _temp_path(Path(gif_path), temps)
                writers.append(
                    (gif_size, _writer(inter_tmp, (gif_width, gif_height), fps, "ffv1", "bgr0", ["-f", "nut"]))
                )
            for _, writer in writers:
                stack.callback(writer.close)

            count = 0
            for item in itertools.chain([first], decoded):
                if item is None:
                    skipped += 1
                    continue
                step, image = item
                if image.size != base_size:
                    image = image.resize(base_size, Image.Resampling.NEAREST)
                for side, writer in writers:
                    writer.send(_render(image, side, step if label else None).tobytes())
                last = step, image
                count += 1
        # Leaving the stack closed the writers, i.e. waited for ffmpeg to finish the files.
        if mp4_path is not None:
            _check_written(mp4_tmp, "MP4")
        if gif_path is not None:
            _check_written(inter_tmp, "GIF intermediate")
            palette_tmp = _temp_path(Path(gif_path), temps)
            gif_tmp = _temp_path(Path(gif_path), temps)
            _ffmpeg("-f", "nut", "-i", str(inter_tmp), "-vf", _PALETTEGEN, "-f", "image2", "-c:v", "png",
                    "-frames:v", "1", "-update", "1", str(palette_tmp))  # fmt: skip
            _ffmpeg("-f", "nut", "-i", str(inter_tmp), "-f", "png_pipe", "-i", str(palette_tmp),
                    "-lavfi", "paletteuse", "-loop", "0", "-f", "gif", str(gif_tmp))  # fmt: skip
            _check_written(gif_tmp, "GIF")
        if mp4_path is not None:
            os.replace(mp4_tmp, mp4_path)
        if gif_path is not None:
            os.replace(gif_tmp, gif_path)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    return TimelapseResult(
        mp4_path=None if mp4_path is None else Path(mp4_path),
        gif_path=None if gif_path is None else Path(gif_path),
        frame_count=count,
        skipped=skipped,
        duration_s=count / fps,
        fps=float(fps),
        width=width,
        height=height,
        gif_width=gif_width if gif_path is not None else None,
        gif_height=gif_height if gif_path is not None else None,
        preview=_render(last[1], size, last[0] if label else None),
    )


@dataclass(frozen=True)
class ClipResult:
    """What :func:`render_clip` wrote: ``frame_count`` frames of ``width`` x ``height`` at ``fps``."""

    mp4_path: Path
    frame_count: int
    fps: float
    width: int
    height: int


def render_clip(
    images: Iterable[Image.Image],
    mp4_path: Path,
    *,
    size: int = 512,
    fps: float = 24,
    crf: int = 20,
    preset: str = "veryfast",
) -> ClipResult:
    """Encode ``images`` (equal sizes, consumed one at a time) as an H.264 MP4 like the time-lapse's.

    Scaled nearest-neighbour to longer side ``size`` and padded to even sides; written to a temp file
    renamed into place, so a failure leaves any previous clip untouched. Raises ``ValueError`` for no
    images or images of differing sizes.
    """
    if fps <= 0 or size < 2:
        raise ValueError(f"fps must be > 0 and size >= 2, got fps={fps}, size={size}")
    stream = iter(images)
    first = next(stream, None)
    if first is None:
        raise ValueError("no images to encode")
    width, height = padded_size(*first.size, size)
    temps: list[Path] = []
    try:
        tmp = _temp_path(Path(mp4_path), temps)
        params = ["-preset", preset, "-crf", str(crf), "-movflags", "+faststart", "-f", "mp4"]
        writer = _writer(tmp, (width, height), fps, "libx264", "yuv420p", params)
        count = 0
        try:
            for image in itertools.chain([first], stream):
                if image.size != first.size:
                    raise ValueError(f"image {count} is {image.size}, the first was {first.size}")
                writer.send(_render(image.convert("RGB"), size, None).tobytes())
                count += 1
        finally:
            writer.close()  # waits for ffmpeg to finish the file
        _check_written(tmp, "MP4")
        os.replace(tmp, mp4_path)
    finally:
        for path in temps:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return ClipResult(mp4_path=Path(mp4_path), frame_count=count, fps=float(fps), width=width, height=height)
