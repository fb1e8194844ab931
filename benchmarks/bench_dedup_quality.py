"""Which perceptual hash, lookup and Hamming radius curation should use, measured on real images.

Run by hand (``python benchmarks/bench_dedup_quality.py``; about ten minutes on two cores). Reads the real
fixtures in ../shared/fixtures (never copied). For every image (~4,000: 128x128 dog and cat JPEGs,
full-size photographs, 256x256 map tiles) it makes, in memory, the copies a scraper meets of one picture
(:data:`VARIANTS`: re-encodes, re-saves, rescales, colour edits, EXIF rotation, a mirror image,
letterbox bars, crops, a corner caption, a small rotation, a thumbnail) and hashes originals and copies
with each method (:data:`METHODS`): imagehash's pHash, dHash, aHash and wHash on a full decode, as a user
of imagehash would, and the project's curation features (pipelines/features.py: draft decode, EXIF
rotation, letterbox bars trimmed, the hash of the picture and of its mirror image, the distance being the
smaller of the two).

- recall at radius r: share of copies within r of their original;
- false matches at radius r: distinct pairs of originals within r (all ~8M pairs, full popcount matrices;
  for the project, the smaller of the direct and mirrored distance), the closest listed with a pixel
  check, since a few are the same picture twice (a true duplicate in the fixtures); and the expected
  false neighbours per image in a corpus of ``--scale`` images (:func:`tail_fit` extrapolates the rare
  small distances);
- the radius: the largest whose false neighbours per image at ``--scale`` stay within
  :data:`FALSE_NEIGHBOUR_BUDGET`, with re-encodes and rescales at recall >= 0.99.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.features import image_features
from pipelines.hamming import hamming, self_join

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FOLDERS = ("dogs", "dogs-large", "null", "dogs-photos", "null-photos", "tiles")
MAX_RADIUS = 14
FALSE_NEIGHBOUR_BUDGET = 0.01  # distinct images an image may wrongly match in a corpus of --scale images
MARGIN_TARGET = 0.99  # recall every re-encode and rescale must keep at the chosen radius
CONTACT_SHEET = Path("/tmp/dedup_closest_pairs.png")


def _encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _jpeg(im: Image.Image, quality: int = 95) -> bytes:
    return _encode(im, "JPEG", quality=quality)


def _half(im: Image.Image) -> Image.Image:
    return im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.LANCZOS)


def _crop(im: Image.Image, share: float) -> Image.Image:
    w, h = im.size
    return im.crop((round(w * share), round(h * share), round(w * (1 - share)), round(h * (1 - share))))


def _letterbox(im: Image.Image, bars: str, ratio: float = 16 / 9) -> Image.Image:
    w, h = im.size
    size = (round(h * ratio), h) if w / h < ratio else (w, round(w / ratio))
    if bars == "blurred":
        frame = im.resize(size).filter(ImageFilter.GaussianBlur(max(size) / 20))
    else:
        frame = Image.new("RGB", size, (0, 0, 0))
    frame.paste(im, ((size[0] - w) // 2, (size[1] - h) // 2))
    return frame


def _caption(im: Image.Image) -> Image.Image:
    """A stock-photo mark in the bottom-right corner: white text on a dark band, 1/12 of the height."""
    im = im.copy()
    w, h = im.size
    band = max(8, h // 12)
    draw = ImageDraw.Draw(im)
    draw.rectangle([w // 2, h - band, w, h], fill=(20, 20, 20))
    draw.text((w // 2 + 4, h - band + 1), "(c) stockphoto", fill=(255, 255, 255))
    return im


def _exif_rotated(im: Image.Image) -> bytes:
    """The pixels stored turned a quarter, with the EXIF Orientation (6) that turns them back for display."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(im.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)


def _thumbnail(im: Image.Image, side: int = 48) -> Image.Image:
    t = im.copy()
    t.thumbnail((side, side), Image.LANCZOS)
    return t


