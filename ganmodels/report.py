"""The evaluation report a person reads: one self-contained HTML page per evaluated checkpoint.

Everything is inline (PNGs and the MP4 as ``data:`` URIs, CSS in a ``<style>``, no script, no external
URL), so the file can be copied, mailed or opened from object storage and still shows everything. A
Content-Security-Policy forbids scripts and remote loads as a second line behind escaping every input.

The page is honest about its numbers: an FID that was not computed is said to be skipped and why (a
warning, never a number); scores from Inception weights other than the published ones are marked as not
comparable; scores on fewer images than the Inception feature dimension carry a warning and their counts.
Precision/recall stand beside FID/KID; the memorisation check (copy rate, and a grid of the most copy-like
samples with their nearest training images) compares the samples' copy rate with the real holdout images'
and warns when the samples sit clearly closer to training images than unseen real images do.

The time-lapse is the H.264 (yuv420p, faststart) MP4 of :mod:`ganmodels.timelapse`, which Debian's
chromium, Chrome, Firefox and Safari all decode. Nothing here imports dagster.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml
from PIL import Image

from ganmodels.inception import WEIGHTS_SHA256

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "MEANINGFUL_IMAGES",
    "ReportInputs",
    "copies_clearly_more",
    "render_report",
    "report_warnings",
    "scores_figure",
    "scores_plot_png",
    "summary_line",
]

# The Inception pool features have 2048 dimensions: with fewer images their covariance is singular and FID
# is strongly biased upward and noisy (published FIDs use 50,000 generated images and the full real set).
MEANINGFUL_IMAGES = 2048

_LINK_SCHEMES = {"file", "http", "https"}
_MIN_GRID_WIDTH = 384  # small sample grids are scaled up by an integer factor (pixelated) to at least this

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d1f23; background: #fff; margin: 0; }
main { max-width: 980px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 26px; margin: 0 0 6px; word-break: break-all; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #e3e5e8; padding-bottom: 4px; }
.summary { font-size: 19px; font-weight: 600; margin: 6px 0 16px; }
.warnings { background: #fff6db; border: 1px solid #e8c662; border-left: 6px solid #d49b00;
            border-radius: 4px; padding: 10px 16px; margin: 12px 0; }
.warnings strong { display: block; margin-bottom: 4px; }
.warnings ul { margin: 0; padding-left: 20px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #e3e5e8; padding: 4px 10px; text-align: right; }
th { background: #f5f6f8; }
td:first-child, th:first-child { text-align: left; }
td.low { color: #9a5b00; font-weight: 600; }
td.skipped { color: #8a1f11; font-style: italic; }
.plot { max-width: 100%; height: auto; }
video.pixels { width: 100%; max-width: 512px; }
.pixels { image-rendering: pixelated; max-width: 100%; height: auto; background: #000; }
.counts { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.counts h3 { font-size: 14px; margin: 0 0 4px; }
pre { background: #f5f6f8; padding: 10px 12px; border-radius: 4px; overflow: auto; font-size: 13px; }
.lineage td { text-align: left; word-break: break-all; font-family: ui-monospace, monospace; font-size: 13px; }
.lineage th { text-align: left; white-space: nowrap; }
.missing { color: #6b6f76; font-style: italic; }
.caption { color: #4a4e55; font-size: 13px; margin-top: 4px; }
"""

_CSP = "default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'"


@dataclasses.dataclass(frozen=True)
class ReportInputs:
    """What one report shows; everything but ``experiment`` may be absent and is then said to be absent.

    ``scores``: rows like :meth:`ganmodels.evaluate.SnapshotScore.to_dict`, oldest step first; ``fid``,
    ``kid`` and ``kid_std`` may be None, ``diversity``/``real_diversity`` may be absent. ``fid_skipped``:
    why FID/KID were not computed (None when they were). ``fid_weights_sha256``: the Inception weights the
    scores come from (compared with the published ones). ``counts_by_class``/``counts_by_source``: split ->
    name -> images (like a dataset index's ``counts``). ``lineage``: name -> URI or path. ``notes``: further
    warnings from the caller. ``memorization``: like :meth:`ganmodels.evaluate.MemorizationCheck.to_dict`, with
    its grid ``memorization_png``; ``memorization_skipped``: why there is none.
    """

    experiment: str
    scores: Sequence[Mapping[str, Any]] = ()
    fid_skipped: str | None = None
    fid_weights_sha256: str | None = None
    samples_per_s: float | None = None
    samples_png: bytes | None = None
    timelapse_mp4: bytes | None = None
    dataset_version: str | None = None
    counts_by_class: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    counts_by_source: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    lineage: Mapping[str, str] = dataclasses.field(default_factory=dict)
    notes: Sequence[str] = ()
    memorization: Mapping[str, Any] | None = None
    memorization_png: bytes | None = None
    memorization_skipped: str | None = None


