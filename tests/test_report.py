"""The evaluation report: its numbers and warnings, and the page itself in Debian's headless chromium.

The page is built from real parts (progress grids of ``make_grid``, an H.264 time-lapse of
``render_timelapse``, a matplotlib plot) and opened from a ``file://`` URL; the screenshots are kept in
``tests/artifacts/``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib import pyplot as plt
from PIL import Image

from ganmodels.evaluate import memorization_grid
from ganmodels.frames import frame_path, make_grid, save_frame
from ganmodels.inception import WEIGHTS_SHA256
from ganmodels.report import (
    MEANINGFUL_IMAGES,
    ReportInputs,
    copies_clearly_more,
    render_report,
    report_warnings,
    scores_figure,
    scores_plot_png,
    summary_line,
)
from ganmodels.timelapse import TimelapseResult, render_timelapse
from tests.chromium import chromium_binary

ARTIFACTS = Path(os.environ.get("PYTEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
STEPS = [0, 100, 200]
SKIPPED = "no FID Inception weights (set GAN_FID_WEIGHTS to weights-inception-2015-12-05-6726825d.pth)"


def score_rows(num_samples: int = 256, num_real: int = 14, per_class: bool = True) -> list[dict[str, Any]]:
    """Rows shaped like ``SnapshotScore.to_dict()``: FID falling from step 0, a KID that ends below zero,
    precision and recall rising, the sample diversity rising towards the real images'."""
    rows = []
    for i, step in enumerate(STEPS):
        fid = 400.0 / (1 + 9 * i)
        rows.append(
            {
                "step": step,
                "snapshot_sha256": f"{i:064x}",
                "fid": fid,
                "kid": 0.3 / (1 + 20 * i) - 0.005,
                "kid_std": 0.01,
                "num_samples": num_samples,
                "num_real": num_real,
                "kid_subset_size": min(num_samples, num_real),
                "classes": ["cat", "dog"],
                "per_class": {"cat": {"fid": fid * 1.1}, "dog": {"fid": fid * 1.3}} if per_class else {},
                "diversity": 0.3 + 0.15 * i,
                "real_diversity": 0.9,
                "precision": 0.2 + 0.3 * i,
                "recall": 0.05 + 0.2 * i,
            }
        )
    return rows


def skipped_rows() -> list[dict[str, Any]]:
    """Rows scored without FID weights: no FID, KID or precision/recall, but the diversity (needs no weights)."""
    none = {"fid": None, "kid": None, "kid_std": None, "precision": None, "recall": None}
    return [{**r, **none, "per_class": {}} for r in score_rows()]


def memorization(copy_rate: float = 0.011, holdout_copy_rate: float = 0.014) -> dict[str, Any]:
    """Shaped like ``MemorizationCheck.to_dict()``: by default samples copy no more than holdout images do."""
    rows = [{"sample": i, "copy_ratio": 0.8 + 0.05 * i, "distances": [9.0 + i, 11.0, 12.5]} for i in range(4)]
    return {
        "step": STEPS[-1],
        "snapshot_sha256": "f" * 64,
        "classes": ["cat", "dog"],
        "copy_rate": copy_rate,
        "holdout_copy_rate": holdout_copy_rate,
        "num_samples": 256,
        "num_train": 2000,
        "num_holdout": 14,
        "rows": rows,
    }


def memorization_png() -> bytes:
    """A 4-row grid of 16 px images: each sample, then 3 training images."""
    gen = torch.Generator().manual_seed(1)
    samples = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=gen)
    neighbours = torch.randint(0, 256, (4, 3, 3, 16, 16), dtype=torch.uint8, generator=gen)
    buf = io.BytesIO()
    memorization_grid(samples, neighbours).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, TimelapseResult]:
    """The final progress grid (PNG bytes) and a real H.264 time-lapse of the progress grids."""
    frames_dir = tmp_path_factory.mktemp("frames")
    gen = torch.Generator().manual_seed(0)
    frames = []
    for i, step in enumerate(range(0, 300, 25)):
        images = torch.rand(16, 3, 16, 16, generator=gen) * 2 - 1
        images[:, i % 3] = images[:, i % 3] * 0.3 + 0.7  # the colour drifts, so the frames differ visibly
        frames.append((step, save_frame(make_grid(images, nrow=4), frame_path(frames_dir, step))))
    result = render_timelapse(frames, mp4_path=frames_dir / "timelapse.mp4", gif_path=None, size=256, fps=8)
    return frames[-1][1].read_bytes(), result


