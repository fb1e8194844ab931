"""Exact Hamming-radius search over 64-bit perceptual hashes: multi-index hashing (MIH) in numpy.

Near-duplicate curation needs every pair of hashes within a radius among up to millions of images; an
all-pairs popcount is O(n^2) (about 20 minutes at 1M hashes), so this index only looks at hashes that can
possibly be close.

How (pigeonhole): the 64 bits are split into m disjoint chunks. Give chunk i a threshold t_i (-1 = unused)
with sum(t_i + 1) >= r + 1; if two hashes differ in at most r bits, some chunk i differs in at most t_i bits.
So for each chunk, every value within t_i bits of the query's chunk (V(w, t) = sum_{k<=t} C(w, k) values for
a w-bit chunk) is looked up in that chunk's table of stored hashes, and the candidates are verified with a
popcount of all 64 bits. A pair is reported only from the first chunk whose threshold it meets, so it is
found exactly once and nothing has to be de-duplicated afterwards.

Number of chunks: per query and chunk the cost is about V(w, t) lookups plus V(w, t) * n / 2^w candidates.
Fewer, longer chunks make buckets small but each chunk must absorb more of the radius (t ~ r / m) and V(w, t)
grows combinatorially; more, shorter chunks need little enumeration but every bucket holds n / 2^w hashes that
all get verified, and at small w that is a brute-force scan again. `_plan` picks m for the radius by this
cost at n = 2^20: radius 1 -> 2 chunks of 32 bits, 2..10 -> 3 chunks of 21-22 bits (radius 8: t = 2, 2, 2,
718 lookups and ~0.3 candidates per hashed query), 12 -> 4 chunks of 16 bits.

Why this and not faiss: on the reference machine (2 cores), 1M random hashes, radius 8, faiss-cpu 1.15
``IndexBinaryMultiHash(64, 3, 21)`` with ``nflip=2`` (the same pigeonhole, exact there) took 2.3 s to add
and 96 s for range_search of all against all on both cores, against ~2 s and ~6 s here on one core
(benchmarks/bench_neardup.py). faiss probes a C++ unordered_map once per (query, flipped key) and gathers
each query's candidates in an unordered_set; here the probes run over whole numpy arrays, one distinct chunk
value at a time, into a direct-address table walked in key order (cache-friendly), and duplicates are
avoided by construction. faiss also reports distance < radius (strict), uses one flip count for all tables,
and would be one more binary dependency.

Incremental adds go to segments of geometrically growing size (like an LSM tree): a batch becomes a new
segment at the next search and is merged with the previous one while it is at least half as large, so each
hash is re-indexed O(log n) times and a search probes O(log n) segments.

Limits: the cost assumes roughly balanced bits; a chunk value shared by a large share of hashes (many copies of
one image, or hashes of blank images) makes its bucket large, and the pairs inside it are all real matches,
so the output itself is quadratic in the number of copies. Distances are returned as uint8.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import lru_cache
from math import comb

import numpy as np

BITS = 64
_NOMINAL_N = 1 << 20  # index size the chunking is tuned for; smaller indexes are fast whatever the chunking
_MAX_CHUNKS = 16
_BLOCK = 1 << 21  # elements per vectorised step: bounds transient memory to tens of MB
_MAX_TABLE_BITS = 24  # direct-address tables (2^w + 1 int32 offsets) only up to 64 MiB per chunk
_TABLE_FILL = 16  # ... and only when the table has at most this many slots per stored hash

_U64 = np.uint64


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise popcount(a ^ b) of uint64 arrays (broadcasting), as uint8."""
    return np.bitwise_count(np.bitwise_xor(_as_u64(a), _as_u64(b)))


def _as_u64(x: np.ndarray) -> np.ndarray:
    """uint64 view of integer hashes; int64 is taken as the same 64 bits (hashes with the top bit set)."""
    x = np.asarray(x)
    if x.dtype == np.uint64:
        return x
    if x.dtype == np.int64:
        return x.view(np.uint64)
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"hashes must be integers, got {x.dtype}")
    return x.astype(np.uint64)


# --------------------------------------------------------------------------------------------------------------------
# Planning: chunk layout and per-chunk thresholds.
# --------------------------------------------------------------------------------------------------------------------


