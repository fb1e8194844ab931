"""From accepted images to a versioned WebDataset: preprocessing, the holdout split, shards, the index.

A dataset version is the sha256 of its index (shard keys and hashes, counts, preprocessing
settings), and shards are content-addressed, so the same accepted images and settings give the
same version bit for bit, and an old version's index still points at shards that exist.

Two orders are derived from each image's sha256 and nothing else, so they hold as data grows:
- the holdout split: ``int(sha256[:16], 16) / 2**64 < holdout_fraction``; an image's split never
  changes when other images arrive (and raising the fraction only moves images into holdout);
- the shuffle: sorted by ``sha256(f"{seed}:{key}")``, which mixes classes evenly.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from pipelines.shards import ShardInfo, write_shards
from pipelines.storage import Storage, StorageError

logger = logging.getLogger(__name__)

LATEST_KEY = "datasets/latest.json"
SAMPLES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # the sample's __key__: the sha256 of the raw image bytes
        ("class", pa.string()),
        ("cls", pa.int16()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("raw_partition", pa.string()),
    ]
)


@dataclass(frozen=True)
class DatasetSettings:
    classes: tuple[str, ...] = ("dogs", "null", "satellite")  # class index = position here
    resolution: int = 64
    image_format: str = "jpg"  # or "png" (lossless, about 3x larger)
    jpeg_quality: int = 95
    holdout_fraction: float = 0.05
    seed: int = 0
    shard_max_count: int = 2_000  # small enough that every loader worker gets shards of a modest dataset
    shard_max_bytes: int = 256 * 2**20
    workers: int = field(default_factory=lambda: os.cpu_count() or 2, compare=False)

    def __post_init__(self) -> None:
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format {self.image_format!r}: use 'jpg' or 'png'")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction {self.holdout_fraction}: use a share in [0, 1)")

    def preprocessing(self) -> dict:
        """What the index records: everything that changes the pixels or the split."""
        out = {k: v for k, v in asdict(self).items() if k not in ("workers", "shard_max_count", "shard_max_bytes")}
        out["classes"] = list(self.classes)
        out["steps"] = ["exif_transpose", "trim_letterbox", "rgb_on_white", "centre_crop_square", "lanczos_resize"]
        return out


def in_holdout(key: str, fraction: float) -> bool:
    return int(key[:16], 16) / 2**64 < fraction


def shuffle_key(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def preprocess(
    data: bytes,
    resolution: int,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    box: Sequence[float] | None = None,
) -> bytes:
    """EXIF orientation, the picture inside its letterbox bars (``box``: shares of the image, from curation),
    RGB (transparency onto white), centre square crop, LANCZOS resize, encode."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (2 * resolution, 2 * resolution))  # JPEG: decode at >= 2x the target, much cheaper
        img = ImageOps.exif_transpose(img)
        if box is not None:
            w, h = img.size
            img = img.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        img = ImageOps.fit(img.convert("RGB"), (resolution, resolution), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if image_format == "jpg":
        img.save(out, "JPEG", quality=jpeg_quality, subsampling=0)
    else:
        img.save(out, "PNG", optimize=False, compress_level=6)
    return out.getvalue()


@dataclass
class DatasetIndex:
    version: str
    index: dict
    key: str  # where the index JSON lives

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return self.index["counts"]


def index_key(version: str) -> str:
    return f"datasets/versions/{version}/index.json"


def _samples(storage: Storage, rows: Sequence[dict], s: DatasetSettings, log: Callable[[str], None]) -> Iterator[dict]:
    """Preprocessed samples in the given order, decoded ahead in threads (Pillow releases the GIL)."""

    def one(r: dict) -> dict:
        meta = json.loads(r["meta"]) if r.get("meta") else {}
        return {
            "__key__": r["sha256"],
            s.image_format: preprocess(
                storage.get_bytes(r["storage_key"]), s.resolution, s.image_format, s.jpeg_quality, r.get("box")
            ),
            "cls": s.classes.index(r["class"]),
            "json": {
                "class": r["class"],
                "source": r["source"],
                "url": r["url"],
                "license": r["license"],
                "raw_partition": r["raw_partition"],
                "original_size": [r["width"], r["height"]],
                "phash": f"{r['hash']:016x}",  # the perceptual hash curation used (kind: its settings)
                **{k: meta[k] for k in ("breed", "z", "x", "y", "author", "attribution", "creator") if k in meta},
            },
        }

    t0, last = time.monotonic(), time.monotonic()
    with ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="preprocess") as pool:
        for n, sample in enumerate(pool.map(one, rows), 1):
            if time.monotonic() - last > 10:
                last = time.monotonic()
                log(f"preprocessed {n}/{len(rows)} images, {n / (last - t0):.0f} images/s")
            yield sample