def make_inputs(media: tuple[bytes, TimelapseResult], **changes: Any) -> ReportInputs:
    grid, timelapse = media
    base = ReportInputs(
        experiment="cats-vs-dogs-32px",
        scores=score_rows(),
        fid_weights_sha256="0" * 64,  # the tests' random weights: not the published ones
        samples_per_s=45.2,
        samples_png=grid,
        timelapse_mp4=timelapse.mp4_path.read_bytes(),
        dataset_version="3f2a9c0d1e4b5a67",
        counts_by_class={"train": {"cat": 40, "dog": 35}, "holdout": {"cat": 8, "dog": 6}},
        counts_by_source={"train": {"openverse": 50, "tiles": 25}, "holdout": {"openverse": 9, "tiles": 5}},
        config={"net": {"arch": "dcgan", "resolution": 32, "channels": (64, 128)}, "steps": 200, "lr": 2e-4},
        lineage={
            "checkpoint": "file:///runs/cats-vs-dogs-32px/model.pt",
            "dataset_index": "s3://gan-data/datasets/versions/3f2a9c0d1e4b5a67/index.json",
            "dataset_samples": "https://storage.example/datasets/versions/3f2a9c0d1e4b5a67/samples.parquet",
        },
        memorization=memorization(),
        memorization_png=memorization_png(),
    )
    return dataclasses.replace(base, **changes)


# ---- numbers and warnings --------------------------------------------------------------------------------------


def test_fid_on_a_log_axis_and_kid_on_a_linear_one() -> None:
    fig = scores_figure(score_rows(), "run")
    assert fig is not None
    try:
        fid_ax, kid_ax, pr_ax, diversity_ax = fig.axes
        assert fid_ax.get_yscale() == "log"
        assert kid_ax.get_yscale() == "linear"
        assert [line.get_label() for line in pr_ax.get_lines()] == ["precision", "recall"]
        assert pr_ax.get_ylim() == (-0.02, 1.02)  # shares: the whole range, so 0.2 never looks like 1
        assert [line.get_label() for line in diversity_ax.get_lines()] == ["generated", "real holdout"]
        assert fid_ax.get_ylabel() == "FID (256 generated vs 14 real images)"
        styles = {line.get_label(): line.get_linestyle() for line in fid_ax.get_lines()}
        assert styles == {"FID": "-", "FID cat": "--", "FID dog": "--"}
        low, high = kid_ax.get_ylim()
        assert low < 0 < high  # a negative KID is drawn, not clipped
    finally:
        plt.close(fig)


def test_nothing_to_plot_without_finite_scores() -> None:
    assert scores_plot_png([], "run") is None
    assert scores_plot_png([{**r, "diversity": None} for r in skipped_rows()], "run") is None
    nan = [{**r, "fid": math.nan, "kid": math.inf, "diversity": math.nan, "precision": math.nan} for r in score_rows()]
    assert scores_plot_png(nan, "run") is None
    fig = scores_figure(skipped_rows(), "run")  # FID skipped: the diversity is still plotted, alone
    assert fig is not None
    try:
        assert [ax.get_title() for ax in fig.axes] == ["sample diversity (far below real: mode collapse)"]
    finally:
        plt.close(fig)
    png = scores_plot_png(score_rows(), "run")
    assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n")