# ---- numbers -------------------------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _final(inputs: ReportInputs) -> Mapping[str, Any] | None:
    """The last step's scores when FID was computed for it, else None (FID skipped)."""
    if inputs.fid_skipped is not None or not inputs.scores or inputs.scores[-1].get("fid") is None:
        return None
    return inputs.scores[-1]


def _skip_reason(inputs: ReportInputs) -> str:
    if inputs.fid_skipped is not None:
        return inputs.fid_skipped
    return "no FID for the final step" if inputs.scores else "no scores"


def _official(inputs: ReportInputs) -> bool:
    return (inputs.fid_weights_sha256 or "").lower() == WEIGHTS_SHA256


def _diversity(row: Mapping[str, Any]) -> str:
    gen, real = row.get("diversity"), row.get("real_diversity")
    text = f"{gen:.3f}" if _finite(gen) else "n/a"
    return text + (f" (real {real:.3f})" if _finite(real) else "")


def _counts(row: Mapping[str, Any]) -> str:
    return f"{row.get('num_samples', '?')} generated vs {row.get('num_real', '?')} real"


def copies_clearly_more(memo: Mapping[str, Any]) -> bool:
    """Whether the samples' copy rate exceeds the holdout's beyond chance (two-proportion z > 3, one-sided).

    Unseen real images land in training images' nearest-neighbour balls too; only a rate clearly above
    theirs says the samples sit closer to the training images than new images would.
    """
    p1, n1, p0, n0 = memo["copy_rate"], memo["num_samples"], memo["holdout_copy_rate"], memo["num_holdout"]
    pooled = (p1 * n1 + p0 * n0) / (n1 + n0)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    return p1 > p0 and (spread == 0 or (p1 - p0) / spread > 3)


def summary_line(inputs: ReportInputs) -> str:
    """One line for the top of the report (and for logs): the final FID with its image counts, or why not."""
    last = _final(inputs)
    if last is None:
        text = f"FID skipped: {_skip_reason(inputs)}"
        if inputs.scores and inputs.scores[-1].get("diversity") is not None:
            text += f"; sample diversity {_diversity(inputs.scores[-1])} at step {inputs.scores[-1].get('step', '?')}"
    else:
        fid = last["fid"]
        text = f"FID {fid:.1f}" if _finite(fid) else f"FID not finite ({fid})"
        text += f" ({_counts(last)}) at step {last.get('step', '?')}"
        if not _official(inputs):
            text += " (unofficial Inception weights: not comparable)"
    if inputs.samples_per_s is not None:
        sps = inputs.samples_per_s
        text += f", {sps:,.0f} samples/s" if sps >= 10 else f", {sps:.2g} samples/s"
    return text


def report_warnings(inputs: ReportInputs) -> list[str]:
    """What a reader must know before trusting a number: FID skipped, unofficial weights, too few images."""
    out: list[str] = []
    last = _final(inputs)
    if last is None:
        out.append(
            f"FID and KID were skipped: {_skip_reason(inputs)}. No FID or KID is reported; the sample diversity, "
            "the samples and the time-lapse below need no Inception weights."
        )
    else:
        if not _official(inputs):
            got = inputs.fid_weights_sha256[:12] if inputs.fid_weights_sha256 else "unrecorded"
            out.append(
                f"The scores come from Inception weights {got}, not the published FID weights "
                f"(sha256 {WEIGHTS_SHA256[:12]}): they rank runs scored with the same weights but are not "
                "comparable with published FIDs or with scores from other weights."
            )
        n_gen, n_real = last.get("num_samples", 0), last.get("num_real", 0)
        if min(n_gen, n_real) < MEANINGFUL_IMAGES:
            out.append(
                f"FID/KID at step {last.get('step', '?')} compare {n_gen} generated with {n_real} real images; "
                f"with fewer than {MEANINGFUL_IMAGES} (the Inception feature dimension) FID is biased upward "
                "and noisy: compare it only with scores on the same images and counts."
            )
    memo = inputs.memorization
    if memo is not None and copies_clearly_more(memo):
        out.append(
            f"Possible memorisation: {memo['copy_rate']:.1%} of the generated samples at step {memo['step']} lie "
            f"inside a training image's nearest-neighbour ball, against {memo['holdout_copy_rate']:.1%} of the real "
            "holdout images: the samples sit closer to training images than unseen images do. Look at the "
            "memorisation grid."
        )
    out.extend(inputs.notes)
    return out