VARIANTS: dict[str, Callable[[Image.Image], bytes]] = {
    "jpeg q30": lambda im: _jpeg(im, 30),
    "jpeg q50": lambda im: _jpeg(im, 50),
    "PNG": lambda im: _encode(im, "PNG"),
    "WebP": lambda im: _encode(im, "WEBP", quality=80),
    "0.5x": lambda im: _jpeg(_half(im)),
    "0.5x + q50": lambda im: _jpeg(_half(im), 50),  # a re-hosted thumbnail: the two edits add up
    "2x upscale": lambda im: _jpeg(im.resize((im.width * 2, im.height * 2), Image.BICUBIC)),
    "thumbnail 48 px": lambda im: _jpeg(_thumbnail(im)),
    "blur 1 px": lambda im: _jpeg(im.filter(ImageFilter.GaussianBlur(1))),
    "gamma 0.8": lambda im: _jpeg(im.point(lambda v: round(255 * (v / 255) ** 0.8))),
    "brightness +10%": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.1)),
    "grayscale": lambda im: _jpeg(ImageOps.grayscale(im)),
    "EXIF-rotated": _exif_rotated,
    "mirrored": lambda im: _jpeg(ImageOps.mirror(im)),
    "letterbox black": lambda im: _jpeg(_letterbox(im, "black")),
    "letterbox blurred": lambda im: _jpeg(_letterbox(im, "blurred")),
    "crop 2%": lambda im: _jpeg(_crop(im, 0.02)),
    "crop 5%": lambda im: _jpeg(_crop(im, 0.05)),
    "corner caption": lambda im: _jpeg(_caption(im)),
    "rotate 3 deg": lambda im: _jpeg(im.rotate(3, Image.BICUBIC, expand=False)),
}
MUST_MEET = ("jpeg q30", "jpeg q50", "PNG", "WebP", "0.5x", "0.5x + q50", "2x upscale", "thumbnail 48 px")


def to_u64(h: imagehash.ImageHash) -> np.uint64:
    """The 64 hash bits, row-major, as one uint64 (bit order is irrelevant to Hamming distance)."""
    return np.frombuffer(np.packbits(h.hash.ravel()).tobytes(), dtype=">u8")[0].astype(np.uint64)


def _imagehash(fn: Callable[[Image.Image], imagehash.ImageHash]) -> Callable[[bytes], tuple[int, int]]:
    """A plain imagehash method: a full decode, no mirror lookup (the second value repeats the first)."""

    def run(data: bytes) -> tuple[int, int]:
        h = int(to_u64(fn(Image.open(io.BytesIO(data)).convert("RGB"))))
        return h, h

    return run


def _project(data: bytes) -> tuple[int, int]:
    f = image_features(data)
    return f.hash, f.hash_mirror


METHODS: dict[str, Callable[[bytes], tuple[int, int]]] = {
    "project": _project,
    "pHash": _imagehash(imagehash.phash),
    "dHash": _imagehash(imagehash.dhash),
    "aHash": _imagehash(imagehash.average_hash),
    "wHash": _imagehash(imagehash.whash),
}


def hash_image(path: Path) -> np.ndarray:
    """uint64 hashes, shape (1 + variants, methods, 2 = direct and mirror): the original file first."""
    im = Image.open(path).convert("RGB")
    blobs = [path.read_bytes()] + [make(im) for make in VARIANTS.values()]
    return np.array([[fn(b) for fn in METHODS.values()] for b in blobs], dtype=np.uint64)


def list_images() -> list[Path]:
    return [p for d in FOLDERS for p in sorted((FIXTURES / d).iterdir()) if p.suffix.lower() in (".jpg", ".png")]


def thumb(path: Path, size: int = 160) -> Image.Image:
    im = Image.open(path).convert("RGB")
    im.thumbnail((size, size), Image.LANCZOS)
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return canvas