def build_dataset(
    storage: Storage,
    accepted: Sequence[dict],
    settings: DatasetSettings | None = None,
    *,
    curated_version: str | None = None,
    log: Callable[[str], None] = logger.info,
) -> DatasetIndex:
    """Write the shards of the accepted decision rows, the index and the per-sample table; return the index."""
    s = settings or DatasetSettings()
    rows = sorted((r for r in accepted if r["class"] in s.classes), key=lambda r: shuffle_key(r["sha256"], s.seed))
    splits = {"train": [r for r in rows if not in_holdout(r["sha256"], s.holdout_fraction)]}
    splits["holdout"] = [r for r in rows if in_holdout(r["sha256"], s.holdout_fraction)]
    shards: dict[str, list[ShardInfo]] = {}
    members: list[dict] = []
    for split, split_rows in splits.items():
        infos = write_shards(
            storage,
            _samples(storage, split_rows, s, log),
            prefix="datasets/shards",
            max_count=s.shard_max_count,
            max_bytes=s.shard_max_bytes,
        )
        shards[split] = infos
        it = iter(split_rows)
        for info in infos:
            for r in (next(it) for _ in range(info.count)):
                members.append(
                    {
                        "key": r["sha256"],
                        "class": r["class"],
                        "cls": s.classes.index(r["class"]),
                        "split": split,
                        "shard": info.key,
                        "source": r["source"],
                        "url": r["url"],
                        "raw_partition": r["raw_partition"],
                    }
                )
    index = {
        "format": "webdataset",
        "classes": list(s.classes),
        "preprocessing": s.preprocessing(),
        "splits": {k: [asdict(i) for i in v] for k, v in shards.items()},
        "counts": {k: dict(sorted(Counter(r["class"] for r in v).items())) for k, v in splits.items()},
    }
    blob = json.dumps(index, sort_keys=True, indent=1).encode()
    version = hashlib.sha256(blob).hexdigest()[:16]
    key = index_key(version)
    if not storage.exists(key):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(members, schema=SAMPLES_SCHEMA), buf, compression="zstd")
        storage.put_bytes(f"datasets/versions/{version}/samples.parquet", buf.getvalue())
        storage.put_bytes(key, blob)  # last: an index only exists once everything it names does
    latest = {"version": version, "index": key, "curated_version": curated_version, "root_url": storage.root_url}
    storage.put_bytes(LATEST_KEY, json.dumps(latest, indent=1).encode())
    return DatasetIndex(version=version, index=index, key=key)


def load_index(storage: Storage, version: str | None = None) -> DatasetIndex:
    """A dataset version's index; the latest one when ``version`` is None."""
    if version is None:
        version = json.loads(storage.get_bytes(LATEST_KEY))["version"]
    key = index_key(version)
    return DatasetIndex(version=version, index=json.loads(storage.get_bytes(key)), key=key)


def verify_shard(storage: Storage, shard: dict) -> str | None:
    """None when the shard's bytes match its recorded sha256 and size, else what is wrong."""
    sha, size = hashlib.sha256(), 0
    try:
        with storage.open_read(shard["key"]) as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
    except (OSError, StorageError) as e:
        return f"unreadable: {e}"
    if size != shard["bytes"] or sha.hexdigest() != shard["sha256"]:
        return (
            f"{size} bytes with sha256 {sha.hexdigest()[:12]}, index says {shard['bytes']} and {shard['sha256'][:12]}"
        )
    return None
