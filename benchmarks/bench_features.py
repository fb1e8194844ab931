"""Curation's per-image cost: ``image_features`` (draft decode, pHash, pixel hash, quality measures) on
256x256 JPEG tiles, single-threaded and on a thread pool as ``curate`` runs it, beside the CPU-bound
limit of a plain full decode. Run by hand: ``python benchmarks/bench_features.py``.
"""

from __future__ import annotations

import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from pipelines.features import image_features

TILES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tiles"


def rate(fn, items: list[bytes], threads: int = 1, passes: int = 5) -> float:
    """Best images/s over ``passes`` (the first pass warms caches)."""
    best = 0.0
    for _ in range(passes):
        t0 = time.perf_counter()
        if threads == 1:
            for x in items:
                fn(x)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(fn, items))
        best = max(best, len(items) / (time.perf_counter() - t0))
    return best


def full_decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as img:
        img.load()


def main() -> None:
    tiles = [p.read_bytes() for p in sorted(TILES.glob("*.jpg")) if Image.open(p).size == (256, 256)]
    cores = os.cpu_count() or 1
    print(f"{len(tiles)} real 256x256 JPEG tiles, {cores} cores")
    decode = rate(full_decode, tiles)
    feats = rate(image_features, tiles)
    pooled = rate(image_features, tiles, threads=cores)
    print(f"full decode alone (CPU-bound limit, 1 thread): {decode:7.0f} images/s")
    print(
        f"image_features, 1 thread:                      {feats:7.0f} images/s ({feats / decode:.2f}x of a full decode)"
    )
    print(f"image_features, {cores} threads: {pooled:7.0f} images/s ({pooled / feats:.2f}x of 1 thread)")


if __name__ == "__main__":
    main()