def test_summary_and_warnings_say_what_the_numbers_are(media: tuple[bytes, TimelapseResult]) -> None:
    realistic = make_inputs(media)
    assert summary_line(realistic) == (
        "FID 21.1 (256 generated vs 14 real) at step 200 (unofficial Inception weights: not comparable), 45 samples/s"
    )
    unofficial, few = report_warnings(realistic)
    assert "not comparable" in unofficial
    assert "256 generated with 14 real images" in few

    clean = make_inputs(media, scores=score_rows(4096, MEANINGFUL_IMAGES), fid_weights_sha256=WEIGHTS_SHA256)
    assert summary_line(clean) == f"FID 21.1 (4096 generated vs {MEANINGFUL_IMAGES} real) at step 200, 45 samples/s"
    assert report_warnings(clean) == []

    skipped = make_inputs(media, scores=skipped_rows(), fid_skipped=SKIPPED, fid_weights_sha256=None)
    assert summary_line(skipped) == (
        f"FID skipped: {SKIPPED}; sample diversity 0.600 (real 0.900) at step 200, 45 samples/s"
    )
    (warning,) = report_warnings(skipped)
    assert SKIPPED in warning
    unexplained = make_inputs(media, scores=[{**r, "diversity": None} for r in skipped_rows()], samples_per_s=None)
    assert summary_line(unexplained) == "FID skipped: no FID for the final step"


def test_a_copy_rate_clearly_above_the_holdouts_is_a_warning(media: tuple[bytes, TimelapseResult]) -> None:
    assert not copies_clearly_more(memorization())
    assert not copies_clearly_more(memorization(0.2, 0.0))  # 14 holdout images: 0 of them is no proof
    assert copies_clearly_more({**memorization(0.2, 0.05), "num_holdout": 1000})
    assert not copies_clearly_more({**memorization(0.06, 0.05), "num_holdout": 1000})  # within chance
    clean = make_inputs(media, scores=score_rows(4096, 4096), fid_weights_sha256=WEIGHTS_SHA256)
    assert report_warnings(clean) == []
    copying = dataclasses.replace(clean, memorization={**memorization(0.3, 0.02), "num_holdout": 500})
    (warning,) = report_warnings(copying)
    assert warning.startswith("Possible memorisation: 30.0% of the generated samples at step 200") and "2.0%" in warning


def test_the_page_is_self_contained_and_escapes_its_inputs(media: tuple[bytes, TimelapseResult]) -> None:
    page = render_report(
        make_inputs(
            media,
            experiment="<b>bold</b>",
            lineage={"<i>name</i>": "<script>window.pwned = 1</script>", "js": "javascript:alert(1)"},
        )
    )
    assert "<script" not in page and "<b>bold" not in page and "<i>" not in page
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page
    assert 'href="javascript' not in page
    assert 'src="http' not in page and "url(" not in page  # nothing loaded from elsewhere


# ---- the page in a browser ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = chromium_binary()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def open_report(browser: Any, inputs: ReportInputs, path: Path) -> tuple[Any, list[str]]:
    """The report written to ``path`` and loaded from its file URL, and the page's console errors (where CSP
    violations and failed loads show up)."""
    path.write_text(render_report(inputs), encoding="utf-8")
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(path.as_uri(), wait_until="load")
    return page, errors


