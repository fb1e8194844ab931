"""Decide, for every ingested image, whether the model may see it: the ``curated_images`` step.

A GAN memorises duplicates and collapses on junk, so each image gets exactly one decision with a
reason, kept as a Parquet table with the lineage columns:

1. ``exact_duplicate``: the same bytes as an earlier image of its class;
2. quality: ``too_small`` (below the training resolution), ``extreme_aspect``, ``near_uniform``
   (blank and placeholder tiles), ``low_detail`` (open ocean, fog), ``undecodable``;
3. ``pixel_duplicate``: the same decoded pixels as an accepted image of its class (a re-save);
4. ``near_duplicate``: a perceptual hash within ``radius`` bits of an accepted image of its class;
5. ``label_conflict``: near an accepted image of a class that ranks higher in ``class_priority``
   (a dog photo that slipped into "null"). Accepting an image also drops accepted lower-ranked
   images near it, whatever came first.

Partitions are processed in a fixed order, (day, class priority), each image against everything
accepted before it. A refresh continues from the saved decisions when the partitions it saw
before are unchanged and every new one sorts after them; otherwise (a backfill of an earlier day,
a re-fetched partition, changed settings) it starts over. Either way the result is what a full
recompute gives, and features are cached by sha256, so no image is hashed twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import manifest as mf
from pipelines.features import HASHES, image_features
from pipelines.hamming import HammingIndex, self_join
from pipelines.storage import Storage, StorageError

logger = logging.getLogger(__name__)

DECISIONS_KEY = "curated/decisions.parquet"
FEATURES_KEY = "curated/features.parquet"
STATE_KEY = "curated/state.json"
INGESTED = ("ok", "already_seen")  # manifest rows that carry an image

FEATURES_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("hash_kind", pa.string()),
        ("pixel_sha256", pa.string()),
        ("hash", pa.uint64()),
        ("gray_std", pa.float32()),
        ("texture", pa.float32()),
        ("error", pa.string()),
    ]
)
DECISIONS_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("class", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("raw_partition", pa.string()),  # "<class>|<day>": the raw_images partition it came from
        ("storage_key", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("license", pa.string()),
        ("meta", pa.string()),
        ("pixel_sha256", pa.string()),
        ("hash", pa.uint64()),
        ("gray_std", pa.float32()),
        ("texture", pa.float32()),
        ("decision", pa.string()),  # accept | reject
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),  # sha256 of the image it duplicates or conflicts with
        ("duplicate_class", pa.string()),
        ("distance", pa.int16()),  # Hamming distance to duplicate_of
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
    workers: int = field(default_factory=lambda: os.cpu_count() or 2, compare=False)

    def __post_init__(self) -> None:
        if self.hash_kind not in HASHES:
            raise ValueError(f"hash_kind {self.hash_kind!r}: choose one of {sorted(HASHES)}")
        if not 0 <= self.radius <= 16:
            raise ValueError(f"radius {self.radius}: a Hamming radius over 64 bits between 0 and 16")

    def fingerprint(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "workers"}
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


class _Curator:
    """The decisions so far and what later images are compared against."""

    def __init__(self, settings: CurateSettings) -> None:
        self.s = settings
        self.rank = {c: i for i, c in enumerate(settings.class_priority)}
        self.rows: list[dict] = []
        self.first_sha: dict[tuple[str, str], int] = {}  # (class, sha256) -> first row
        self.pixels: dict[tuple[str, str], int] = {}  # (class, pixel hash) -> accepted row
        self.index = {c: HammingIndex(settings.radius) for c in settings.class_priority}

    def restore(self, rows: list[dict]) -> None:
        """Rebuild the state from saved decisions, exactly as if they had just been made."""
        self.rows = rows
        by_class: dict[str, list[int]] = {c: [] for c in self.s.class_priority}
        for i, r in enumerate(rows):
            self.first_sha.setdefault((r["class"], r["sha256"]), i)
            if r["hash"] is not None and r["reason"] not in ("exact_duplicate", "undecodable") and _passes(r, self.s):
                by_class[r["class"]].append(i)  # indexed even if later dropped: _live() filters
            if r["decision"] == "accept":
                self.pixels[(r["class"], r["pixel_sha256"])] = i
        for c, ids in by_class.items():
            if ids:
                self.index[c].add(np.array([rows[i]["hash"] for i in ids], np.uint64), np.array(ids, np.int64))

    def _live(self, qi: np.ndarray, ids: np.ndarray, dist: np.ndarray) -> dict[int, list[tuple[int, int]]]:
        """Matches grouped by query, keeping only images still accepted."""
        out: dict[int, list[tuple[int, int]]] = {}
        for q, i, d in zip(qi.tolist(), ids.tolist(), dist.tolist(), strict=True):
            if self.rows[i]["decision"] == "accept":
                out.setdefault(q, []).append((d, i))
        return out

    def add_partition(self, part: _Partition, rows: list[dict]) -> None:
        c = part.class_name
        start = len(self.rows)
        self.rows.extend(rows)
        candidates: list[int] = []
        for i in range(start, len(self.rows)):
            r = self.rows[i]
            first = self.first_sha.setdefault((c, r["sha256"]), i)
            if first != i:
                _reject(r, "exact_duplicate", self.rows[first], 0)
            elif r["hash"] is None:
                _reject(r, "undecodable")
            elif reason := _quality(r, self.s):
                _reject(r, reason)
            else:
                candidates.append(i)
        if not candidates:
            return
        hashes = np.array([self.rows[i]["hash"] for i in candidates], np.uint64)
        found = {k: self._live(*self.index[k].search(hashes)) for k in self.s.class_priority if len(self.index[k])}
        within: dict[int, list[tuple[int, int]]] = {}
        for a, b, d in zip(*(x.tolist() for x in self_join(hashes, self.s.radius)), strict=True):
            within.setdefault(b, []).append((d, candidates[a]))  # a < b: a came first
        for q, i in enumerate(candidates):
            r = self.rows[i]
            same = found.get(c, {}).get(q, []) + [
                m for m in within.get(q, []) if self.rows[m[1]]["decision"] == "accept"
            ]
            higher = [
                m for k in self.s.class_priority if self.rank[k] < self.rank[c] for m in found.get(k, {}).get(q, [])
            ]
            if (c, r["pixel_sha256"]) in self.pixels:
                _reject(r, "pixel_duplicate", self.rows[self.pixels[(c, r["pixel_sha256"])]], 0)
            elif same:
                d, j = min(same)
                _reject(r, "near_duplicate", self.rows[j], d)
            elif higher:
                d, j = min(higher)
                _reject(r, "label_conflict", self.rows[j], d)
            else:
                r["decision"], r["reason"] = "accept", ""
                self.pixels[(c, r["pixel_sha256"])] = i
                for k in self.s.class_priority[self.rank[c] + 1 :]:
                    for d, j in found.get(k, {}).get(q, []):
                        if self.rows[j]["decision"] == "accept":
                            _reject(self.rows[j], "label_conflict", r, d)
                            self.pixels.pop((k, self.rows[j]["pixel_sha256"]), None)
        self.index[c].add(hashes, np.array(candidates, np.int64))


def _passes(r: dict, s: CurateSettings) -> bool:
    return _quality(r, s) is None


def _quality(r: dict, s: CurateSettings) -> str | None:
    w, h = r["width"], r["height"]
    if min(w, h) < s.min_side:
        return "too_small"
    if max(w, h) / min(w, h) > s.max_aspect:
        return "extreme_aspect"
    if r["gray_std"] < s.min_gray_std:
        return "near_uniform"
    if r["texture"] < s.min_texture:
        return "low_detail"
    return None


def _reject(r: dict, reason: str, other: dict | None = None, distance: int | None = None) -> None:
    r["decision"], r["reason"] = "reject", reason
    r["duplicate_of"] = other["sha256"] if other else None
    r["duplicate_class"] = other["class"] if other else None
    r["distance"] = distance


def _read_rows(storage: Storage, key: str) -> list[dict]:
    return mf.read_table(storage, key).to_pylist() if storage.exists(key) else []


def _compute_features(
    storage: Storage, keys: dict[str, str], hash_kind: str, workers: int, log: Callable[[str], None]
) -> list[dict]:
    """Features of the images ``{sha256: storage_key}``, decoded in threads (Pillow releases the GIL)."""

    def one(item: tuple[str, str]) -> dict:
        sha, key = item
        try:
            f = image_features(storage.get_bytes(key), hash_kind)
            return {"sha256": sha, "hash_kind": hash_kind, **asdict(f), "error": None}
        except (OSError, ValueError, StorageError) as e:  # a stored object that vanished or rotted
            return {"sha256": sha, "hash_kind": hash_kind, "error": f"{type(e).__name__}: {e}"}

    out: list[dict] = []
    t0, last = time.monotonic(), time.monotonic()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash") as pool:
        for f in pool.map(one, sorted(keys.items())):
            out.append(f)
            if time.monotonic() - last > 10:
                last = time.monotonic()
                log(f"hashed {len(out)}/{len(keys)} images, {len(out) / (last - t0):.0f} images/s")
    return out


def _decision_rows(part: _Partition, rows: list[dict], features: dict[str, dict]) -> list[dict]:
    out = []
    for r in rows:
        if r["status"] not in INGESTED:
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
                "license": r["license"],
                "meta": r["meta"],
                "pixel_sha256": f.get("pixel_sha256"),
                "hash": f.get("hash"),
                "gray_std": f.get("gray_std"),
                "texture": f.get("texture"),
                "decision": None,
                "reason": None,
                "duplicate_of": None,
                "duplicate_class": None,
                "distance": None,
            }
        )
    return out


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

    cache = _read_rows(storage, FEATURES_KEY)  # every hash kind ever used: switching back costs nothing
    features = {r["sha256"]: r for r in cache if r["hash_kind"] == s.hash_kind}
    wanted = {
        r["sha256"]: r["storage_key"]
        for _, rows in parts[start:]
        for r in rows
        if r["status"] in INGESTED and r["sha256"] not in features
    }
    fresh = _compute_features(storage, wanted, s.hash_kind, s.workers, log) if wanted else []
    if fresh:
        _write_parquet(storage, FEATURES_KEY, cache + fresh, FEATURES_SCHEMA)
        features.update({f["sha256"]: f for f in fresh})

    curator = _Curator(s)
    if start:
        curator.restore(read_decisions(storage))
    for part, rows in parts[start:]:
        curator.add_partition(part, _decision_rows(part, rows, features))
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
