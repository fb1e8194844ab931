"""What curation needs to know about one image, from one cheap decode.

JPEGs are decoded in PIL's draft mode (the decoder scales by 1/2, 1/4 or 1/8 in the DCT, so a large
photo costs a fraction of a full decode) to at least 64x64: a perceptual hash looks at 32x32 pixels and
the quality measures at 64x64, so nothing is lost. An image whose opposite edges are flat (maybe bars)
is decoded again at twice that scale, where a seam is found more surely.

Pixel identity is not decided here: a JPEG decoded at 1/4 and a PNG re-save of it decoded in full are
the same picture with different pixel arrays, so curation decodes both in full
(:func:`full_pixel_sha256`), and only for images the hash has already matched.

Copies a scraper meets that a plain hash misses, handled here:
- letterboxed and pillarboxed copies (black, white or blurred bars added to fit 4:3 or 16:9): uniform
  borders on opposite sides are trimmed (:func:`content_box`) before hashing and measuring, and the
  box is kept so the shard crop and the size filters see the picture, not the bars;
- mirrored copies: the pHash of the mirrored picture comes from the same DCT with its odd columns
  negated (a horizontal flip multiplies DCT-II coefficient k by (-1)^k), so curation can query with both.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageOps

HASHES = ("phash", "dhash")  # see benchmarks/README.md: aHash and wHash collide far more on real photos
FEATURES_VERSION = 2  # bump when a feature's definition changes: cached features of other versions are recomputed
WORK_SIZE = 64  # side of the grayscale image the quality measures look at
DRAFT_SIZE = WORK_SIZE  # JPEGs are decoded at the smallest DCT scale keeping both sides at least this (x2 near bars)
BLOCK = 8  # texture is measured in BLOCK x BLOCK tiles of the work image
HASH_SIDE = 32  # pHash's DCT input (imagehash: hash_size 8 x highfreq_factor 4)

# Border trimming (on the decoded image, 2-4x the work size): a border line is one whose pixels barely change
# along it (mean absolute step below BAR_ACTIVITY grey levels: solid bars, JPEG noise and heavily blurred bars).
BAR_ACTIVITY = 1.5
BAR_MIN_SHARE = 0.02  # thinner bands are frames or JPEG edge effects, not padding
BAR_MAX_SHARE = 0.40  # each side; more would leave a sliver
BAR_EDGE_CONTRAST = 8.0  # grey levels between the last bar line and the first picture line ...
BAR_EDGE_SHARE = 0.5  # ... on at least this share of the line: a straight seam, not an object on a plain ground
COLOUR_MIN = 4.0  # mean chroma (max - min channel, 0-255) below which an image counts as grayscale


@dataclass(frozen=True)
class ImageFeatures:
    """What curation decides on; sizes are the picture's own, after EXIF rotation and trimmed borders."""

    hash: int  # 64-bit perceptual hash of the picture (borders trimmed), as an unsigned int
    hash_mirror: int  # the same hash of the picture mirrored left to right
    width: int  # the picture's size in the original's pixels: borders excluded
    height: int
    box: tuple[float, float, float, float] | None  # (left, top, right, bottom) as shares of the image; None: no bars
    gray_std: float  # 0 for a flat image; real photos are 20-80
    texture: float  # share of 8x8 blocks with any texture (std >= 4 grey levels)
    colour: float  # mean chroma, 0-255: under COLOUR_MIN the image is grayscale
    sharpness: float  # mean absolute Laplacian of the picture at the decoded scale: blur lowers it


def hash_to_int(h: imagehash.ImageHash) -> int:
    return int.from_bytes(np.packbits(h.hash.flatten()).tobytes(), "big")


def _bits_to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


def _dct_rows(n: int, size: int) -> np.ndarray:
    """The first ``n`` rows of the unnormalised DCT-II matrix (scipy's ``dct(type=2)``) for ``size`` samples."""
    k, x = np.arange(n)[:, None], np.arange(size)[None, :]
    return 2 * np.cos(np.pi * k * (2 * x + 1) / (2 * size))


_DCT8 = _dct_rows(8, HASH_SIDE)
_MIRROR_SIGNS = np.where(np.arange(8) % 2 == 1, -1.0, 1.0)[None, :]