def pixel_mad(a: Path, b: Path) -> float:
    """Mean absolute difference of the two images at 64x64 grey, 0..255: ~0-5 means the same picture."""
    x, y = (np.asarray(Image.open(p).convert("L").resize((64, 64), Image.LANCZOS), dtype=np.float64) for p in (a, b))
    return float(np.abs(x - y).mean())


def contact_sheet(pairs: list[tuple[Path, Path, int, float]], out: Path, size: int = 160) -> None:
    label = 28
    sheet = Image.new("RGB", (2 * size + 10, len(pairs) * (size + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (a, b, d, mad) in enumerate(pairs):
        y = k * (size + label)
        sheet.paste(thumb(a, size), (0, y + label))
        sheet.paste(thumb(b, size), (size + 10, y + label))
        draw.text((2, y + 2), f"{k + 1}. d={d} MAD={mad:.1f}", fill="black")
        draw.text((2, y + 14), f"{a.parent.name}/{a.name[:22]} | {b.parent.name}/{b.name[:22]}", fill="black")
    sheet.save(out)


# ----------------------------------------------------------------------------------------------------------------------
# Throughput and draft-mode agreement.
# ----------------------------------------------------------------------------------------------------------------------


def _decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _draft(data: bytes, mode: str, size: int) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.draft(mode, (size, size))  # JPEG only: the decoder scales by 1/2, 1/4 or 1/8, staying >= size
    im.load()
    return im


def tile_jpegs() -> list[bytes]:
    """The 489 tiles as 256x256 JPEG bytes: the JPEG ones as stored, the PNG ones re-encoded at quality 90."""
    out = []
    for p in sorted((FIXTURES / "tiles").iterdir()):
        if p.suffix == ".jpg":
            out.append(p.read_bytes())
        elif p.suffix == ".png":
            buf = io.BytesIO()
            Image.open(p).convert("RGB").save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


DECODERS: dict[str, Callable[[bytes], Image.Image]] = {
    "full decode": _decode,
    "draft L 1/2 (128x128)": lambda b: _draft(b, "L", 128),
    "draft RGB 1/4 (64x64)": lambda b: _draft(b, "RGB", 64),
    "draft L 1/4 (64x64)": lambda b: _draft(b, "L", 64),
    "draft L 1/8 (32x32)": lambda b: _draft(b, "L", 32),
}


def _rate(blobs: list[bytes], work: Callable[[bytes], object], repeat: int) -> float:
    """Images/s on one thread: the best of `repeat` passes (other processes share this machine)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for b in blobs:
            work(b)
        best = min(best, time.perf_counter() - t0)
    return len(blobs) / best


def throughput(blobs: list[bytes], repeat: int) -> list[tuple[str, float]]:
    """Images/s for full decode alone, and for each decoder + pHash."""
    rows = [("full decode alone", _rate(blobs, _decode, repeat))]
    for name, decode in DECODERS.items():
        rows.append((f"{name} + pHash", _rate(blobs, lambda b, decode=decode: imagehash.phash(decode(b)), repeat)))
    return rows


def draft_recall(blobs: list[bytes], radius: int) -> dict[str, tuple[float, float]]:
    """Recall at `radius` of JPEG variants when originals and variants are both hashed in full or both in draft.

    What matters for curation is that every image is hashed the same way; this checks that draft mode on
    both sides finds the same near duplicates as full decoding on both sides.
    """
    variants = {
        "jpeg q30": lambda im: _jpeg(im, 30),
        "jpeg q50": lambda im: _jpeg(im, 50),
        "downscale + q50": lambda im: _jpeg(_half(im), 50),
    }
    hashers = {"full": _decode, "draft": lambda b: _draft(b, "L", 64)}
    dist: dict[tuple[str, str], list[int]] = {(v, h): [] for v in variants for h in hashers}
    for b in blobs:
        im = _decode(b).convert("RGB")
        for v, make in variants.items():
            vb = make(im)
            for h, decode in hashers.items():
                dist[v, h].append(int(hamming(to_u64(imagehash.phash(decode(b))), to_u64(imagehash.phash(decode(vb))))))
    return {v: tuple(float(np.mean(np.array(dist[v, h]) <= radius)) for h in hashers) for v in variants}


def draft_agreement(blobs: list[bytes]) -> dict[str, np.ndarray]:
    """Distance between the full-decode pHash and each draft-mode pHash, per image."""
    full = np.array([to_u64(imagehash.phash(_decode(b))) for b in blobs], dtype=np.uint64)
    out = {}
    for name, decode in DECODERS.items():
        if name != "full decode":
            draft = np.array([to_u64(imagehash.phash(decode(b))) for b in blobs], dtype=np.uint64)
            out[name] = hamming(full, draft)
    return out


def _dist_summary(d: np.ndarray) -> str:
    counts = np.bincount(d, minlength=5)
    parts = [f"{k}: {counts[k] / d.size:.1%}" for k in range(4)]
    return f"{', '.join(parts)}, >=4: {counts[4:].sum() / d.size:.1%} (max {d.max()}, mean {d.mean():.2f})"


# ----------------------------------------------------------------------------------------------------------------------
# Quality analysis.
# ----------------------------------------------------------------------------------------------------------------------


def pair_distances(direct: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Distance of every distinct pair i < j: the smallest of direct, i's mirror to j, and i to j's mirror."""
    d = hamming(direct[:, None], direct[None, :])
    m = hamming(direct[:, None], mirror[None, :])
    d = np.minimum(d, np.minimum(m, m.T))
    return d[np.triu_indices(direct.size, 1)]


def tail_fit(counts: np.ndarray) -> np.ndarray:
    """Expected pair counts per distance, below the observed range extrapolated log-linearly.

    Fitted on the distances with at least 20 pairs up to 20 bits (pHash distances are even, so only the even
    ones). The observed counts fall ever more steeply towards small distances, so a straight line through
    the upper part over-estimates the rare close collisions: a conservative estimate.
    """
    d = np.arange(counts.size)
    fit = (counts >= 20) & (d <= 20) & (counts > 0)
    est = counts.astype(float)
    if fit.sum() >= 2:
        slope, icept = np.polyfit(d[fit], np.log(counts[fit]), 1)
        low = d < d[fit].min()
        fitted = np.where(d[low] % 2 == 0, np.exp(icept + slope * d[low]), 0.0)
        est[low] = np.maximum(est[low], fitted)
    return est


def closest_pairs(
    paths: list[Path], direct: np.ndarray, mirror: np.ndarray, k: int = 60
) -> list[tuple[int, int, int, float]]:
    """The k closest distinct originals (direct or mirrored), each with its pixel MAD (both ways round)."""
    i, j, d = self_join(direct, MAX_RADIUS)
    order = np.lexsort((j, i, d))[:k]
    out = []
    for m in order:
        a, b = paths[i[m]], paths[j[m]]
        out.append((int(i[m]), int(j[m]), int(d[m]), pixel_mad(a, b)))
    return out


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="npz of hashes to reuse between runs (written if absent)")
    parser.add_argument("--repeat", type=int, default=5, help="passes over the tiles for throughput (best counts)")
    parser.add_argument("--scale", type=int, default=1_000_000, help="corpus size for false neighbours per image")
    parser.add_argument("--sample", type=int, help="only about this many originals, evenly spread (a quick look)")
    args = parser.parse_args()
    if not FIXTURES.is_dir():
        sys.exit(f"fixtures not found at {FIXTURES}")

    paths = list_images()
    if args.sample:
        paths = paths[:: max(1, len(paths) // args.sample)]
    t0 = time.perf_counter()
    if args.cache and args.cache.exists():
        all_hashes = np.load(args.cache)["hashes"]
    else:
        with mp.get_context("spawn").Pool(args.processes) as pool:
            all_hashes = np.stack(pool.map(hash_image, paths, chunksize=8))
        if args.cache:
            np.savez(args.cache, hashes=all_hashes)
    n = len(paths)
    n_pairs = n * (n - 1) // 2
    folders = np.array([p.parent.name for p in paths])
    print(f"{n} originals x {len(VARIANTS)} copies x {len(METHODS)} methods in {time.perf_counter() - t0:.0f} s;")
    print("per folder: " + ", ".join(f"{d} {(folders == d).sum()}" for d in FOLDERS))

    radii = np.arange(MAX_RADIUS + 1)
    recall: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, np.ndarray] = {}
    var_dist: dict[str, dict[str, np.ndarray]] = {}
    for k, method in enumerate(METHODS):
        orig = all_hashes[:, 0, k, 0]
        var_dist[method] = {
            v: np.minimum(hamming(orig, all_hashes[:, 1 + j, k, 0]), hamming(orig, all_hashes[:, 1 + j, k, 1]))
            for j, v in enumerate(VARIANTS)
        }
        recall[method] = {v: (d[:, None] <= radii[None, :]).mean(axis=0) for v, d in var_dist[method].items()}
        counts[method] = np.bincount(pair_distances(orig, all_hashes[:, 0, k, 1]), minlength=65)

    # The closest distinct originals: the same picture twice (not a false match), or collisions?
    project = all_hashes[:, 0, 0, 0]
    checked = closest_pairs(paths, project, all_hashes[:, 0, 0, 1])
    same = {(i, j) for i, j, _, mad in checked if mad < 8}
    print(f"\n## Closest distinct originals by the project's hash ({CONTACT_SHEET} shows the first 8)\n")
    print("MAD: mean absolute difference at 64x64 grey, 0-255; under 8 means the same picture.\n")
    if checked:
        contact_sheet([(paths[i], paths[j], d, mad) for i, j, d, mad in checked[:8]], CONTACT_SHEET)
    print(
        _table(
            ["#", "distance", "MAD", "image a", "image b"],
            [
                [
                    str(x + 1),
                    str(d),
                    f"{mad:.1f}",
                    f"{paths[i].parent.name}/{paths[i].name}",
                    f"{paths[j].parent.name}/{paths[j].name}",
                ]
                for x, (i, j, d, mad) in enumerate(checked[:12])
            ],
        )
    )
    print(
        f"\nSame picture (MAD < 8) among the {len(checked)} closest pairs: {len(same)}; not counted as false matches."
    )

    # False neighbours per image at --scale, per method: distinct pairs within r minus the same-picture ones.
    est: dict[str, np.ndarray] = {}
    for k, method in enumerate(METHODS):
        direct, mirror = all_hashes[:, 0, k, 0], all_hashes[:, 0, k, 1]
        genuine = np.zeros(65, np.int64)
        for i, j in same:
            d = min(
                int(hamming(direct[i], direct[j])),
                int(hamming(direct[i], mirror[j])),
                int(hamming(mirror[i], direct[j])),
            )
            genuine[d] += 1
        est[method] = np.cumsum(tail_fit(counts[method] - genuine))[: MAX_RADIUS + 1] / n_pairs * args.scale

    shown = [0, 2, 4, 6, 8, 10, 12, 14]
    print(f"\n## False neighbours per image at {args.scale:,} images, by method and radius\n")
    print(f"Distinct pairs within r (same pictures excluded) / {n_pairs:,} x {args.scale:,}; rare small distances")
    print("extrapolated (tail_fit). Observed pairs in brackets.\n")
    rows = []
    for method in METHODS:
        observed = np.cumsum(counts[method])
        rows.append([method] + [f"{est[method][r]:.2g} ({observed[r]:,})" for r in shown])
    print(_table(["method"] + [f"r={r}" for r in shown], rows))

    # The radius for the project: as large as the false-neighbour budget allows, re-encodes kept.
    ok = [
        int(r)
        for r in radii
        if est["project"][r] <= FALSE_NEIGHBOUR_BUDGET
        and all(recall["project"][v][r] >= MARGIN_TARGET for v in MUST_MEET)
    ]
    chosen = max(ok) if ok else None
    print(
        f"\nLargest radius of the project's method with at most {FALSE_NEIGHBOUR_BUDGET} false neighbours per image at"
        f" {args.scale:,} and recall >= {MARGIN_TARGET} on {', '.join(MUST_MEET)}: **{chosen}**."
    )
    compare = sorted({4, 8} | ({chosen} if chosen is not None else set()))
    print(f"\n## Recall of each copy, by method, at radius {' and '.join(map(str, compare))}\n")
    head = ["copy"] + [f"{m} r={r}" for m in METHODS for r in compare]
    rows = [[v] + [f"{recall[m][v][r]:.3f}" for m in METHODS for r in compare] for v in VARIANTS]
    rows.append(["false neighbours/image at 1M"] + [f"{est[m][r]:.2g}" for m in METHODS for r in compare])
    print(_table(head, rows))
    print("\n## The project's method by radius: recall of each copy\n")
    rows = [[v] + [f"{recall['project'][v][r]:.3f}" for r in shown] for v in VARIANTS]
    rows.append(["false neighbours/image at 1M"] + [f"{est['project'][r]:.2g}" for r in shown])
    print(_table(["copy"] + [f"r={r}" for r in shown], rows))
    if chosen is not None:
        print(f"\nMisses of the project's method at radius {chosen}, by folder:")
        for v, d in var_dist["project"].items():
            miss = d > chosen
            where = ", ".join(f"{f} {(folders[miss] == f).sum()}" for f in FOLDERS if (folders[miss] == f).any())
            print(f"- {v}: {miss.sum()} ({where or 'none'})")

    # Throughput on 256x256 JPEG tiles, one thread, bytes already in memory (decode, not disk, is measured).
    blobs = tile_jpegs()
    print(f"\n## pHash throughput, {len(blobs)} 256x256 JPEG tiles, one thread, best of {args.repeat} passes\n")
    print("| pipeline | images/s | vs full decode + pHash |")
    print("| --- | ---: | ---: |")
    rows = throughput(blobs, args.repeat)
    base = dict(rows)["full decode + pHash"]
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")

    print("\n## Draft-mode pHash vs full-decode pHash: share of images at each distance\n")
    photos = [p.read_bytes() for d in ("dogs-photos", "null-photos") for p in sorted((FIXTURES / d).glob("*.jpg"))]
    small = [p.read_bytes() for d in ("dogs", "null") for p in sorted((FIXTURES / d).glob("*.jpg"))]
    for label, group in (
        (f"{len(blobs)} 256x256 tiles", blobs),
        (f"{len(small)} 128x128 JPEGs", small),
        (f"{len(photos)} full-size photos", photos),
    ):
        for name, d in draft_agreement(group).items():
            print(f"- {label}, {name}: {_dist_summary(d)}")
    rates = [_rate(photos, lambda b: imagehash.phash(_decode(b)), 1)]
    rates.append(_rate(photos, lambda b: imagehash.phash(_draft(b, "L", 64)), 1))
    print(
        f"\nFull-size photos, one thread: full decode + pHash {rates[0]:.0f} images/s,"
        f" draft L (64x64) + pHash {rates[1]:.0f} images/s ({rates[1] / rates[0]:.1f}x)."
    )
    if chosen is not None:
        print(f"\n## Recall at radius {chosen} hashing everything in full vs everything in draft L (64x64)\n")
        print("| images | variant | full decode | draft mode |")
        print("| --- | --- | ---: | ---: |")
        for label, group in (("tiles", blobs), ("128x128 JPEGs", small), ("photos", photos)):
            for v, (full, draft) in draft_recall(group, chosen).items():
                print(f"| {label} | {v} | {full:.3f} | {draft:.3f} |")


if __name__ == "__main__":
    main()