# ---- the plot ------------------------------------------------------------------------------------------------


def _plotted(scores: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    """The rows with a finite ``key`` (a positive one for FID, on a log axis)."""
    return [r for r in scores if _finite(r.get(key)) and (key != "fid" or r[key] > 0)]


def _fid_panel(ax: Axes, rows: Sequence[Mapping[str, Any]]) -> None:
    from matplotlib.ticker import LogFormatter

    ax.plot([r["step"] for r in rows], [r["fid"] for r in rows], marker="o", label="FID")
    for c in dict.fromkeys(c for r in rows for c in r.get("per_class") or {}):
        pts = [(r["step"], (r.get("per_class") or {}).get(c, {}).get("fid")) for r in rows]
        pts = [(s, v) for s, v in pts if _finite(v) and v > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), ls="--", marker=".", label=f"FID {c}")
    ax.set_yscale("log")
    # Plain numbers (40, 200, 600) rather than the default 4 x 10^1: a reader compares FIDs, not exponents.
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_ylabel(f"FID ({_counts(rows[-1])} images)")
    ax.set_title("FID (lower is better, log scale)", fontsize=10)


def _kid_panel(ax: Axes, rows: Sequence[Mapping[str, Any]]) -> None:
    steps = [r["step"] for r in rows]
    mean = [r["kid"] for r in rows]
    std = [r["kid_std"] if _finite(r.get("kid_std")) else 0.0 for r in rows]
    ax.plot(steps, mean, marker="o", color="tab:purple", label="KID")
    low = [m - s for m, s in zip(mean, std, strict=True)]
    high = [m + s for m, s in zip(mean, std, strict=True)]
    ax.fill_between(steps, low, high, color="tab:purple", alpha=0.2, label="± std over subsets")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel(f"KID ({_counts(rows[-1])} images)")
    ax.set_title("KID (lower is better)", fontsize=10)


def _pr_panel(ax: Axes, rows: Sequence[Mapping[str, Any]]) -> None:
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["precision"] for r in rows], marker="o", color="tab:red", label="precision")
    ax.plot(steps, [r["recall"] for r in rows], marker="s", color="tab:blue", label="recall")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(f"share ({_counts(rows[-1])} images)")
    ax.set_title("precision (realism) and recall (coverage), k = 3", fontsize=10)


def _diversity_panel(ax: Axes, rows: Sequence[Mapping[str, Any]]) -> None:
    ax.plot([r["step"] for r in rows], [r["diversity"] for r in rows], marker="o", color="tab:green", label="generated")
    real = [(r["step"], r["real_diversity"]) for r in rows if _finite(r.get("real_diversity"))]
    if real:
        ax.plot(*zip(*real, strict=True), ls="--", color="grey", label="real holdout")
    ax.set_ylabel("mean pairwise L2 distance")
    ax.set_title("sample diversity (far below real: mode collapse)", fontsize=10)