def _above_median(low: np.ndarray) -> int:
    v = np.sort(low, axis=None)
    return _bits_to_int(low > (v[31] + v[32]) / 2)


def phash_pair(gray: Image.Image) -> tuple[int, int]:
    """imagehash's pHash of ``gray`` and of its mirror image, from one resize and one small DCT.

    The same steps as :func:`imagehash.phash` (LANCZOS to 32x32, DCT-II of rows and columns, the 8x8 lowest
    frequencies against their median), with only those 8x8 coefficients computed (two small matrix
    products); the mirror's coefficients are the same with odd columns negated.
    """
    pixels = np.asarray(gray.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = _DCT8 @ pixels @ _DCT8.T
    return _above_median(low), _above_median(low * _MIRROR_SIGNS)


def _line_activity(g: np.ndarray) -> np.ndarray:
    """Per row of ``g``: the mean absolute second difference along the row (0 on flat or smooth lines)."""
    return np.abs(np.diff(g, n=2, axis=1)).mean(axis=1)


def _band(activity: np.ndarray) -> int:
    """How many lines from the start of ``activity`` belong to a bar: as flat as its first lines, within a margin.

    The threshold follows the bar's own flatness (0 for a solid bar, about 0.5 for a blurred one), so a
    smooth stretch of the picture next to a solid bar is not taken for more bar.
    """
    limit = min(BAR_ACTIVITY, 2 * float(activity[:2].mean()) + 0.5)
    flat = activity < limit
    return int(flat.size if flat.all() else np.argmin(flat))


def _seam(g: np.ndarray, bar: int, inner: int) -> bool:
    """Whether the picture starts along most of line ``inner``: it differs from the bar's last line or has detail."""
    step = np.abs(g[inner] - g[bar]) > BAR_EDGE_CONTRAST
    detail = np.zeros_like(step)
    detail[1:-1] = np.abs(np.diff(g[inner], n=2)) > BAR_ACTIVITY
    return float((step | detail).mean()) >= BAR_EDGE_SHARE


def _edge(g: np.ndarray, band: int, solid: bool) -> int | None:
    """Where the picture starts near line ``band``, if it is a seam: the sharpest change between neighbouring lines
    from 1/16 of the lines before to 1/16 after, or 1/8 after a solid bar (JPEG ringing spreads over the
    16-pixel block of a seam, so the flat band ends early; 8, 16 lines on a 128-line decode)."""
    n = g.shape[0]
    lo, hi = max(1, band - max(2, n // 16)), min(n - 1, band + max(2, n // (8 if solid else 16)) + 1)
    if lo >= hi:
        return None
    k = lo + int(np.argmax(np.abs(np.diff(g[lo - 1 : hi], axis=0)).mean(axis=1)))
    return k if _seam(g, k - 1, k) else None


def _flat_edges(g: np.ndarray) -> tuple[bool, bool]:
    """Whether the top and bottom rows are both flat, and whether the left and right columns are: the least a
    pair of bars needs (most images fail both at once, cheaply)."""
    rows, cols = g[[0, -1]], g[:, [0, -1]].T
    return (
        bool(np.abs(np.diff(rows, n=2, axis=1)).mean(axis=1).max() < BAR_ACTIVITY),
        bool(np.abs(np.diff(cols, n=2, axis=1)).mean(axis=1).max() < BAR_ACTIVITY),
    )


def _bars(g: np.ndarray) -> tuple[int, int]:
    """Bars at the start and end of the rows of ``g``: flat bands of about equal width on both sides, each ending
    in a seam; else (0, 0)."""
    n = g.shape[0]
    if n < 8 or not _flat_edges(g)[0]:
        return 0, 0
    act = _line_activity(g)
    lo, hi = max(2, round(BAR_MIN_SHARE * n)), BAR_MAX_SHARE * n
    a, b = _band(act), _band(act[::-1])
    if not (lo <= a <= hi and lo <= b <= hi):
        return 0, 0
    a, b = _edge(g, a, act[:2].mean() < 0.2), _edge(g[::-1], b, act[-2:].mean() < 0.2)
    if a is None or b is None or abs(a - b) > max(2, 0.1 * max(a, b)):
        return 0, 0
    return a, b


def content_box(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the picture inside letterbox or pillarbox bars, or None without bars.

    Bars come in pairs of about equal width on opposite sides (padding centres the picture), so a flat band on
    one side only (a sky, a studio wall) is left alone; a band must also end in a seam along most of its length,
    which an object standing on a plain background does not make. Rows and columns are first looked at over
    the whole image; once one pair of bars is found, the other direction is looked at inside them (bars
    would otherwise make every line across them look half flat).
    """
    h, w = gray.shape
    rows, cols = _flat_edges(gray)
    top, bottom = _bars(gray) if rows else (0, 0)
    left, right = _bars(gray.T) if cols else (0, 0)
    if not (top or left):
        return None
    if not left:
        left, right = _bars(gray[top : h - bottom].T)
    elif not top:
        top, bottom = _bars(gray[:, left : w - right])
    return left, top, w - right, h - bottom


def _decode(data: bytes, draft: int = DRAFT_SIZE) -> tuple[Image.Image, tuple[int, int]]:
    """The image in RGB at a draft scale that keeps both sides at least ``draft``, and its full size; EXIF-rotated."""
    with Image.open(io.BytesIO(data)) as img:
        full = img.size
        img.draft("RGB", (draft, draft))  # a no-op for formats other than JPEG
        orientation = img.getexif().get(0x0112, 1)
        rgb = ImageOps.exif_transpose(img) if orientation != 1 else img
        rgb = rgb.convert("RGB")
    if orientation in (5, 6, 7, 8):  # a quarter turn: the full size turns too
        full = full[::-1]
    return rgb, full


def image_features(data: bytes, hash_kind: str = "phash") -> ImageFeatures:
    """Features of encoded image bytes; raises OSError/ValueError on bytes that do not decode."""
    if hash_kind not in HASHES:
        raise ValueError(f"hash_kind {hash_kind!r}: choose one of {HASHES}")
    rgb, (full_w, full_h) = _decode(data)
    gray = rgb.convert("L")
    g = np.asarray(gray, dtype=np.float32)
    maybe_bars = any(_flat_edges(g))
    if maybe_bars and rgb.size != (full_w, full_h):  # a seam is found more surely at twice the scale
        rgb, _ = _decode(data, 2 * DRAFT_SIZE)
        gray = rgb.convert("L")
        g = np.asarray(gray, dtype=np.float32)
    dec_w, dec_h = rgb.size
    box = content_box(g) if maybe_bars else None
    share = None
    if box is not None:
        rgb, gray, g = rgb.crop(box), gray.crop(box), g[box[1] : box[3], box[0] : box[2]]
        share = (box[0] / dec_w, box[1] / dec_h, box[2] / dec_w, box[3] / dec_h)
    if hash_kind == "phash":
        h, h_mirror = phash_pair(gray)
    else:
        h, h_mirror = hash_to_int(imagehash.dhash(gray)), hash_to_int(imagehash.dhash(ImageOps.mirror(gray)))
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    work = rgb if rgb.size == (WORK_SIZE, WORK_SIZE) else ImageOps.fit(rgb, (WORK_SIZE, WORK_SIZE), Image.BILINEAR)
    r, g_, b = np.asarray(work).transpose(2, 0, 1)  # channel planes: reductions over a length-3 axis are slow
    wg = g if work is rgb else np.asarray(work.convert("L"), dtype=np.float32)
    n = WORK_SIZE // BLOCK
    tiles = wg.reshape(n, BLOCK, n, BLOCK)
    block_var = (tiles * tiles).mean(axis=(1, 3)) - tiles.mean(axis=(1, 3)) ** 2  # per 8x8 block
    return ImageFeatures(
        hash=h,
        hash_mirror=h_mirror,
        width=max(1, round(full_w * rgb.width / dec_w)),
        height=max(1, round(full_h * rgb.height / dec_h)),
        box=share,
        gray_std=float(wg.std()),
        texture=float((block_var >= 16.0).mean()),  # block std >= 4 grey levels
        colour=float((np.maximum(np.maximum(r, g_), b) - np.minimum(np.minimum(r, g_), b)).mean()),
        sharpness=float(np.abs(lap).mean()) if lap.size else 0.0,
    )


def full_pixel_sha256(data: bytes) -> str:
    """sha256 of the fully decoded, EXIF-rotated RGB pixels and their size: equal for re-saves of one picture."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
