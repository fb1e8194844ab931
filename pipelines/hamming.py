"""Exact Hamming-radius search over 64-bit perceptual hashes: multi-index hashing (MIH) in numpy.

Near-duplicate curation needs every pair of hashes within a radius among up to millions of images; an
all-pairs popcount is O(n^2) (about 30 minutes at 1M hashes here), so this index only compares hashes that
can possibly be close.

How (pigeonhole): the 64 bits are split into m disjoint chunks. Give chunk i a threshold t_i (-1 = unused)
with sum(t_i + 1) >= r + 1; if two hashes differ in at most r bits, some chunk i differs in at most t_i bits.
So for each chunk, every value within t_i bits of the query's chunk (V(w, t) = sum_{k<=t} C(w, k) values for
a w-bit chunk) is looked up in that chunk's table of stored hashes, and the candidates are verified with a
popcount of all 64 bits. A pair is reported only from the first chunk whose threshold it meets, so it is
found exactly once and nothing has to be de-duplicated afterwards.

Number of chunks (`_plan`): per query and chunk the cost is about V(w, t) lookups plus V(w, t) * n / 2^w
candidates. Fewer, longer chunks make buckets small, but each chunk must absorb more of the radius
(t ~ r / m) and V(w, t) grows combinatorially; more, shorter chunks need little enumeration, but every
bucket holds n / 2^w hashes that all get verified, and at small w that is a brute-force scan again. So the
best m depends on the radius and on n (chunks of about log2(n) bits): `_plan` minimises this cost, with a
blocked brute-force scan as one more option, for each segment's size. At 1M hashes: radius 0 -> the whole
hash as key; 1 -> 2 chunks of 32 bits; 2..14 -> 3 chunks of 21-22 bits (radius 4: t = 1, 1, 0, 46 lookups;
radius 8: t = 2, 2, 2, 718 lookups and ~0.4 candidates per lookup). At 64K hashes: 4 chunks of 16 bits.
A few hundred hashes: brute force.

Why not faiss: on the reference machine (2 cores), 1M random hashes, radius 8, faiss-cpu 1.15
``IndexBinaryMultiHash(64, 3, 21)`` with ``nflip=2`` (the same pigeonhole, exact there) took 2.3 s to add
and 96 s for range_search of all against all on both cores, against 0.4 s and 10 s here on one core
(5 s for the self-join; benchmarks/bench_neardup.py). faiss probes a C++ unordered_map once per (query,
flipped key) and collects each query's candidates in an unordered_set; here the probes run over whole numpy
arrays, one distinct chunk value at a time, into a direct-address table walked in key order
(cache-friendly), and duplicates are avoided by construction. faiss also reports distance < radius
(strict), uses one flip count for all tables and would be one more binary dependency.

Incremental adds go to segments of geometrically growing size (like an LSM tree): a batch becomes a new
segment at the next search and is merged with the previous one while it is at least half as large, so each
hash is re-indexed O(log n) times and a search probes O(log n) segments.

Limits: the cost model assumes balanced, independent bits. Real pHashes are less even (the DC bit is always
set; on the fixtures, pairs share a 21-bit chunk value 1.5-6x more often than uniform hashes would), so
expect a few times the candidates of the random-hash benchmark. Many copies of one hash make one large
bucket, but the pairs inside it are all real matches: the output itself is quadratic in the copies.
Distances are returned as uint8.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import cache
from math import comb

import numpy as np

BITS = 64
# Cost model, in units of one verified candidate (calibrated on the reference machine, see the module docstring).
_PROBE_COST = 1.0  # looking up one neighbouring chunk value
_BRUTE_COST = 0.4  # one popcount comparison in a blocked all-pairs scan (no gathers, no expansion)
_CHUNK_CALL_COST = 20000.0  # fixed numpy-call overhead per chunk, spread over ~n queries
_MAX_PROBES = 1 << 16  # masks per chunk beyond which a plan is not considered (memory for the mask list)
_MAX_CHUNKS = 16
_BLOCK = 1 << 21  # elements per vectorised step: bounds transient memory to tens of MB
_MAX_TABLE_BITS = 22  # direct-address tables (2^w int64 starts + narrow counts): at most ~36 MiB per chunk
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


def _volume(w: int, t: int) -> int:
    """Number of w-bit values within t bits of a given one."""
    return sum(comb(w, k) for k in range(min(t, w) + 1))


def _cost(w: int, t: int, n: int) -> float:
    """Relative work per query for one chunk of an n-hash segment: probes plus expected candidates."""
    return 0.0 if t < 0 else _volume(w, t) * (_PROBE_COST + n / 2.0**w)


@cache
def _thresholds(widths: tuple[int, ...], radius: int, n: int) -> tuple[int, ...]:
    """Per-chunk thresholds with sum(t + 1) = radius + 1, spent greedily where the marginal cost is least."""
    t = [-1] * len(widths)
    for _ in range(radius + 1):
        i = min(range(len(widths)), key=lambda i: (_cost(widths[i], t[i] + 1, n) - _cost(widths[i], t[i], n), i))
        t[i] += 1
    return tuple(t)


def _size_class(n: int) -> int:
    """n rounded up to a power of two (at least 2^8), so plans are cached per size class."""
    return 1 << max(8, (max(n, 1) - 1).bit_length())


@cache
def _plan(radius: int, n: int) -> tuple[int, ...]:
    """Chunk widths with the least modelled cost for this radius and segment size; () = brute force is cheaper.

    Longer chunks: smaller buckets but combinatorially more neighbouring values to enumerate. Shorter
    chunks: few neighbours but buckets of n / 2^w hashes to verify. See the module docstring.
    """
    options: dict[tuple[int, ...], float] = {(): _BRUTE_COST * n}
    for m in range(1, _MAX_CHUNKS + 1):
        widths = _widths(m)
        thresholds = _thresholds(widths, radius, n)
        if max(_volume(w, t) for w, t in zip(widths, thresholds, strict=True)) <= _MAX_PROBES:
            used = sum(t >= 0 for t in thresholds)
            options[widths] = sum(_cost(w, t, n) for w, t in zip(widths, thresholds, strict=True))
            options[widths] += _CHUNK_CALL_COST * used / n
    return min(options, key=lambda widths: (options[widths], len(widths)))


@cache
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
            self.starts = np.cumsum(counts) - counts
            self.counts = counts.astype(np.min_scalar_type(counts.max()))  # narrow: read for every probe

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probe index, run start, run count) of the chunk values present, in probe order."""
        if self.counts is not None and self.starts is not None:
            count = self.counts[keys]
            hit = np.flatnonzero(count > 0)  # 7x faster than nonzero() on the integers themselves
            return hit, self.starts[keys[hit]], count[hit]
        if not self.ukeys.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        pos = np.minimum(np.searchsorted(self.ukeys, keys), self.ukeys.size - 1)
        hit = np.flatnonzero(self.ukeys[pos] == keys)
        pos = pos[hit]
        return hit, self.ustart[pos], self.ucount[pos]


