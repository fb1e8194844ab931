"""Decide, for every ingested image, whether the model may see it: the ``curated_images`` step.

A GAN memorises duplicates and collapses on junk, so each image gets exactly one decision with a
reason, kept as a Parquet table with the lineage columns:

1. ``exact_duplicate``: the same bytes as an earlier image of its class;
2. quality: ``too_small`` (below the training resolution, or a thumbnail the ingest kept only for this
   link), ``extreme_aspect``, ``near_uniform`` (blank and placeholder tiles), ``low_detail`` (open ocean,
   fog), ``undecodable``. Sizes are the picture's, without letterbox bars (pipelines/features.py); a
   ``too_small`` image near an accepted one names it in ``duplicate_of`` ("where else does it appear");
3. ``pixel_duplicate``: the same fully decoded pixels as an accepted image of its class (a re-save),
   checked only for images whose hash already matched;
4. ``near_duplicate``: a perceptual hash within ``radius`` bits of an accepted image of its class, or of
   its mirror image (``mirrored``); ``superseded``: it was accepted until a better copy of the same
   picture arrived (colour over grayscale, more pixels, no bars, sharper, a larger file of the same
   format: :func:`better`), which replaced it (``duplicate_of`` names the better copy);
5. ``label_conflict``: near an accepted image of a class that ranks higher in ``class_priority``
   (a dog photo that slipped into "null"). Accepting an image also drops accepted lower-ranked
   images near it, whatever came first.

Partitions are processed in a fixed order, (day, class priority), each image against everything
accepted before it. A refresh continues from the saved decisions when the partitions it saw
before are unchanged and every new one sorts after them; otherwise (a backfill of an earlier day,
a re-fetched partition, changed settings) it starts over. Either way the result is what a full
recompute gives, and features are cached by sha256, so no image is hashed twice. Dataset versions
built before keep their images; the next one has the better copy.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import manifest as mf
from pipelines.features import COLOUR_MIN, FEATURES_VERSION, HASHES, full_pixel_sha256, image_features
from pipelines.hamming import HammingIndex, self_join
from pipelines.procmap import available_cores, process_map
from pipelines.storage import Storage, StorageError

logger = logging.getLogger(__name__)

DECISIONS_KEY = "curated/decisions.parquet"
FEATURES_KEY = "curated/features.parquet"
PIXELS_KEY = "curated/pixels.parquet"  # sha256 -> sha256 of the fully decoded pixels, for hash-matched images
STATE_KEY = "curated/state.json"
INGESTED = ("ok", "already_seen")  # manifest rows that carry an image for training
THUMBNAIL = "too_small"  # manifest rows whose image was kept only to be linked to the picture it shows
LOGIC_VERSION = 2  # bump when a decision rule changes: the next refresh starts over

# Keep-best margins (see benchmarks/README.md, "Keeping the best copy"): below them two copies count as equal
# and the one that came first stays.
AREA_MARGIN = 1.1  # pixels of the picture
SHARPNESS_MARGIN = 2.0  # blur halves it at sigma 1 px; re-encodes move it by up to 1.5x either way
BYTES_MARGIN = 1.15  # the same format and size: a larger file is a less compressed copy

_BOX = pa.list_(pa.float32(), 4)
FEATURES_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("hash_kind", pa.string()),
        ("version", pa.int16()),
        ("hash", pa.uint64()),
        ("hash_mirror", pa.uint64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("box", _BOX),
        ("gray_std", pa.float32()),
        ("texture", pa.float32()),
        ("colour", pa.float32()),
        ("sharpness", pa.float32()),
        ("error", pa.string()),
    ]
)
PIXELS_SCHEMA = pa.schema([("sha256", pa.string()), ("pixel_sha256", pa.string())])
DECISIONS_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("class", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("raw_partition", pa.string()),  # "<class>|<day>": the raw_images partition it came from
        ("storage_key", pa.string()),
        ("width", pa.int32()),  # the file's size, as ingested
        ("height", pa.int32()),
        ("format", pa.string()),
        ("bytes", pa.int64()),
        ("license", pa.string()),
        ("meta", pa.string()),
        ("thumbnail", pa.bool_()),  # the ingest refused it as too small and kept it for its links only
        ("picture_width", pa.int32()),  # the picture's size: EXIF-rotated, letterbox bars trimmed
        ("picture_height", pa.int32()),
        ("box", _BOX),  # the picture inside its bars, as shares of the image (null: no bars); the shard crop
        ("pixel_sha256", pa.string()),  # of the full decode; only computed for images whose hash matched
        ("hash", pa.uint64()),
        ("hash_mirror", pa.uint64()),
        ("gray_std", pa.float32()),
        ("texture", pa.float32()),
        ("colour", pa.float32()),
        ("sharpness", pa.float32()),
        ("decision", pa.string()),  # accept | reject
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),  # sha256 of the image it duplicates, conflicts with or was superseded by
        ("duplicate_class", pa.string()),
        ("distance", pa.int16()),  # Hamming distance to duplicate_of
        ("mirrored", pa.bool_()),  # duplicate_of is its mirror image
    ]
)


@dataclass(frozen=True)
class CurateSettings:
    """Every knob that changes a decision; its fingerprint decides when to start over."""

    hash_kind: str = "phash"
    radius: int = 4  # see benchmarks/README.md, "Near-duplicate detection: choosing the radius"
    class_priority: tuple[str, ...] = ("dogs", "satellite", "null")
    min_side: int = 64
    max_aspect: float = 2.0
    min_gray_std: float = 3.0
    min_texture: float = 0.1
    workers: int = field(default_factory=available_cores, compare=False)  # hashing processes

    def __post_init__(self) -> None:
        if self.hash_kind not in HASHES:
            raise ValueError(
                f"hash_kind {self.hash_kind!r}: choose one of {', '.join(HASHES)} (aHash and wHash were dropped: "
                "they put distinct photos within the radius far more often, see benchmarks/README.md)"
            )
        if not 0 <= self.radius <= 16:
            raise ValueError(f"radius {self.radius}: a Hamming radius over 64 bits between 0 and 16")

    def fingerprint(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "workers"}
        fields["logic"] = LOGIC_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CurateReport:
    mode: str  # "incremental" or "full: <why>"
    partitions: int
    new_partitions: list[str]
    raw_versions: dict[str, str]  # raw partition -> manifest content version: the lineage of this decision table
    rows: int
    hashed: int  # images decoded this run (the rest came from the feature cache)
    counts: dict[str, dict[str, int]]  # class -> reason ("accept" for accepted) -> n
    version: str
    elapsed_s: float
    pixel_checked: int = 0  # images fully decoded this run to compare pixels

    @property
    def accepted(self) -> int:
        return sum(c.get("accept", 0) for c in self.counts.values())


@dataclass(frozen=True)
class _Partition:
    class_name: str
    day: str
    key: str
    version: str

    @property
    def name(self) -> str:
        return f"{self.class_name}|{self.day}"


def _partitions(storage: Storage, settings: CurateSettings) -> list[tuple[_Partition, list[dict]]]:
    """Every raw manifest with its image rows, in processing order: day, then class priority."""
    rank = {c: i for i, c in enumerate(settings.class_priority)}
    found = []
    for class_name in settings.class_priority:
        for key in mf.class_manifests(storage, class_name):
            rows = mf.read_table(storage, key).to_pylist()
            day = key.rsplit("/", 1)[1].removesuffix(".parquet")
            found.append((_Partition(class_name, day, key, mf.content_version(rows)), rows))
    found.sort(key=lambda p: (p[0].day, rank[p[0].class_name]))
    return found


def better(a: dict, b: dict) -> bool:
    """Whether ``a`` is clearly the better copy of the picture ``b`` shows; within the margins neither is.

    In order: colour beats grayscale; more pixels beat fewer; a picture without bars beats a letterboxed
    one; a sharper one beats a blurred one; of the same format, a larger file beats a more compressed one.
    """
    colour_a, colour_b = a["colour"] >= COLOUR_MIN, b["colour"] >= COLOUR_MIN
    if colour_a != colour_b:
        return colour_a
    area_a, area_b = a["picture_width"] * a["picture_height"], b["picture_width"] * b["picture_height"]
    if max(area_a, area_b) > AREA_MARGIN * min(area_a, area_b):
        return area_a > area_b
    if (a["box"] is None) != (b["box"] is None):
        return a["box"] is None
    if max(a["sharpness"], b["sharpness"]) > SHARPNESS_MARGIN * min(a["sharpness"], b["sharpness"]):
        return a["sharpness"] > b["sharpness"]
    return a["format"] == b["format"] and a["bytes"] > BYTES_MARGIN * b["bytes"]


Match = tuple[int, int, bool]  # (distance, row, mirrored)


class _Curator:
    """The decisions so far and what later images are compared against."""

    def __init__(self, settings: CurateSettings, pixels: Callable[[dict], str | None]) -> None:
        self.s = settings
        self.pixels = pixels  # the full-decode pixel hash of a row (cached by the caller)
        self.rank = {c: i for i, c in enumerate(settings.class_priority)}
        self.rows: list[dict] = []
        self.first_sha: dict[tuple[str, str], int] = {}  # (class, sha256) -> first row
        self.index = {c: HammingIndex(settings.radius) for c in settings.class_priority}
        self.thumbs = {c: HammingIndex(settings.radius) for c in settings.class_priority}  # too_small rows

    def restore(self, rows: list[dict]) -> None:
        """Rebuild the state from saved decisions, exactly as if they had just been made."""
        self.rows = rows
        by_class: dict[str, list[int]] = {c: [] for c in self.s.class_priority}
        thumbs: dict[str, list[int]] = {c: [] for c in self.s.class_priority}
        for i, r in enumerate(rows):
            self.first_sha.setdefault((r["class"], r["sha256"]), i)
            if r["hash"] is None or r["reason"] in ("exact_duplicate", "undecodable"):
                continue
            reason = _quality(r, self.s)
            if reason is None:
                by_class[r["class"]].append(i)  # indexed even if later dropped: matches keep accepted rows only
            elif reason == "too_small":
                thumbs[r["class"]].append(i)
        for target, groups in ((self.index, by_class), (self.thumbs, thumbs)):
            for c, ids in groups.items():
                if ids:
                    target[c].add(np.array([rows[i]["hash"] for i in ids], np.uint64), np.array(ids, np.int64))

    def _matches(self, index: HammingIndex, hashes: np.ndarray, mirrors: np.ndarray) -> dict[int, list[Match]]:
        """Stored rows within the radius of each query's hash or of its mirror's, grouped by query."""
        out: dict[int, list[Match]] = {}
        if not len(index):
            return out
        for flag, queries in ((False, hashes), (True, mirrors)):
            for q, i, d in zip(*(x.tolist() for x in index.search(queries)), strict=True):
                out.setdefault(q, []).append((d, i, flag))
        return out

    def _accepted(self, matches: list[Match]) -> list[Match]:
        """The matches still accepted, one per row (the closer of a direct and a mirrored match), closest first."""
        best: dict[int, Match] = {}
        for m in matches:
            if self.rows[m[1]]["decision"] == "accept" and (m[1] not in best or m < best[m[1]]):
                best[m[1]] = m
        return sorted(best.values())

    def add_partition(self, part: _Partition, rows: list[dict]) -> None:
        c = part.class_name
        start = len(self.rows)
        self.rows.extend(rows)
        candidates: list[int] = []
        thumbs: list[int] = []
        for i in range(start, len(self.rows)):
            r = self.rows[i]
            first = self.first_sha.setdefault((c, r["sha256"]), i)
            if first != i:
                _reject(r, "exact_duplicate", self.rows[first], 0)
            elif r["hash"] is None:
                _reject(r, "undecodable")
            elif reason := _quality(r, self.s):
                _reject(r, reason)
                if reason == "too_small":
                    thumbs.append(i)
            else:
                candidates.append(i)
        if thumbs:
            self._link_thumbnails(c, thumbs)
        if candidates:
            self._decide(c, candidates)

    def _link_thumbnails(self, c: str, thumbs: list[int]) -> None:
        """Name, for each new too-small image, the accepted image of its class it shows; index it for later ones."""
        hashes, mirrors = self._hashes(thumbs)
        found = self._matches(self.index[c], hashes, mirrors)
        for q, i in enumerate(thumbs):
            if live := self._accepted(found.get(q, [])):
                d, j, m = min(live)
                _link(self.rows[i], self.rows[j], d, m)
        self.thumbs[c].add(hashes, np.array(thumbs, np.int64))

    def _hashes(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.array([self.rows[i]["hash"] for i in ids], np.uint64),
            np.array([self.rows[i]["hash_mirror"] for i in ids], np.uint64),
        )

    def _within(self, hashes: np.ndarray, mirrors: np.ndarray, ids: list[int]) -> dict[int, list[Match]]:
        """Matches among the batch itself, each listed under the later image of the pair."""
        within: dict[int, list[Match]] = {}
        for a, b, d in zip(*(x.tolist() for x in self_join(hashes, self.s.radius)), strict=True):
            within.setdefault(b, []).append((d, ids[a], False))  # a < b: a came first
        batch = HammingIndex(self.s.radius)
        batch.add(hashes, np.arange(len(ids), dtype=np.int64))
        for q, a, d in zip(*(x.tolist() for x in batch.search(mirrors)), strict=True):
            if a != q:  # a picture symmetric enough to match its own mirror is not a pair
                first, later = min(a, q), max(a, q)
                within.setdefault(later, []).append((d, ids[first], True))
        return within

    def _decide(self, c: str, candidates: list[int]) -> None:
        hashes, mirrors = self._hashes(candidates)
        found = {k: self._matches(self.index[k], hashes, mirrors) for k in self.s.class_priority}
        within = self._within(hashes, mirrors, candidates)
        for q, i in enumerate(candidates):
            r = self.rows[i]
            same = self._accepted(found[c].get(q, []) + within.get(q, []))
            higher = [
                m
                for k in self.s.class_priority
                if self.rank[k] < self.rank[c]
                for m in self._accepted(found[k].get(q, []))
            ]
            if same:
                twin = next((m for m in same if not m[2] and self._same_pixels(r, self.rows[m[1]])), None)
                if twin is not None:
                    _reject(r, "pixel_duplicate", self.rows[twin[1]], twin[0])
                    continue
                if not all(better(r, self.rows[j]) for _, j, _ in same):
                    d, j, m = min(same)
                    _reject(r, "near_duplicate", self.rows[j], d, m)
                    continue
            if higher:
                d, j, m = min(higher)
                _reject(r, "label_conflict", self.rows[j], d, m)
                continue
            r["decision"], r["reason"] = "accept", ""
            for d, j, m in same:
                _reject(self.rows[j], "superseded", r, d, m)
            for k in self.s.class_priority[self.rank[c] + 1 :]:
                for d, j, m in self._accepted(found[k].get(q, [])):
                    _reject(self.rows[j], "label_conflict", r, d, m)
        self.index[c].add(hashes, np.array(candidates, np.int64))
        self._link_back(c, candidates, hashes, mirrors)

    def _same_pixels(self, a: dict, b: dict) -> bool:
        pa_, pb = self.pixels(a), self.pixels(b)
        return pa_ is not None and pa_ == pb

    def _link_back(self, c: str, candidates: list[int], hashes: np.ndarray, mirrors: np.ndarray) -> None:
        """Too-small images that arrived before the picture they show: link them to it, if it is still accepted."""
        found = self._matches(self.thumbs[c], hashes, mirrors)
        links: dict[int, Match] = {}
        for q, matches in found.items():
            i = candidates[q]
            if self.rows[i]["decision"] != "accept":
                continue
            for d, t, m in matches:
                if self.rows[t]["duplicate_of"] is None and (t not in links or (d, i, m) < links[t]):
                    links[t] = (d, i, m)
        for t, (d, i, m) in links.items():
            _link(self.rows[t], self.rows[i], d, m)


def _quality(r: dict, s: CurateSettings) -> str | None:
    w, h = r["picture_width"], r["picture_height"]
    if r["thumbnail"] or min(w, h) < s.min_side:
        return "too_small"
    if max(w, h) / min(w, h) > s.max_aspect:
        return "extreme_aspect"
    if r["gray_std"] < s.min_gray_std:
        return "near_uniform"
    if r["texture"] < s.min_texture:
        return "low_detail"
    return None


def _reject(
    r: dict, reason: str, other: dict | None = None, distance: int | None = None, mirrored: bool = False
) -> None:
    r["decision"], r["reason"] = "reject", reason
    _link(r, other, distance, mirrored)


def _link(r: dict, other: dict | None, distance: int | None, mirrored: bool) -> None:
    r["duplicate_of"] = other["sha256"] if other else None
    r["duplicate_class"] = other["class"] if other else None
    r["distance"] = distance
    r["mirrored"] = mirrored if other else None


def _read_rows(storage: Storage, key: str) -> list[dict]:
    return mf.read_table(storage, key).to_pylist() if storage.exists(key) else []


def _features_row(storage: Storage, hash_kind: str, item: tuple[str, str]) -> dict:
    """The feature cache row of one stored image (run in a worker process)."""
    sha, key = item
    row = {"sha256": sha, "hash_kind": hash_kind, "version": FEATURES_VERSION}
    try:
        return row | vars(image_features(storage.get_bytes(key), hash_kind)) | {"error": None}
    except (OSError, ValueError, StorageError) as e:  # a stored object that vanished or rotted
        return row | {"error": f"{type(e).__name__}: {e}"}


def _crashed_row(hash_kind: str, item: tuple[str, str]) -> dict:
    return {
        "sha256": item[0],
        "hash_kind": hash_kind,
        "version": FEATURES_VERSION,
        "error": "decoding it killed the process",
    }


def _compute_features(
    storage: Storage, keys: dict[str, str], hash_kind: str, processes: int, log: Callable[[str], None]
) -> list[dict]:
    """Features of the images ``{sha256: storage_key}``, in ``processes`` worker processes (every core)."""
    out: list[dict] = []
    t0, last = time.monotonic(), time.monotonic()
    rows = process_map(
        partial(_features_row, storage, hash_kind),
        sorted(keys.items()),
        processes=processes,
        crashed=partial(_crashed_row, hash_kind),
    )
    for f in rows:
        out.append(f)
        if time.monotonic() - last > 10:
            last = time.monotonic()
            log(f"hashed {len(out)}/{len(keys)} images, {len(out) / (last - t0):.0f} images/s")
    return out


def _decision_rows(part: _Partition, rows: list[dict], features: dict[str, dict]) -> list[dict]:
    out = []
    for r in rows:
        thumbnail = r["status"] == THUMBNAIL and bool(r["storage_key"])
        if r["status"] not in INGESTED and not thumbnail:
            continue
        f = features.get(r["sha256"], {})
        out.append(
            {
                "sha256": r["sha256"],
                "class": part.class_name,
                "source": r["source"],
                "url": r["url"],
                "raw_partition": part.name,
                "storage_key": r["storage_key"],
                "width": r["width"],
                "height": r["height"],
                "format": r["format"],
                "bytes": r["bytes"],
                "license": r["license"],
                "meta": r["meta"],
                "thumbnail": thumbnail,
                "picture_width": f.get("width"),
                "picture_height": f.get("height"),
                "box": f.get("box"),
                "pixel_sha256": None,
                "hash": f.get("hash"),
                "hash_mirror": f.get("hash_mirror"),
                "gray_std": f.get("gray_std"),
                "texture": f.get("texture"),
                "colour": f.get("colour"),
                "sharpness": f.get("sharpness"),
                "decision": None,
                "reason": None,
                "duplicate_of": None,
                "duplicate_class": None,
                "distance": None,
                "mirrored": None,
            }
        )
    return out


class _PixelCache:
    """Full-decode pixel hashes by sha256, computed on first use and saved with the other caches."""

    def __init__(self, storage: Storage, rows: list[dict]) -> None:
        self.storage = storage
        self.known = {r["sha256"]: r["pixel_sha256"] for r in rows}
        self.fresh: list[dict] = []

    def __call__(self, row: dict) -> str | None:
        sha = row["sha256"]
        if sha not in self.known:
            try:
                self.known[sha] = full_pixel_sha256(self.storage.get_bytes(row["storage_key"]))
            except (OSError, ValueError, StorageError):  # unreadable now: never "the same pixels"
                self.known[sha] = None
            self.fresh.append({"sha256": sha, "pixel_sha256": self.known[sha]})
        row["pixel_sha256"] = self.known[sha]
        return self.known[sha]


def _write_parquet(storage: Storage, key: str, rows: Sequence[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(list(rows), schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.put_bytes(key, buf.getvalue())


def decisions_version(rows: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["sha256"], r["class"], r["decision"], r["reason"], r["duplicate_of"]]).encode())
    return h.hexdigest()[:16]


def read_decisions(storage: Storage) -> list[dict]:
    return _read_rows(storage, DECISIONS_KEY)


def curate(
    storage: Storage, settings: CurateSettings | None = None, *, log: Callable[[str], None] = logger.info
) -> CurateReport:
    """Bring the decisions table up to date with every raw manifest in storage."""
    s = settings or CurateSettings()
    t0 = time.perf_counter()
    parts = _partitions(storage, s)
    state = json.loads(storage.get_bytes(STATE_KEY)) if storage.exists(STATE_KEY) else None
    seen = [(p.key, p.version) for p, _ in parts]
    done: list[list[str]] = state["processed"] if state else []
    if state is None or not storage.exists(DECISIONS_KEY):
        mode, start = "full: first run", 0
    elif state["settings"] != s.fingerprint():
        mode, start = "full: settings changed", 0
    elif [tuple(x) for x in done] != seen[: len(done)]:
        mode, start = "full: an earlier partition is new or changed", 0
    else:
        mode, start = "incremental", len(done)
    log(f"curate: {len(parts)} partitions, {len(parts) - start} to process ({mode})")

    # Every hash kind ever used stays cached (switching back costs nothing); features of older definitions go.
    cache = [r for r in _read_rows(storage, FEATURES_KEY) if r.get("version") == FEATURES_VERSION]
    features = {r["sha256"]: r for r in cache if r["hash_kind"] == s.hash_kind}
    wanted = {
        r["sha256"]: r["storage_key"]
        for _, rows in parts[start:]
        for r in rows
        if (r["status"] in INGESTED or (r["status"] == THUMBNAIL and r["storage_key"])) and r["sha256"] not in features
    }
    fresh = _compute_features(storage, wanted, s.hash_kind, s.workers, log) if wanted else []
    if fresh:
        _write_parquet(storage, FEATURES_KEY, cache + fresh, FEATURES_SCHEMA)
        features.update({f["sha256"]: f for f in fresh})

    pixels = _PixelCache(storage, _read_rows(storage, PIXELS_KEY))
    curator = _Curator(s, pixels)
    if start:
        curator.restore(read_decisions(storage))
    for part, rows in parts[start:]:
        curator.add_partition(part, _decision_rows(part, rows, features))
    if pixels.fresh:
        _write_parquet(
            storage, PIXELS_KEY, [{"sha256": k, "pixel_sha256": v} for k, v in pixels.known.items()], PIXELS_SCHEMA
        )
    _write_parquet(storage, DECISIONS_KEY, curator.rows, DECISIONS_SCHEMA)
    storage.put_bytes(STATE_KEY, json.dumps({"settings": s.fingerprint(), "processed": seen}, indent=1).encode())

    counts: dict[str, Counter[str]] = {c: Counter() for c in s.class_priority}
    for r in curator.rows:
        counts[r["class"]][r["reason"] or "accept"] += 1
    return CurateReport(
        mode=mode,
        partitions=len(parts),
        new_partitions=[p.name for p, _ in parts[start:]],
        raw_versions={p.name: p.version for p, _ in parts},
        rows=len(curator.rows),
        hashed=len(fresh),
        counts={c: dict(n) for c, n in counts.items()},
        version=decisions_version(curator.rows),
        elapsed_s=time.perf_counter() - t0,
        pixel_checked=len(pixels.fresh),
    )


def cross_class_conflicts(rows: Sequence[dict], radius: int) -> int:
    """Pairs of accepted images of different classes within ``radius``: zero after a correct curation."""
    by_class: dict[str, list[int]] = {}
    for r in rows:
        if r["decision"] == "accept":
            by_class.setdefault(r["class"], []).append(r["hash"])
    classes = sorted(by_class)
    pairs = 0
    for i, c in enumerate(classes):
        index = HammingIndex(radius)
        index.add(np.array(by_class[c], np.uint64), np.arange(len(by_class[c]), dtype=np.int64))
        for k in classes[i + 1 :]:
            pairs += len(index.search(np.array(by_class[k], np.uint64))[0])
    return pairs