def scores_figure(scores: Sequence[Mapping[str, Any]], title: str) -> Figure | None:
    """FID over steps on a log axis (step 0 would flatten a linear one), per-class FID dashed, KID ± std on a
    linear axis (KID can be <= 0), precision and recall on [0, 1], and the sample diversity (which needs no
    FID weights) beside the real one.

    Panels without a finite value are left out; None when no panel is left. The caller closes the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = [
        (draw, _plotted(scores, key))
        for draw, key in (
            (_fid_panel, "fid"),
            (_kid_panel, "kid"),
            (_pr_panel, "precision"),
            (_diversity_panel, "diversity"),
        )
        if _plotted(scores, key)
    ]
    if not panels:
        return None
    cols = min(2, len(panels))  # two panels a row keep the labels legible at the page's width
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), dpi=100, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.remove()
    for ax, (draw, rows) in zip(axes.flat, panels, strict=False):
        draw(ax, rows)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def scores_plot_png(scores: Sequence[Mapping[str, Any]], title: str) -> bytes | None:
    """:func:`scores_figure` as PNG bytes; None when there is nothing to plot."""
    from matplotlib import pyplot as plt

    fig = scores_figure(scores, title)
    if fig is None:
        return None
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


# ---- HTML ----------------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _score_cell(value: Any, fmt: str, std: Any = None) -> str:
    if value is None:
        return '<td class="skipped">skipped</td>'
    if not _finite(value):
        return f'<td class="skipped">{_e(value)}</td>'
    text = format(value, fmt) + (f" ± {format(std, fmt)}" if _finite(std) else "")
    return f"<td>{_e(text)}</td>"


def _count_cell(n: Any, scored: bool) -> str:
    if scored and isinstance(n, int) and n < MEANINGFUL_IMAGES:
        return f'<td class="low" title="fewer than {MEANINGFUL_IMAGES} images">{n}</td>'
    return f"<td>{_e(n)}</td>"


def _scores_table(scores: Sequence[Mapping[str, Any]]) -> str:
    classes = dict.fromkeys(c for r in scores for c in r.get("per_class") or {})
    diversity = any(r.get("diversity") is not None for r in scores)
    pr = any("precision" in r for r in scores)  # records from before precision/recall have no such key
    head = "".join(f"<th>{_e(h)}</th>" for h in ["step", "FID", "KID ± std", *(["precision", "recall"] if pr else [])])
    head += "".join(f"<th>{_e(h)}</th>" for h in ["generated", "real"])
    head += "".join(f"<th>FID {_e(c)}</th>" for c in classes)
    head += "<th>diversity</th>" if diversity else ""
    rows = []
    for r in scores:
        cells = [f"<td>{_e(r.get('step', '?'))}</td>", _score_cell(r.get("fid"), ".2f")]
        cells.append(_score_cell(r.get("kid"), ".4f", r.get("kid_std")))
        if pr:
            cells += [_score_cell(r.get("precision"), ".3f"), _score_cell(r.get("recall"), ".3f")]
        scored = r.get("fid") is not None or r.get("kid") is not None
        cells += [_count_cell(r.get("num_samples"), scored), _count_cell(r.get("num_real"), scored)]
        cells += [_score_cell((r.get("per_class") or {}).get(c, {}).get("fid"), ".2f") for c in classes]
        if diversity:
            cells.append(f"<td>{_e(_diversity(r))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table id="scores-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _counts_table(caption: str, counts: Mapping[str, Mapping[str, int]]) -> str:
    """Rows: names; columns: splits and their total."""
    splits = list(counts)
    names = sorted({n for split in counts.values() for n in split})
    head = "".join(f"<th>{_e(h)}</th>" for h in [caption, *splits, "total"])
    rows = []
    for n in [*names, None]:
        values = [sum(counts[s].values()) if n is None else counts[s].get(n, 0) for s in splits]
        cells = [f"<td>{_e('total' if n is None else n)}</td>"] + [f"<td>{v}</td>" for v in [*values, sum(values)]]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<div><h3>by {_e(caption)}</h3><table><tr>{head}</tr>{''.join(rows)}</table></div>"


def _link(value: str) -> str:
    if urlsplit(value).scheme.lower() in _LINK_SCHEMES:
        return f'<a href="{_e(value)}">{_e(value)}</a>'
    return _e(value)


def _img(png: bytes, ident: str, css: str, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width is not None else ""
    return f'<img id="{ident}" class="{css}"{size} alt="{_e(alt)}" src="{_data_uri("image/png", png)}">'


def _sample_grid(png: bytes, ident: str = "samples", alt: str = "final sample grid") -> str:
    """The grid scaled up by an integer factor, so that tiny samples are visible and stay sharp."""
    with Image.open(io.BytesIO(png)) as im:
        width = im.width
    return _img(png, ident, "pixels", alt, width * max(1, math.ceil(_MIN_GRID_WIDTH / width)))


def _memorization(inputs: ReportInputs) -> str:
    """The copy rate beside the holdout's, and the grid; or why there is no check."""
    memo = inputs.memorization
    if memo is None:
        return _missing(f"Memorisation check {inputs.memorization_skipped or 'not run'}.")
    text = (
        f"Copy rate {memo['copy_rate']:.1%} of {memo['num_samples']} samples at step {memo['step']}: the share "
        "inside some training image's nearest-neighbour ball, closer to that image than its nearest other "
        f"training image is ({memo['num_train']} training images compared). Real holdout images, which the "
        f"generator never saw: {memo['holdout_copy_rate']:.1%} of {memo['num_holdout']}. A rate clearly above "
        "the holdout's means copies."
    )
    parts = [f'<p id="copy-rate">{_e(text)}</p>']
    if inputs.memorization_png:
        parts.append(_sample_grid(inputs.memorization_png, "memorization-grid", "samples and nearest training images"))
        rows = memo.get("rows") or []
        neighbours = len(rows[0]["distances"]) if rows else 0
        parts.append(
            f'<p class="caption">Each row: one of the {len(rows)} most copy-like samples (smallest distance to a '
            f"training image relative to that image's own nearest-neighbour distance, most copy-like first), then "
            f"its {neighbours} nearest training images in Inception feature space, nearest first.</p>"
        )
    return "".join(parts)


