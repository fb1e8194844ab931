"""HammingIndex and self_join against a brute-force all-pairs reference.

Every chunking the planner can pick (and brute force) is forced in turn, because at test sizes the planner
would pick different chunkings than at a million hashes; exactness must not depend on which one runs.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from pipelines import hamming
from pipelines.hamming import HammingIndex, self_join
from pipelines.hamming import hamming as hamming_distance

RADII = (0, 1, 4, 8, 10, 12)
PLANS: tuple[tuple[int, ...] | str, ...] = ("auto", (), *(hamming._widths(m) for m in (1, 2, 3, 4, 6, 9)))


def _flip(h: np.uint64, d: int, rng: np.random.Generator) -> np.uint64:
    bits = rng.choice(64, size=d, replace=False)
    return h ^ np.uint64(sum(1 << int(b) for b in bits))


def _dataset(rng: np.random.Generator, n: int = 2500, per_distance: int = 4) -> np.ndarray:
    """Random hashes, planted pairs at every distance 0..14, and a few exact copies."""
    base = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    planted = [_flip(base[rng.integers(n)], d, rng) for d in range(15) for _ in range(per_distance)]
    copies = base[:3].repeat(3)
    return np.concatenate((base, np.array(planted, dtype=np.uint64), copies))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    h = _dataset(np.random.default_rng(20261124))
    return h, hamming_distance(h[:, None], h[None, :])


def _brute_pairs(dist: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i, j = np.nonzero(np.triu(dist <= radius, k=1))
    return i, j, dist[i, j]


def _brute_search(dist: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    return np.nonzero(dist <= radius)


def _cases(radii: tuple[int, ...]) -> list[object]:
    """(plan, radius) for every plan whose neighbour enumeration is small enough for a quick test."""
    cases = []
    for plan in PLANS:
        for radius in radii:
            if isinstance(plan, tuple) and plan:
                t = hamming._thresholds(plan, radius, 4096)
                if max(hamming._volume(w, k) for w, k in zip(plan, t, strict=True)) > 20_000:
                    continue
            name = plan if isinstance(plan, str) else f"chunks{len(plan)}" if plan else "brute"
            cases.append(pytest.param(plan, radius, id=f"{name}-r{radius}"))
    return cases


def _force(monkeypatch: pytest.MonkeyPatch, plan: tuple[int, ...] | str) -> None:
    if plan != "auto":
        monkeypatch.setattr(hamming, "_plan", lambda radius, n: plan)


def _equal(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(("plan", "radius"), _cases(RADII))
def test_self_join_matches_brute_force(
    data: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch, plan: tuple[int, ...] | str, radius: int
) -> None:
    _force(monkeypatch, plan)
    h, dist = data
    i, j, d = self_join(h, radius)
    assert i.dtype == np.int64 and j.dtype == np.int64 and d.dtype == np.uint8
    _equal((i, j, d), _brute_pairs(dist, radius))
    # The planted pairs reach past the radius, so the reference is never trivially empty or everything.
    assert 0 < i.size < h.size


@pytest.mark.parametrize(("plan", "radius"), _cases(RADII))
def test_search_matches_brute_force(
    data: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch, plan: tuple[int, ...] | str, radius: int
) -> None:
    _force(monkeypatch, plan)
    h, dist = data
    rng = np.random.default_rng(radius)
    ids = rng.permutation(h.size).astype(np.int64) * 1_000_003 - 7  # arbitrary caller ids, some negative
    index = HammingIndex(radius)
    index.add(h, ids)
    assert len(index) == h.size
    queries = h[::2]  # stored hashes (each finds itself), planted neighbours among them
    qi, got_ids, d = index.search(queries)
    want_q, want_s = _brute_search(dist[::2], radius)
    order = np.lexsort((ids[want_s], want_q))
    _equal((qi, got_ids, d), (want_q[order], ids[want_s][order], dist[::2][want_q, want_s][order]))


@pytest.mark.parametrize("radius", RADII)
def test_search_at_smaller_radius(data: tuple[np.ndarray, np.ndarray], radius: int) -> None:
    h, dist = data
    index = HammingIndex(12)
    index.add(h, np.arange(h.size))
    qi, ids, d = index.search(h[:300], radius=radius)
    want_q, want_s = _brute_search(dist[:300], radius)
    _equal((qi, ids, d), (want_q, want_s, dist[:300][want_q, want_s]))
    with pytest.raises(ValueError, match="exceeds"):
        HammingIndex(radius).search(h[:1], radius=radius + 1)


@pytest.mark.parametrize("radius", [4, 10])
def test_incremental_add_equals_one_add(data: tuple[np.ndarray, np.ndarray], radius: int) -> None:
    h, dist = data
    whole = HammingIndex(radius)
    whole.add(h, np.arange(h.size))
    parts = HammingIndex(radius)
    cuts = [0, 1, 40, 41, 700, 1800, 2000, h.size]  # uneven batches: segments are merged and kept apart
    for lo, hi in pairwise(cuts):
        parts.add(h[lo:hi], np.arange(lo, hi))
        if hi < h.size:
            qi, ids, d = parts.search(h)  # each search sees everything added so far
            want_q, want_s = _brute_search(dist[:, :hi], radius)
            _equal((qi, ids, d), (want_q, want_s, dist[want_q, want_s]))
    assert len(parts) == len(whole) == h.size
    assert len(parts._segments) > 1  # really several segments, not one rebuilt index
    _equal(parts.search(h), whole.search(h))


@pytest.mark.parametrize(("plan", "radius"), _cases((8,)))
def test_duplicates_are_all_reported(monkeypatch: pytest.MonkeyPatch, plan: tuple[int, ...] | str, radius: int) -> None:
    _force(monkeypatch, plan)
    rng = np.random.default_rng(1)
    h = np.concatenate((np.full(40, 0xDEADBEEF, dtype=np.uint64), rng.integers(0, 2**63, 200, dtype=np.uint64)))
    i, j, d = self_join(h, radius)
    dup = (i < 40) & (j < 40)
    assert dup.sum() == 40 * 39 // 2 and not d[dup].any()
    index = HammingIndex(radius)
    index.add(h, np.arange(h.size))
    _, ids, d = index.search(h[:1])
    np.testing.assert_array_equal(ids[d == 0], np.arange(40))


def test_empty_and_tiny_inputs() -> None:
    index = HammingIndex(6)
    assert len(index) == 0
    for qi, ids, d in (index.search(np.array([1, 2], dtype=np.uint64)), index.search(np.zeros(0, np.uint64))):
        assert qi.size == ids.size == d.size == 0
        assert qi.dtype == ids.dtype == np.int64 and d.dtype == np.uint8
    index.add(np.zeros(0, np.uint64), np.zeros(0, np.int64))
    assert len(index) == 0 and index.search(np.array([0], dtype=np.uint64))[0].size == 0
    for hashes in (np.zeros(0, np.uint64), np.array([5], dtype=np.uint64)):
        assert all(a.size == 0 for a in self_join(hashes, 4))
    i, j, d = self_join(np.array([0, 0b111], dtype=np.uint64), 3)
    assert (i.tolist(), j.tolist(), d.tolist()) == ([0], [1], [3])
    with pytest.raises(ValueError, match="ids"):
        index.add(np.array([1, 2], dtype=np.uint64), np.array([1]))
    with pytest.raises(ValueError, match="radius"):
        HammingIndex(65)


@pytest.mark.parametrize(("plan", "radius"), _cases((10,)))
def test_identical_queries(
    data: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch, plan: tuple[int, ...] | str, radius: int
) -> None:
    _force(monkeypatch, plan)
    h, dist = data
    index = HammingIndex(radius)
    index.add(h, np.arange(h.size))
    target = int(np.argmax((dist <= radius).sum(axis=1)))  # a hash with planted neighbours
    qi, ids, d = index.search(np.full(50, h[target], dtype=np.uint64))
    want = np.flatnonzero(dist[target] <= radius)
    assert want.size > 1
    np.testing.assert_array_equal(qi, np.repeat(np.arange(50), want.size))
    np.testing.assert_array_equal(ids, np.tile(want, 50))
    np.testing.assert_array_equal(d, np.tile(dist[target, want], 50))


def test_hamming_and_input_types() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2**64, 100, dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, 100, dtype=np.uint64, endpoint=False)
    want = [bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b, strict=True)]
    assert hamming_distance(a, b).tolist() == want
    # int64 hashes (as Parquet stores uint64 columns often come back) are the same 64 bits.
    i, j, d = self_join(np.concatenate((a, b)).view(np.int64), 64)
    assert i.size == 200 * 199 // 2
    np.testing.assert_array_equal(d[(i < 100) & (j == i + 100)], want)
    with pytest.raises(TypeError):
        self_join(np.array([0.5, 1.5]), 2)


def test_planner_choices() -> None:
    """The chunkings the module docstring and the benchmark describe."""
    assert hamming._plan(8, 2**20) == (22, 21, 21)
    assert hamming._thresholds((22, 21, 21), 8, 2**20) == (2, 2, 2)
    assert hamming._plan(0, 2**20) == (64,)
    assert hamming._plan(14, 256) == ()  # a few hundred hashes at a large radius: brute force is cheaper


def test_small_blocks_give_the_same_pairs(data: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes and bucket-pair expansions split over many steps (as at a million hashes) lose nothing."""
    h, dist = data
    h = np.concatenate((h, np.full(30, h[7])))  # a large bucket: its pairs span several expansion batches
    dist = hamming_distance(h[:, None], h[None, :])
    monkeypatch.setattr(hamming, "_BLOCK", 37)
    _equal(self_join(h, 8), _brute_pairs(dist, 8))
    index = HammingIndex(8)
    index.add(h, np.arange(h.size))
    qi, ids, d = index.search(h[::5])
    want_q, want_s = _brute_search(dist[::5], 8)
    _equal((qi, ids, d), (want_q, want_s, dist[::5][want_q, want_s]))