def wait_for(page: Any, expression: str, timeout: float = 20.0) -> None:
    """Poll ``expression`` until true (``page.wait_for_function`` evals its predicate, which the page's CSP blocks)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            pytest.fail(f"still false after {timeout} s: {expression}")
        time.sleep(0.05)


def video_state(page: Any) -> dict[str, Any]:
    """Metadata of the time-lapse once loaded, and whether it plays (its time advances: frames decode)."""
    wait_for(page, "document.getElementById('timelapse').readyState >= 1")
    meta = page.evaluate(
        "() => { const v = document.getElementById('timelapse');"
        " return {duration: v.duration, width: v.videoWidth, height: v.videoHeight, error: v.error && v.error.code} }"
    )
    page.evaluate("document.getElementById('timelapse').play()")
    wait_for(page, "document.getElementById('timelapse').currentTime > 0.3")
    page.evaluate("() => { const v = document.getElementById('timelapse'); v.pause(); v.currentTime = 0 }")
    return meta


@pytest.mark.parametrize("case", ["realistic", "clean", "fid_skipped"])
def test_report_renders_in_headless_chromium(
    browser: Any, media: tuple[bytes, TimelapseResult], tmp_path: Path, case: str
) -> None:
    inputs = {
        "realistic": make_inputs(media),
        "clean": make_inputs(media, scores=score_rows(4096, 4096), fid_weights_sha256=WEIGHTS_SHA256),
        "fid_skipped": make_inputs(
            media,
            scores=skipped_rows(),
            fid_skipped=SKIPPED,
            fid_weights_sha256=None,
            memorization=None,
            memorization_png=None,
            memorization_skipped=f"skipped: {SKIPPED}",
        ),
    }[case]
    page, errors = open_report(browser, inputs, tmp_path / "report.html")
    try:
        assert page.locator("h1").inner_text() == inputs.experiment
        assert page.locator("#summary").inner_text() == summary_line(inputs)
        rows = page.locator("#scores-table tbody tr")
        assert rows.count() == len(STEPS)
        assert [rows.nth(i).locator("td").first.inner_text() for i in range(len(STEPS))] == [str(s) for s in STEPS]

        warnings = page.locator("#warnings li")
        assert warnings.all_inner_texts() == report_warnings(inputs)
        if case == "fid_skipped":
            assert page.locator("#warnings").is_visible()
            assert SKIPPED in warnings.first.inner_text()
            # FID, KID, precision and recall: no number
            assert page.locator("#scores-table td.skipped").count() == 4 * len(STEPS)
        else:
            assert (page.locator("#warnings").count() == 0) == (case == "clean")
        assert rows.last.locator("td").last.inner_text() == "0.600 (real 0.900)"  # the diversity, also unskipped
        plot = page.evaluate(
            "() => { const i = document.getElementById('scores-plot'); return [i.complete, i.naturalWidth] }"
        )
        assert plot[0] and plot[1] > 0

        grid = page.evaluate("() => { const i = document.getElementById('samples'); return [i.complete, i.width] }")
        assert grid[0] and grid[1] >= 384  # the 74 px grid, scaled up
        if inputs.memorization is not None:
            memo = page.evaluate(
                "() => { const i = document.getElementById('memorization-grid');"
                " return [i.complete, i.naturalWidth, i.width] }"
            )
            assert memo[0] and memo[1] == 4 * 18 + 2 and memo[2] >= 384  # 4 columns of 16 px, scaled up
            assert page.locator("#copy-rate").inner_text().startswith("Copy rate 1.1% of 256 samples at step 200")
        else:
            assert page.get_by_text("Memorisation check skipped: no FID Inception weights").is_visible()

        timelapse = media[1]
        meta = video_state(page)
        assert meta["error"] is None
        assert math.isfinite(meta["duration"]) and meta["duration"] == pytest.approx(timelapse.duration_s, abs=0.2)
        assert (meta["width"], meta["height"]) == (timelapse.width, timelapse.height)

        assert page.locator("#lineage a").all_inner_texts() == [
            inputs.lineage["checkpoint"],
            inputs.lineage["dataset_samples"],
        ]
        assert errors == []

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / ("report.png" if case == "realistic" else f"report-{case.replace('_', '-')}.png")
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
    with Image.open(io.BytesIO(shot.read_bytes())) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"


def test_escaped_lineage_shows_as_text_and_runs_nothing(
    browser: Any, media: tuple[bytes, TimelapseResult], tmp_path: Path
) -> None:
    hostile = {
        "<img src=x onerror=window.pwned=1>": "<script>window.pwned = 1</script>",
        "quote": 'file:///tmp/x" onmouseover="window.pwned=1',
        "js": "javascript:window.pwned=1",
    }
    inputs = make_inputs(media, experiment="<script>window.pwned=1</script>", lineage=hostile)
    page, errors = open_report(browser, inputs, tmp_path / "report.html")
    try:
        assert page.locator("h1").inner_text() == "<script>window.pwned=1</script>"
        assert page.locator("#lineage th").all_inner_texts() == list(hostile)
        assert page.locator("#lineage td").all_inner_texts() == list(hostile.values())
        assert page.evaluate("() => [document.scripts.length, typeof window.pwned]") == [0, "undefined"]
        assert page.locator("#lineage a").count() == 1  # the file:// URI, quote and all, and nothing else
        assert page.locator("#lineage a").get_attribute("href") == hostile["quote"]
        assert page.locator("#lineage a").get_attribute("onmouseover") is None
        assert errors == []
    finally:
        page.close()