def _config_text(config: Mapping[str, Any]) -> str:
    # Through JSON first so that tuples, paths and other objects become plain YAML (strings at worst).
    plain = json.loads(json.dumps(config, default=str))
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=False, allow_unicode=True)


def render_report(inputs: ReportInputs) -> str:
    """The whole report as one HTML page (see the module docstring); deterministic for the same inputs."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(inputs.experiment)} \u2014 GAN evaluation</title><style>{_CSS}</style></head>",
        "<body><main>",
        f'<h1 id="title">{_e(inputs.experiment)}</h1>',
        f'<p id="summary" class="summary">{_e(summary_line(inputs))}</p>',
    ]
    warnings = report_warnings(inputs)
    if warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
        box = f"<strong>Warnings</strong><ul>{items}</ul>"
        parts.append(f'<div id="warnings" class="warnings" role="alert">{box}</div>')

    parts.append("<h2>Scores by training step</h2>")
    parts.append(_scores_table(inputs.scores) if inputs.scores else _missing("No scores."))

    parts.append("<h2>Scores over training</h2>")
    png = scores_plot_png(inputs.scores, inputs.experiment)
    if png is not None:
        parts.append(_img(png, "scores-plot", "plot", "scores over training steps"))
    else:
        parts.append(_missing("Nothing to plot: no finite FID, KID or diversity."))

    parts.append("<h2>Final samples</h2>")
    parts.append(_sample_grid(inputs.samples_png) if inputs.samples_png else _missing("No sample grid."))

    parts.append("<h2>Memorisation</h2>")
    parts.append(_memorization(inputs))

    parts.append("<h2>Training time-lapse</h2>")
    if inputs.timelapse_mp4:
        src = _data_uri("video/mp4", inputs.timelapse_mp4)
        parts.append(
            f'<video id="timelapse" class="pixels" controls muted loop playsinline preload="auto">'
            f'<source src="{src}" type="video/mp4">This browser cannot play the H.264 MP4.</video>'
        )
    else:
        parts.append(_missing("No time-lapse video."))

    parts.append("<h2>Dataset</h2>")
    parts.append(f"<p>Version <code>{_e(inputs.dataset_version or 'unknown')}</code></p>")
    by = (("class", inputs.counts_by_class), ("source", inputs.counts_by_source))
    tables = [_counts_table(caption, counts) for caption, counts in by if counts]
    parts.append(f'<div class="counts">{"".join(tables)}</div>' if tables else _missing("No image counts."))

    parts.append("<h2>Training config</h2>")
    parts.append(f"<pre>{_e(_config_text(inputs.config))}</pre>" if inputs.config else _missing("No config."))

    parts.append("<h2>Lineage</h2>")
    if inputs.lineage:
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_link(v)}</td></tr>" for k, v in inputs.lineage.items())
        parts.append(f'<table id="lineage" class="lineage">{rows}</table>')
    else:
        parts.append(_missing("No lineage recorded."))

    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
