"""What curation needs to know about one image, from one cheap decode.

JPEGs are decoded in PIL's draft mode (the decoder scales by 1/2, 1/4 or 1/8 in the DCT, so a
256x256 tile costs a fraction of a full decode): a perceptual hash looks at 32x32 pixels and the
quality measures at 64x64, so nothing is lost. The pixel hash is taken from that same decode: two
files that decode to the same pixels (a re-saved PNG, a JPEG with its metadata stripped) are the
same picture; anything that differs only below that scale is caught as a near duplicate anyway.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageOps

HASHES = {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash, "whash": imagehash.whash}
WORK_SIZE = 64  # side of the grayscale image the quality measures look at
BLOCK = 8  # texture is measured in BLOCK x BLOCK tiles of the work image


@dataclass(frozen=True)
class ImageFeatures:
    """Size-independent: the original width and height are in the raw manifest already."""

    pixel_sha256: str
    hash: int  # 64-bit perceptual hash, as an unsigned int
    gray_std: float  # 0 for a flat image; real photos are 20-80
    texture: float  # share of 8x8 blocks with any texture (std >= 4 grey levels)


def hash_to_int(h: imagehash.ImageHash) -> int:
    return int.from_bytes(np.packbits(h.hash.flatten()).tobytes(), "big")


def image_features(data: bytes, hash_kind: str = "phash") -> ImageFeatures:
    """Features of encoded image bytes; raises OSError/ValueError on bytes that do not decode."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (2 * WORK_SIZE, 2 * WORK_SIZE))  # a no-op for formats other than JPEG
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    pixels = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
    gray = np.asarray(ImageOps.fit(rgb.convert("L"), (WORK_SIZE, WORK_SIZE), Image.Resampling.BILINEAR), np.float32)
    n = WORK_SIZE // BLOCK
    blocks = gray.reshape(n, BLOCK, n, BLOCK).transpose(0, 2, 1, 3).reshape(n * n, BLOCK * BLOCK)
    return ImageFeatures(
        pixel_sha256=pixels,
        hash=hash_to_int(HASHES[hash_kind](rgb)),
        gray_std=float(gray.std()),
        texture=float((blocks.std(axis=1) >= 4.0).mean()),
    )