def _widths(m: int) -> tuple[int, ...]:
    """m contiguous chunks covering the 64 bits, as equal as possible (longer ones first)."""
    return tuple(BITS // m + (1 if i < BITS % m else 0) for i in range(m))


def _cost(w: int, t: int, n: int = _NOMINAL_N) -> float:
    """Relative work per query for one chunk: lookups plus expected candidates (uniform hashes)."""
    if t < 0:
        return 0.0
    v = sum(comb(w, k) for k in range(min(t, w) + 1))
    return v * (1.0 + n / 2.0**w)


@lru_cache(maxsize=None)
def _thresholds(widths: tuple[int, ...], radius: int) -> tuple[int, ...]:
    """Per-chunk thresholds with sum(t + 1) = radius + 1, spent greedily where the marginal cost is least."""
    t = [-1] * len(widths)
    for _ in range(radius + 1):
        i = min(range(len(widths)), key=lambda i: (_cost(widths[i], t[i] + 1) - _cost(widths[i], t[i]), i))
        t[i] += 1
    return tuple(t)


@lru_cache(maxsize=None)
def _plan(radius: int) -> tuple[int, ...]:
    """Chunk widths for a radius: the number of chunks with the least modelled cost (fewer on ties)."""
    best = min(
        range(1, _MAX_CHUNKS + 1),
        key=lambda m: (sum(_cost(w, t) for w, t in zip(_widths(m), _thresholds(_widths(m), radius), strict=True)), m),
    )
    return _widths(best)


@lru_cache(maxsize=None)
def _masks(w: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """All w-bit masks with popcount <= t (0 first), and the index of each mask's highest set bit (-1 for 0)."""
    masks = [0]
    for k in range(1, min(t, w) + 1):
        masks.extend(sum(1 << b for b in bits) for bits in itertools.combinations(range(w), k))
    top = np.array([m.bit_length() - 1 for m in masks], dtype=np.int64)
    return np.array(masks, dtype=np.int64 if w < BITS else _U64), top


def _chunk(hashes: np.ndarray, shift: int, w: int) -> np.ndarray:
    """Chunk values, as int64 (usable as indices) when they fit, else uint64 (the single 64-bit chunk)."""
    keys = (hashes >> _U64(shift)) & _U64((1 << w) - 1)
    return keys.view(np.int64) if w < BITS else keys


# --------------------------------------------------------------------------------------------------------------------
# Storage: one segment = hashes sorted by each chunk, with a lookup table per chunk.
# --------------------------------------------------------------------------------------------------------------------


class _Groups:
    """Values sorted by one chunk: the permutation, and the runs of equal chunk values."""

    def __init__(self, keys: np.ndarray) -> None:
        self.order = np.argsort(keys, kind="stable")
        skeys = keys[self.order]
        first = np.flatnonzero(np.concatenate(([True], skeys[1:] != skeys[:-1]))) if skeys.size else np.zeros(0, int)
        self.ukeys = skeys[first]
        self.ustart = first.astype(np.int64)
        self.ucount = np.diff(np.append(self.ustart, skeys.size))


class _ChunkTable(_Groups):
    """A segment's hashes sorted by one chunk, and the chunk value -> run lookup."""

    def __init__(self, hashes: np.ndarray, shift: int, w: int) -> None:
        keys = _chunk(hashes, shift, w)
        super().__init__(keys)
        self.sorted_hashes = hashes[self.order]
        self.starts: np.ndarray | None = None
        self.counts: np.ndarray | None = None
        if w <= _MAX_TABLE_BITS and (1 << w) <= _TABLE_FILL * hashes.size:
            # Direct addressing: counts[k] hashes from starts[k] have chunk value k. A probe reads the narrow
            # counts table for every key and starts only for hits, against ~20 dependent cache misses for a
            # binary search over a million keys.
            counts = np.bincount(keys, minlength=1 << w)
            self.starts = (np.cumsum(counts) - counts).astype(np.int32 if hashes.size < 2**31 else np.int64)
            self.counts = counts.astype(np.min_scalar_type(counts.max()))

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probe index, run start, run count) of the chunk values present, in probe order."""
        if self.counts is not None and self.starts is not None:
            count = self.counts[keys]
            hit = np.flatnonzero(count)
            return hit, self.starts[keys[hit]].astype(np.int64), count[hit].astype(np.int64)
        if not self.ukeys.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        pos = np.minimum(np.searchsorted(self.ukeys, keys), self.ukeys.size - 1)
        hit = np.flatnonzero(self.ukeys[pos] == keys)
        pos = pos[hit]
        return hit, self.ustart[pos], self.ucount[pos]


class _Segment:
    def __init__(self, hashes: np.ndarray, ids: np.ndarray, widths: tuple[int, ...]) -> None:
        self.hashes = hashes
        self.ids = ids
        shifts = np.cumsum((0, *widths[:-1]))
        self.chunks = [_ChunkTable(hashes, int(s), w) for s, w in zip(shifts, widths, strict=True)]

    def __len__(self) -> int:
        return self.hashes.size


# --------------------------------------------------------------------------------------------------------------------
# Joining: probe neighbouring chunk values, expand bucket pairs, verify.
# --------------------------------------------------------------------------------------------------------------------


def _probe(
    src_keys: np.ndarray, masks: np.ndarray, table: _ChunkTable
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(src index, run start, run count) for every (src value ^ mask) present in the table.

    Mask-major blocks: for one mask, src_keys ^ mask of sorted keys is sorted piecewise, so the table reads
    stream through memory instead of jumping at random.
    """
    u = src_keys.size
    if not u:
        return
    step = max(1, _BLOCK // u)
    for b0 in range(0, masks.size, step):
        probes = (masks[b0 : b0 + step, None] ^ src_keys[None, :]).ravel()
        hit, start, count = table.lookup(probes)
        if hit.size:
            yield hit % u, start, count


def _cross(
    a_start: np.ndarray, a_count: np.ndarray, b_start: np.ndarray, b_count: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every (a, b) position pair of each pair of runs, in batches of about _BLOCK pairs."""
    rep = a_count * b_count
    single = rep == 1  # the usual case: one hash on each side, no expansion needed
    yield a_start[single], b_start[single]
    multi = np.flatnonzero(rep > 1)
    if not multi.size:
        return
    a_start, a_count, b_start, b_count, rep = a_start[multi], a_count[multi], b_start[multi], b_count[multi], rep[multi]
    ends = np.cumsum(rep)
    lo = 0
    while lo < rep.size:
        hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + _BLOCK, side="right")))
        r = rep[lo:hi]
        pair = np.repeat(np.arange(lo, hi), r)
        local = np.arange(pair.size) - np.repeat(np.cumsum(r) - r, r)
        bc = b_count[pair]
        yield a_start[pair] + local // bc, b_start[pair] + local % bc
        lo = hi


class _Verifier:
    """Keeps candidates within the radius whose first chunk meeting its threshold is the current one."""

    def __init__(self, widths: tuple[int, ...], thresholds: tuple[int, ...], radius: int) -> None:
        shifts = np.cumsum((0, *widths[:-1]))
        self.radius = radius
        self.thresholds = thresholds
        self.chunk_masks = [_U64(((1 << w) - 1) << int(s)) for s, w in zip(shifts, widths, strict=True)]

    def __call__(self, a: np.ndarray, b: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        x = a ^ b
        d = np.bitwise_count(x)
        ok = np.flatnonzero(d <= self.radius)
        x, d = x[ok], d[ok]
        keep = np.ones(ok.size, dtype=bool)
        for k in range(chunk):
            if self.thresholds[k] >= 0:
                keep &= np.bitwise_count(x & self.chunk_masks[k]) > self.thresholds[k]
        return ok[keep], d[keep]


def _search_segment(
    seg: _Segment,
    queries: np.ndarray,
    groups: list[_Groups | None],
    widths: tuple[int, ...],
    thresholds: tuple[int, ...],
    verify: _Verifier,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    for c, (w, t) in enumerate(zip(widths, thresholds, strict=True)):
        g = groups[c]
        if t < 0 or g is None:
            continue
        tab = seg.chunks[c]
        q_sorted = queries[g.order]
        for src, s_start, s_count in _probe(g.ukeys, _masks(w, t)[0], tab):
            for qpos, spos in _cross(g.ustart[src], g.ucount[src], s_start, s_count):
                ok, d = verify(q_sorted[qpos], tab.sorted_hashes[spos], c)
                yield g.order[qpos[ok]], seg.ids[tab.order[spos[ok]]], d


def _self_join_segment(
    seg: _Segment, widths: tuple[int, ...], thresholds: tuple[int, ...], verify: _Verifier
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pairs within a segment, each probed from one side only.

    Same chunk value: pairs inside each run. Different values k < k ^ e: the probe from k with mask e only,
    i.e. from values whose bit at e's highest set bit is 0, which halves the probes.
    """
    for c, (w, t) in enumerate(zip(widths, thresholds, strict=True)):
        if t < 0:
            continue
        tab = seg.chunks[c]
        h = tab.sorted_hashes
        runs = np.flatnonzero(tab.ucount >= 2)
        for a, b in _cross(tab.ustart[runs], tab.ucount[runs], tab.ustart[runs], tab.ucount[runs]):
            lower = np.flatnonzero(a < b)
            a, b = a[lower], b[lower]
            ok, d = verify(h[a], h[b], c)
            yield tab.order[a[ok]], tab.order[b[ok]], d
        masks, top = _masks(w, t)
        for bit in range(w):
            mb = masks[top == bit]
            if not mb.size:
                continue
            src_sel = np.flatnonzero((tab.ukeys & (1 << bit)) == 0)
            for src, s_start, s_count in _probe(tab.ukeys[src_sel], mb, tab):
                src = src_sel[src]
                for a, b in _cross(tab.ustart[src], tab.ucount[src], s_start, s_count):
                    ok, d = verify(h[a], h[b], c)
                    yield tab.order[a[ok]], tab.order[b[ok]], d


def _collect(parts: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a_list, b_list, d_list = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.uint8)]
    for a, b, d in parts:
        if a.size:
            a_list.append(a)
            b_list.append(b)
            d_list.append(d)
    return np.concatenate(a_list).astype(np.int64), np.concatenate(b_list).astype(np.int64), np.concatenate(d_list)


def _sorted(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((b, a))
    return a[order], b[order], d[order]


def _check_radius(radius: int) -> int:
    if not 0 <= int(radius) <= BITS:
        raise ValueError(f"radius must be in 0..{BITS}, got {radius}")
    return int(radius)


# --------------------------------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------------------------------


class HammingIndex:
    """All stored hashes within `radius` of a query, without comparing against everything.

    Exact for any radius in 0..64 (fast up to about 10 at a million hashes). The chunking is fixed by the
    radius given here; `search` may use any radius up to it. Results come sorted by (query_index, id).
    """

    def __init__(self, radius: int) -> None:
        self.radius = _check_radius(radius)
        self._widths = _plan(self.radius)
        self._segments: list[_Segment] = []
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(s) for s in self._segments) + sum(h.size for h, _ in self._pending)

    def add(self, hashes: np.ndarray, ids: np.ndarray) -> None:
        """Store hashes (uint64) under caller-chosen int64 ids; indexed lazily at the next search."""
        hashes = _as_u64(hashes).ravel()
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if hashes.shape != ids.shape:
            raise ValueError(f"{hashes.size} hashes but {ids.size} ids")
        if hashes.size:
            self._pending.append((hashes.copy(), ids.copy()))

    def _flush(self) -> None:
        """Index pending hashes as a new segment, merging while it is at least half the size of the last one."""
        if not self._pending:
            return
        hashes = np.concatenate([h for h, _ in self._pending])
        ids = np.concatenate([i for _, i in self._pending])
        self._pending = []
        while self._segments and 2 * hashes.size >= len(self._segments[-1]):
            last = self._segments.pop()
            hashes, ids = np.concatenate((last.hashes, hashes)), np.concatenate((last.ids, ids))
        self._segments.append(_Segment(hashes, ids, self._widths))

    def search(self, queries: np.ndarray, radius: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query_index, id, distance) of every stored hash within radius of each query (radius <= the index's)."""
        r = self.radius if radius is None else _check_radius(radius)
        if r > self.radius:
            raise ValueError(f"search radius {r} exceeds the index radius {self.radius}")
        queries = _as_u64(queries).ravel()
        self._flush()
        if not queries.size or not self._segments:
            return _collect(iter(()))
        thresholds = _thresholds(self._widths, r)
        verify = _Verifier(self._widths, thresholds, r)
        shifts = np.cumsum((0, *self._widths[:-1]))
        groups: list[_Groups | None] = [
            _Groups(_chunk(queries, int(s), w)) if t >= 0 else None
            for s, w, t in zip(shifts, self._widths, thresholds, strict=True)
        ]
        parts = (
            part
            for seg in self._segments
            for part in _search_segment(seg, queries, groups, self._widths, thresholds, verify)
        )
        return _sorted(*_collect(parts))


def self_join(hashes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) with i < j for every pair of the given hashes within radius, sorted by (i, j)."""
    r = _check_radius(radius)
    hashes = _as_u64(hashes).ravel()
    if hashes.size < 2:
        return _collect(iter(()))
    widths = _plan(r)
    thresholds = _thresholds(widths, r)
    seg = _Segment(hashes, np.arange(hashes.size, dtype=np.int64), widths)
    a, b, d = _collect(_self_join_segment(seg, widths, thresholds, _Verifier(widths, thresholds, r)))
    return _sorted(np.minimum(a, b), np.maximum(a, b), d)
