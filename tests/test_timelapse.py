"""The time-lapse renderer, end to end with the ffmpeg that imageio-ffmpeg ships, on frames made here."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from ganmodels import timelapse
from ganmodels.frames import frame_path
from ganmodels.timelapse import list_frames, padded_size, render_timelapse, subsample

SIDE = 34  # like a tiny 32 px grid with padding; 512 / 34 is not an integer, so blocks are 15 or 16 px
BLUE = (0, 40, 220)


def frame_image(i: int, side: int = SIDE) -> Image.Image:
    """A checkerboard of one fixed colour and one that changes with ``i``: every source pixel is a block."""
    arr = np.empty((side, side, 3), np.uint8)
    arr[:] = BLUE
    yy, xx = np.mgrid[:side, :side]
    arr[(yy + xx) % 2 == 0] = (min(255, 40 + 7 * i), 200, 40)
    return Image.fromarray(arr)


def make_frames(directory: Path, n: int, *, side: int = SIDE, same: bool = False) -> list[tuple[int, Path]]:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        frame_image(0 if same else i, side).save(frame_path(directory, 250 * i))
    return list_frames(directory)


def read_video(path: Path) -> tuple[dict, list[np.ndarray]]:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return meta, [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]


def gif_frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as im:
        out = []
        for k in range(im.n_frames):
            im.seek(k)
            out.append(np.asarray(im.convert("RGB")))
        return out


def block(arr: np.ndarray, sx: int, sy: int, out_side: int, inset: int = 0) -> np.ndarray:
    """The output pixels that nearest-neighbour scaling ``SIDE`` -> ``out_side`` maps to source pixel (sx, sy)."""
    idx = np.floor((np.arange(out_side) + 0.5) * SIDE / out_side).astype(int)
    xs, ys = np.flatnonzero(idx == sx), np.flatnonzero(idx == sy)
    return arr[ys[0] + inset : ys[-1] + 1 - inset, xs[0] + inset : xs[-1] + 1 - inset]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, timelapse.TimelapseResult]:
    root = tmp_path_factory.mktemp("timelapse")
    frames = make_frames(root / "frames", 30)
    result = render_timelapse(frames, mp4_path=root / "out" / "t.mp4", gif_path=root / "out" / "t.gif", fps=10)
    return root, result


def test_list_frames_sorts_by_step_and_ignores_other_files(tmp_path: Path) -> None:
    for step in (1000, 250, 5):
        frame_image(0).save(frame_path(tmp_path, step))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "step-00000300.jpg").write_bytes(b"x")
    (tmp_path / ".step-00000500.png.abc123.tmp").write_bytes(b"x")  # a save_frame in flight
    (tmp_path / "step-00000600.png").mkdir()
    assert list_frames(tmp_path) == [(s, frame_path(tmp_path, s)) for s in (5, 250, 1000)]


def test_mp4_is_browser_playable_h264(rendered: tuple[Path, timelapse.TimelapseResult]) -> None:
    root, result = rendered
    assert (result.frame_count, result.skipped, result.fps, result.duration_s) == (30, 0, 10.0, 3.0)
    assert (result.width, result.height, result.gif_width, result.gif_height) == (512, 512, 256, 256)
    meta, frames = read_video(root / "out" / "t.mp4")
    assert meta["codec"] == "h264"
    assert meta["pix_fmt"].startswith("yuv420p")
    assert meta["fps"] == 10.0
    assert meta["size"] == (512, 512)
    assert meta["duration"] == pytest.approx(3.0, abs=0.05)
    assert len(frames) == result.frame_count
    head = (root / "out" / "t.mp4").read_bytes()[:4096]
    assert head.find(b"moov") != -1 and head.find(b"moov") < max(head.find(b"mdat"), 4096)  # +faststart


def test_gif_loops_with_its_own_size(rendered: tuple[Path, timelapse.TimelapseResult]) -> None:
    root, _ = rendered
    with Image.open(root / "out" / "t.gif") as im:
        assert (im.n_frames, im.size, im.info["loop"], im.info["duration"]) == (30, (256, 256), 0, 100)
    assert sorted(p.name for p in (root / "out").iterdir()) == ["t.gif", "t.mp4"]  # no temp files left


def test_scaling_is_nearest_neighbour(rendered: tuple[Path, timelapse.TimelapseResult]) -> None:
    root, result = rendered
    last = frame_image(29)
    # GIF: lossless up to the palette, and the frames hold few colours, so blocks are exact.
    gif = gif_frames(root / "out" / "t.gif")[-1]
    for sx, sy in [(20, 20), (21, 20), (30, 33)]:
        b = block(gif, sx, sy, 256)
        assert (b == b[0, 0]).all()
        assert np.abs(b[0, 0].astype(int) - last.getpixel((sx, sy))).max() <= 8
    # MP4: lossy, so the inside of a block is close to the source colour and nearly flat.
    _, frames = read_video(root / "out" / "t.mp4")
    for sx, sy in [(20, 20), (21, 20)]:
        b = block(frames[-1], sx, sy, 512, inset=3).astype(int)
        assert np.abs(b - last.getpixel((sx, sy))).max() <= 40
        assert b.std(axis=(0, 1)).max() < 6
    # The preview is the last frame as rendered, exactly.
    assert (block(np.asarray(result.preview), 20, 20, 512) == last.getpixel((20, 20))).all()


def test_step_label_changes_the_corner_only(tmp_path: Path) -> None:
    frames = make_frames(tmp_path / "frames", 3, same=True)  # identical images, steps 0, 250, 500
    labelled = render_timelapse(frames, mp4_path=None, gif_path=tmp_path / "a.gif", gif_size=128)
    plain = render_timelapse(frames, mp4_path=None, gif_path=tmp_path / "b.gif", gif_size=128, label=False)
    a, b = gif_frames(tmp_path / "a.gif"), gif_frames(tmp_path / "b.gif")
    corner, rest = np.s_[:10, :40], np.s_[40:, 40:]
    assert not np.array_equal(a[0][corner], a[1][corner])
    assert np.array_equal(a[0][rest], a[1][rest])
    assert np.array_equal(b[0], b[1])
    assert labelled.preview.size == plain.preview.size == (512, 512)
    assert not np.array_equal(np.asarray(labelled.preview)[:20, :60], np.asarray(plain.preview)[:20, :60])


def test_odd_aspect_is_padded_to_even_not_stretched(tmp_path: Path) -> None:
    frame_path(tmp_path, 0).parent.mkdir(parents=True, exist_ok=True)
    for step in (0, 1):
        Image.new("RGB", (66, 35), (200, 10, 10)).save(frame_path(tmp_path, step))
    assert padded_size(66, 35, 100) == (100, 54)  # 100 x 53.03 -> 100 x 53 scaled + 1 padding row
    result = render_timelapse(list_frames(tmp_path), mp4_path=tmp_path / "o.mp4", gif_path=None, size=100)
    assert (result.width, result.height) == (100, 54)
    assert read_video(tmp_path / "o.mp4")[0]["size"] == (100, 54)
    preview = np.asarray(result.preview)
    assert preview[-2, 50].tolist() == [200, 10, 10]
    assert preview[-1, 50].tolist() == [0, 0, 0]  # the padding row, not a stretched image


def test_max_seconds_subsamples_keeping_first_and_last(tmp_path: Path) -> None:
    frames = make_frames(tmp_path / "frames", 30)
    picked = subsample(frames, 12)
    assert len(picked) == 12 and picked[0] == frames[0] and picked[-1] == frames[-1]
    assert [s for s, _ in picked] == sorted({s for s, _ in picked})
    assert subsample(frames, 100) == frames
    out = {"mp4_path": tmp_path / "o.mp4", "gif_path": tmp_path / "o.gif"}
    result = render_timelapse(frames, **out, size=64, gif_size=136, fps=10, max_seconds=1.2)
    assert (result.frame_count, result.duration_s) == (12, 1.2)
    assert len(read_video(tmp_path / "o.mp4")[1]) == 12
    gif = gif_frames(tmp_path / "o.gif")
    assert len(gif) == 12
    renders = [np.asarray(timelapse._render(frame_image(i), 136, 250 * i)).astype(int) for i in range(30)]
    for got, i in [(gif[0], 0), (gif[-1], 29)]:  # the first and the last step are there
        errors = [np.abs(got.astype(int) - r).mean() for r in renders]
        assert int(np.argmin(errors)) == i
    longer = render_timelapse(frames, mp4_path=tmp_path / "p.mp4", gif_path=None, size=64, max_seconds=5)
    assert longer.frame_count == 30


def test_truncated_frame_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frames = make_frames(tmp_path / "frames", 6)
    bad = frames[2][1]
    bad.write_bytes(bad.read_bytes()[:60])
    with caplog.at_level(logging.WARNING, logger="ganmodels.timelapse"):
        result = render_timelapse(frames, mp4_path=tmp_path / "o.mp4", gif_path=tmp_path / "o.gif", size=64)
    assert (result.frame_count, result.skipped) == (5, 1)
    assert str(bad) in caplog.text
    assert len(read_video(tmp_path / "o.mp4")[1]) == 5
    with Image.open(tmp_path / "o.gif") as im:
        assert im.n_frames == 5


def test_first_frame_undecodable_and_differing_sizes(tmp_path: Path) -> None:
    frames = make_frames(tmp_path / "frames", 4)
    frames[0][1].write_bytes(b"not a png")
    frame_image(3, side=50).save(frames[3][1])  # resized to the first decodable frame's 34 x 34
    result = render_timelapse(frames, mp4_path=tmp_path / "o.mp4", gif_path=None, size=68)
    assert (result.frame_count, result.skipped, result.width, result.height) == (3, 1, 68, 68)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"):
        render_timelapse(list_frames(tmp_path), mp4_path=tmp_path / "o.mp4", gif_path=None)
    with pytest.raises(ValueError, match="mp4_path and/or gif_path"):
        render_timelapse(make_frames(tmp_path, 2), mp4_path=None, gif_path=None)
    for _, path in list_frames(tmp_path):
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="could be decoded"):
        render_timelapse(list_frames(tmp_path), mp4_path=tmp_path / "o.mp4", gif_path=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000000.png", "step-00000250.png"]


@pytest.mark.parametrize("where", ["decode", "gif"])
def test_failed_render_leaves_old_outputs_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    frames = make_frames(tmp_path / "frames", 8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "t.mp4").write_bytes(b"old mp4")
    (out / "t.gif").write_bytes(b"old gif")
    if where == "decode":
        real, calls = timelapse._decode, []

        def failing(path: Path) -> Image.Image:
            calls.append(path)
            if len(calls) == 5:
                raise RuntimeError("boom")
            return real(path)

        monkeypatch.setattr(timelapse, "_decode", failing)
    else:  # everything encoded, the GIF's palette pass fails
        monkeypatch.setattr(timelapse, "_ffmpeg", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        render_timelapse(frames, mp4_path=out / "t.mp4", gif_path=out / "t.gif", size=64)
    assert sorted(p.name for p in out.iterdir()) == ["t.gif", "t.mp4"]
    assert (out / "t.mp4").read_bytes() == b"old mp4"
    assert (out / "t.gif").read_bytes() == b"old gif"


def test_frames_are_streamed_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At no point is more than one decoded frame waiting to be written: memory does not grow with length."""
    frames = make_frames(tmp_path / "frames", 200, side=8)
    counts = {"decoded": 0, "sent": 0, "max_in_flight": 0}
    real_decode, real_write_frames = timelapse._decode, imageio_ffmpeg.write_frames

    def counting_decode(path: Path) -> Image.Image:
        counts["decoded"] += 1
        counts["max_in_flight"] = max(counts["max_in_flight"], counts["decoded"] - counts["sent"])
        return real_decode(path)

    def counting_write_frames(*args: object, **kwargs: object) -> Generator[None, bytes | None, None]:
        inner = real_write_frames(*args, **kwargs)
        inner.send(None)
        try:
            while True:
                data = yield
                if data is not None:
                    inner.send(data)
                    counts["sent"] += 1
        finally:
            inner.close()

    monkeypatch.setattr(timelapse, "_decode", counting_decode)
    monkeypatch.setattr(imageio_ffmpeg, "write_frames", counting_write_frames)
    result = render_timelapse(frames, mp4_path=tmp_path / "o.mp4", gif_path=None, size=32, fps=50)
    assert counts["decoded"] == counts["sent"] == result.frame_count == 200
    assert counts["max_in_flight"] == 1


def test_thousands_of_tiny_frames(tmp_path: Path) -> None:
    frames = make_frames(tmp_path / "frames", 1500, side=8)
    start = time.perf_counter()
    out = {"mp4_path": tmp_path / "o.mp4", "gif_path": tmp_path / "o.gif"}
    result = render_timelapse(frames, **out, size=64, gif_size=32, fps=60)
    elapsed = time.perf_counter() - start
    assert result.frame_count == 1500
    assert result.duration_s == pytest.approx(25.0)
    assert len(read_video(tmp_path / "o.mp4")[1]) == 1500
    assert elapsed < 10, f"{elapsed:.1f} s"
