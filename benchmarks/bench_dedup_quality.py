"""Which perceptual hash and Hamming radius to use for near-duplicate curation, measured on real images.

Run by hand (``python benchmarks/bench_dedup_quality.py``; about two minutes on two cores). Reads the
real fixtures in ../shared/fixtures (never copied). For every image (~4,000: 128x128 dog and cat JPEGs,
full-size photographs, 256x256 map tiles) it makes, in memory, the variants a scraper sees of one picture:
JPEG re-encodes at quality 30 and 50, a 0.5x LANCZOS downscale, that downscale re-encoded at quality 50, a
5% border crop on each side and a +10% brightness change, and hashes originals and variants with imagehash
pHash, dHash and wHash (64 bits each).

- recall at radius r: share of variants whose hash is within r of their original's;
- false matches at radius r: share of distinct pairs of originals within r (all ~8M pairs, found with
  pipelines.hamming.self_join and cross-checked against a full popcount matrix). The closest pairs are
  listed with a pixel check, and a contact sheet of the 8 closest is written to /tmp, because a few are
  the same picture twice (a true duplicate in the fixtures, not a false match of the hash);
- the radius: the smallest with recall >= 0.99 (the target, 0.95, with a margin) for re-encodes and
  downscales whose false matches stay under 0.1% of distinct pairs; since that share hides how false
  matches grow with the corpus, the expected false neighbours per image at 1M images are printed too;
- hashing throughput on the 489 256x256 tiles as JPEGs, one thread: full decode alone, full decode +
  pHash, and JPEG draft mode (DCT-domain downscaling while decoding) + pHash, with the distance between
  full-decode and draft-mode pHash, to know whether draft mode is safe.
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
from PIL import Image, ImageDraw, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.hamming import hamming, self_join

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FOLDERS = ("dogs", "dogs-large", "null", "dogs-photos", "null-photos", "tiles")
MAX_RADIUS = 14
RECALL_TARGET = 0.95
FALSE_MATCH_LIMIT = 0.001  # share of distinct pairs
MARGIN_TARGET = 0.99  # the margin: at most 1% misses on each kind that must meet the target
CONTACT_SHEET = Path("/tmp/dedup_closest_pairs.png")


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _half(im: Image.Image) -> Image.Image:
    return im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.LANCZOS)


def _crop(im: Image.Image, share: float = 0.05) -> Image.Image:
    w, h = im.size
    return im.crop((round(w * share), round(h * share), round(w * (1 - share)), round(h * (1 - share))))


VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg q30": lambda im: _jpeg(im, 30),
    "jpeg q50": lambda im: _jpeg(im, 50),
    "downscale 0.5x": lambda im: _half(im),
    "downscale + q50": lambda im: _jpeg(_half(im), 50),  # a re-hosted thumbnail: the two edits add up
    "crop 5%": _crop,
    "brightness +10%": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
}
HASHES: dict[str, Callable[[Image.Image], imagehash.ImageHash]] = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "whash": imagehash.whash,
}
MUST_MEET = ("jpeg q30", "jpeg q50", "downscale 0.5x", "downscale + q50")


def to_u64(h: imagehash.ImageHash) -> np.uint64:
    """The 64 hash bits, row-major, as one uint64 (bit order is irrelevant to Hamming distance)."""
    return np.frombuffer(np.packbits(h.hash.ravel()).tobytes(), dtype=">u8")[0].astype(np.uint64)


def hash_image(path: Path) -> np.ndarray:
    """uint64 hashes, shape (1 + variants, hash kinds): the original first."""
    im = Image.open(path).convert("RGB")
    images = [im] + [make(im) for make in VARIANTS.values()]
    return np.array([[to_u64(fn(x)) for fn in HASHES.values()] for x in images], dtype=np.uint64)


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


def _encode(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def draft_recall(blobs: list[bytes], radius: int) -> dict[str, tuple[float, float]]:
    """Recall at `radius` of JPEG variants when originals and variants are both hashed in full or both in draft.

    What matters for curation is that every image is hashed the same way; this checks that draft mode on
    both sides finds the same near duplicates as full decoding on both sides.
    """
    variants = {
        "jpeg q30": lambda im: _encode(im, 30),
        "jpeg q50": lambda im: _encode(im, 50),
        "downscale + q50": lambda im: _encode(_half(im), 50),
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


def pair_distances(hashes: np.ndarray) -> np.ndarray:
    """Distances of all distinct pairs i < j (a full popcount matrix: ~8M pairs, 16 MB)."""
    n = hashes.size
    return hamming(hashes[:, None], hashes[None, :])[np.triu_indices(n, 1)]


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
    paths: list[Path], hashes: np.ndarray, k: int = 40
) -> tuple[list[tuple[Path, Path, int, float]], tuple[np.ndarray, ...]]:
    """The k closest distinct originals by pHash, via the index, each with its pixel MAD."""
    i, j, d = self_join(hashes, MAX_RADIUS)
    order = np.lexsort((j, i, d))[:k]
    return [(paths[i[m]], paths[j[m]], int(d[m]), pixel_mad(paths[i[m]], paths[j[m]])) for m in order], (i, j, d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="npz of hashes to reuse between runs (written if absent)")
    parser.add_argument("--repeat", type=int, default=5, help="passes over the tiles for throughput (best counts)")
    parser.add_argument("--scale", type=int, default=1_000_000, help="corpus size for false neighbours per image")
    args = parser.parse_args()
    if not FIXTURES.is_dir():
        sys.exit(f"fixtures not found at {FIXTURES}")

    paths = list_images()
    t0 = time.perf_counter()
    if args.cache and args.cache.exists():
        all_hashes = np.load(args.cache)["hashes"]
    else:
        with mp.get_context("spawn").Pool(args.processes) as pool:
            all_hashes = np.stack(pool.map(hash_image, paths, chunksize=16))
        if args.cache:
            np.savez(args.cache, hashes=all_hashes)
    n = len(paths)
    n_pairs = n * (n - 1) // 2
    folders = np.array([p.parent.name for p in paths])
    print(f"{n} originals x {len(VARIANTS)} variants x {len(HASHES)} hashes in {time.perf_counter() - t0:.0f} s;")
    print("per folder: " + ", ".join(f"{d} {(folders == d).sum()}" for d in FOLDERS))

    radii = np.arange(MAX_RADIUS + 1)
    recall: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, np.ndarray] = {}
    var_dist: dict[str, dict[str, np.ndarray]] = {}
    for k, hname in enumerate(HASHES):
        orig = all_hashes[:, 0, k]
        var_dist[hname] = {v: hamming(orig, all_hashes[:, 1 + j, k]) for j, v in enumerate(VARIANTS)}
        recall[hname] = {v: (d[:, None] <= radii[None, :]).mean(axis=0) for v, d in var_dist[hname].items()}
        counts[hname] = np.bincount(pair_distances(orig), minlength=65)
    false_rate = {h: np.cumsum(c)[: MAX_RADIUS + 1] / n_pairs for h, c in counts.items()}
    phash = all_hashes[:, 0, 0]
    even = (np.bitwise_count(phash) == 32).mean()
    print(f"pHash: {even:.1%} of hashes have exactly 32 bits set (median threshold), so pHash distances are even.")

    # The closest distinct originals: the same picture twice, or hash collisions?
    checked, (pi, _, _) = closest_pairs(paths, phash)
    assert pi.size == counts["phash"][: MAX_RADIUS + 1].sum()  # the index finds exactly what the full matrix has
    contact_sheet(checked[:8], CONTACT_SHEET)
    same = [(a, b, d) for a, b, d, mad in checked if mad < 8]
    print(f"\n## Closest distinct originals by pHash ({CONTACT_SHEET} shows the first 8)\n")
    print("MAD: mean absolute difference at 64x64 grey, 0-255; under 8 means the same picture.\n")
    print("| # | pHash | dHash | wHash | MAD | image a | image b |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | --- |")
    row = {p: k for k, p in enumerate(paths)}
    for k, (a, b, d, mad) in enumerate(checked[:12]):
        dh, wh = (int(hamming(all_hashes[row[a], 0, h], all_hashes[row[b], 0, h])) for h in (1, 2))
        print(f"| {k + 1} | {d} | {dh} | {wh} | {mad:.1f} | {a.parent.name}/{a.name} | {b.parent.name}/{b.name} |")
    same_at = np.bincount(np.array([d for _, _, d in same], dtype=np.int64), minlength=65)
    genuine = np.cumsum(same_at)[: MAX_RADIUS + 1]
    print(f"\nSame picture (MAD < 8) among the {len(checked)} closest pairs: {len(same)}, all other pairs differ.")

    print("\n## Distances between distinct originals (number of pairs)\n")
    shown = range(0, 21)
    print("| hash | " + " | ".join(str(d) for d in shown) + " |")
    print("| --- |" + " ---: |" * len(shown))
    for hname, c in counts.items():
        print(f"| {hname} | " + " | ".join(f"{c[d]:,}" for d in shown) + " |")

    est = np.cumsum(tail_fit(counts["phash"] - same_at))[: MAX_RADIUS + 1]
    print(f"\n## pHash: recall per variant, and false matches among {n_pairs:,} distinct pairs, by radius\n")
    print(
        f"False neighbours per image at {args.scale:,} images: (pairs within r that are not the same picture)"
        f" / {n_pairs:,} x {args.scale:,}, with the counts below 12 bits extrapolated (see tail_fit).\n"
    )
    head = " | ".join(VARIANTS)
    print(f"| radius | {head} | false matches | share of pairs | not same picture | false neighbours per image |")
    print("| ---: |" + " ---: |" * (len(VARIANTS) + 4))
    for r in radii:
        cells = " | ".join(f"{recall['phash'][v][r]:.3f}" for v in VARIANTS)
        fm = round(false_rate["phash"][r] * n_pairs)
        per_image = est[r] / n_pairs * args.scale
        print(f"| {r} | {cells} | {fm:,} | {fm / n_pairs:.5%} | {fm - genuine[r]:,} | {per_image:.2g} |")

    def meets(hname: str, target: float) -> list[int]:
        return [
            int(r)
            for r in radii
            if all(recall[hname][v][r] >= target for v in MUST_MEET) and false_rate[hname][r] < FALSE_MATCH_LIMIT
        ]

    rule, margin = meets("phash", RECALL_TARGET), meets("phash", MARGIN_TARGET)
    chosen = margin[0] if margin else None
    print(
        f"\nSmallest pHash radius with recall >= {RECALL_TARGET} on {', '.join(MUST_MEET)} and false matches"
        f" < {FALSE_MATCH_LIMIT:.1%} of pairs: {rule[0] if rule else None}; with margin (recall >= {MARGIN_TARGET}"
        f" on each): **{chosen}**."
    )

    for show in sorted({chosen, 8, 10} - {None}):
        print(f"\n## Hashes compared at radius {show}\n")
        print(f"| hash | {head} | false matches |")
        print("| --- |" + " ---: |" * (len(VARIANTS) + 1))
        for hname in HASHES:
            cells = " | ".join(f"{recall[hname][v][show]:.3f}" for v in VARIANTS)
            fm = round(false_rate[hname][show] * n_pairs)
            print(f"| {hname} | {cells} | {fm:,} ({fm / n_pairs:.4%}) |")
    print(f"\n## Smallest radius per hash with recall >= {MARGIN_TARGET} on {', '.join(MUST_MEET)}\n")
    print("| hash | radius | false matches there | crop 5% recall there | brightness +10% recall there |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for hname in HASHES:
        ok = [r for r in radii if all(recall[hname][v][r] >= MARGIN_TARGET for v in MUST_MEET)]
        if ok:
            r = int(ok[0])
            fm = round(false_rate[hname][r] * n_pairs)
            print(
                f"| {hname} | {r} | {fm:,} ({fm / n_pairs:.4%}) | {recall[hname]['crop 5%'][r]:.3f} |"
                f" {recall[hname]['brightness +10%'][r]:.3f} |"
            )
        else:
            print(f"| {hname} | > {MAX_RADIUS} | - | - | - |")
    if chosen is not None:
        print(f"\npHash misses at radius {chosen}, by folder (variants farther than the radius from their original):")
        for v, d in var_dist["phash"].items():
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