class _Segment:
    """An immutable batch of hashes with its own plan: chunk tables, or none when brute force is cheaper."""

    def __init__(self, hashes: np.ndarray, ids: np.ndarray, radius: int) -> None:
        self.hashes = hashes
        self.ids = ids
        self.size_class = _size_class(hashes.size)
        self.widths = _plan(radius, self.size_class)
        self.shifts = tuple(int(s) for s in np.cumsum((0, *self.widths[:-1]))) if self.widths else ()
        self.chunks = [_ChunkTable(hashes, s, w) for s, w in zip(self.shifts, self.widths, strict=True)]

    def __len__(self) -> int:
        return self.hashes.size

    def thresholds(self, radius: int) -> tuple[int, ...]:
        return _thresholds(self.widths, radius, self.size_class)


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
        block = masks[b0 : b0 + step]
        hit, start, count = table.lookup((block[:, None] ^ src_keys[None, :]).ravel())
        if hit.size and block.size > 1:  # hit // u is the mask, hit % u the src (hits are sorted; % is slow)
            per_mask = np.diff(np.searchsorted(hit, np.arange(block.size + 1) * u))
            hit = hit - np.repeat(np.arange(block.size) * u, per_mask)
        if hit.size:
            yield hit, start, count


def _cross(
    a_start: np.ndarray, a_count: np.ndarray, b_start: np.ndarray, b_count: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every (a, b) position pair of each pair of runs, in batches of about _BLOCK pairs.

    The first pair of every run pair comes as is (most runs hold one hash); only runs of several hashes
    are expanded, into their remaining pairs.
    """
    yield a_start, b_start
    extra = a_count * b_count - 1
    multi = np.flatnonzero(extra > 0)
    if not multi.size:
        return
    a_start, b_start, b_count, extra = a_start[multi], b_start[multi], b_count[multi], extra[multi]
    ends = np.cumsum(extra)
    lo = 0
    while lo < extra.size:
        hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + _BLOCK, side="right")))
        r = extra[lo:hi]
        pair = np.repeat(np.arange(lo, hi), r)
        local = np.arange(1, pair.size + 1) - np.repeat(np.cumsum(r) - r, r)  # 1 .. rep - 1 within each pair
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
    seg: _Segment, queries: np.ndarray, radius: int, groups: dict[tuple[int, ...], list[_Groups | None]]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(query index, id, distance) of the segment's hashes within radius; `groups` caches query chunkings."""
    if not seg.widths:
        step = max(1, _BLOCK // len(seg))
        for q0 in range(0, queries.size, step):
            d = np.bitwise_count(queries[q0 : q0 + step, None] ^ seg.hashes[None, :])
            qi, si = np.nonzero(d <= radius)
            yield qi + q0, seg.ids[si], d[qi, si]
        return
    thresholds = seg.thresholds(radius)
    verify = _Verifier(seg.widths, thresholds, radius)
    if seg.widths not in groups:
        groups[seg.widths] = [_Groups(_chunk(queries, s, w)) for s, w in zip(seg.shifts, seg.widths, strict=True)]
    for c, (w, t) in enumerate(zip(seg.widths, thresholds, strict=True)):
        if t < 0:
            continue
        g = groups[seg.widths][c]
        tab = seg.chunks[c]
        q_sorted = queries[g.order]
        for src, s_start, s_count in _probe(g.ukeys, _masks(w, t)[0], tab):
            for qpos, spos in _cross(g.ustart[src], g.ucount[src], s_start, s_count):
                ok, d = verify(q_sorted[qpos], tab.sorted_hashes[spos], c)
                yield g.order[qpos[ok]], seg.ids[tab.order[spos[ok]]], d


def _self_join_segment(seg: _Segment, radius: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(position, position, distance) of pairs within the segment, each pair once (in either order).

    With chunk tables: pairs with equal chunk values come from inside each run; pairs with values k and
    k ^ e, k < k ^ e, only from the probe of k with mask e, i.e. from values whose bit at e's highest set bit
    is 0, which halves the probes.
    """
    h = seg.hashes
    if not seg.widths:
        step = max(1, _BLOCK // len(seg))
        for i0 in range(0, h.size, step):
            d = np.bitwise_count(h[i0 : i0 + step, None] ^ h[None, i0:])  # columns from i0: the upper triangle
            i, j = np.nonzero(d <= radius)
            upper = np.flatnonzero(j > i)
            i, j = i[upper], j[upper]
            yield i + i0, j + i0, d[i, j]
        return
    thresholds = seg.thresholds(radius)
    verify = _Verifier(seg.widths, thresholds, radius)
    for c, (w, t) in enumerate(zip(seg.widths, thresholds, strict=True)):
        if t < 0:
            continue
        tab = seg.chunks[c]
        sh = tab.sorted_hashes
        runs = np.flatnonzero(tab.ucount >= 2)
        for a, b in _cross(tab.ustart[runs], tab.ucount[runs], tab.ustart[runs], tab.ucount[runs]):
            lower = np.flatnonzero(a < b)
            a, b = a[lower], b[lower]
            ok, d = verify(sh[a], sh[b], c)
            yield tab.order[a[ok]], tab.order[b[ok]], d
        masks, top = _masks(w, t)
        for bit in range(w):
            mb = masks[top == bit]
            if not mb.size:
                continue
            sel = np.flatnonzero((tab.ukeys & (1 << bit)) == 0)
            sel_start, sel_count = tab.ustart[sel], tab.ucount[sel]
            for src, s_start, s_count in _probe(tab.ukeys[sel], mb, tab):
                for a, b in _cross(sel_start[src], sel_count[src], s_start, s_count):
                    ok, d = verify(sh[a], sh[b], c)
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

    Exact for any radius in 0..64 (fast up to about 10 at a million hashes). `search` may use any radius up
    to the index's. Results come sorted by (query_index, id); distances are uint8.
    """

    def __init__(self, radius: int) -> None:
        self.radius = _check_radius(radius)
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
        """Index pending hashes as a new segment, merged with the last one while at least half its size."""
        if not self._pending:
            return
        hashes = np.concatenate([h for h, _ in self._pending])
        ids = np.concatenate([i for _, i in self._pending])
        self._pending = []
        while self._segments and 2 * hashes.size >= len(self._segments[-1]):
            last = self._segments.pop()
            hashes, ids = np.concatenate((last.hashes, hashes)), np.concatenate((last.ids, ids))
        self._segments.append(_Segment(hashes, ids, self.radius))

    def search(self, queries: np.ndarray, radius: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query_index, id, distance) of every stored hash within radius of each query (radius <= the index's)."""
        r = self.radius if radius is None else _check_radius(radius)
        if r > self.radius:
            raise ValueError(f"search radius {r} exceeds the index radius {self.radius}")
        queries = _as_u64(queries).ravel()
        self._flush()
        if not queries.size:
            return _collect(iter(()))
        groups: dict[tuple[int, ...], list[_Groups | None]] = {}
        parts = (part for seg in self._segments for part in _search_segment(seg, queries, r, groups))
        return _sorted(*_collect(parts))


def self_join(hashes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) with i < j for every pair of the given hashes within radius, sorted by (i, j)."""
    r = _check_radius(radius)
    hashes = _as_u64(hashes).ravel()
    if hashes.size < 2:
        return _collect(iter(()))
    seg = _Segment(hashes, np.arange(hashes.size, dtype=np.int64), r)
    a, b, d = _collect(_self_join_segment(seg, r))
    return _sorted(np.minimum(a, b), np.maximum(a, b), d)
