"""Near-duplicate search at scale: exact Hamming self-join of 1M 64-bit hashes with pipelines.hamming.

Run by hand (``python benchmarks/bench_neardup.py``). For each radius, in a fresh process so that peak
memory is per radius: 1M uniformly random hashes plus 1,000 planted pairs at distances 1..radius;
``self_join`` (index build included), then ``HammingIndex`` build and a search of all hashes against it;
time, peak memory (ru_maxrss of the process, and tracemalloc: index size and peak while joining),
whether every planted pair was found, and how many random pairs were found against the number expected
for uniform hashes. Then the obvious alternative, a blocked all-pairs popcount, on a 20,000-hash
subsample, checked against self_join there and extrapolated to 1M as n^2.

Random hashes are the easy case for the index (balanced bits); real pHashes are less uniform, so treat
these as lower bounds on cost per hash. ru_maxrss is well above the tracemalloc peak mostly because glibc
keeps freed heap memory for reuse: with MALLOC_MMAP_THRESHOLD_=131072 the radius-12 self-join peaks at
about 300 MiB instead of 830 MiB (but runs 3x slower). The default radius comes from benchmarks/bench_dedup_quality.py.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
import tracemalloc
from math import comb
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.hamming import HammingIndex, self_join

DEFAULT_RADIUS = 4  # chosen by benchmarks/bench_dedup_quality.py (pHash distances are even: 4 = 5)
MIB = 1 << 20
BRUTE_N = 20_000  # subsample for the all-pairs baseline
BATCH = 10_000  # new hashes searched against the full index (each one bit from a stored hash)


def make_hashes(n: int, planted: int, radius: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random hashes followed by `planted` partners of random ones at distances cycling 1..radius."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    base = rng.choice(n, planted, replace=False)
    partners = hashes[base].copy()
    for k in range(planted):
        d = 1 + k % max(radius, 1)
        bits = rng.choice(64, d, replace=False)
        partners[k] ^= np.uint64(sum(1 << int(b) for b in bits))
    pairs = np.stack((base, n + np.arange(planted)), axis=1)
    return np.concatenate((hashes, partners)), pairs


def brute_self_join(hashes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j within radius by a blocked all-pairs popcount: the O(n^2) baseline."""
    n = hashes.size
    step = max(1, (1 << 21) // n)
    out_i, out_j = [], []
    for i0 in range(0, n, step):
        d = np.bitwise_count(hashes[i0 : i0 + step, None] ^ hashes[None, i0:])
        i, j = np.nonzero(d <= radius)
        upper = j > i
        out_i.append(i[upper] + i0)
        out_j.append(j[upper] + i0)
    return np.concatenate(out_i), np.concatenate(out_j)


def expected_random_pairs(n: int, radius: int) -> float:
    return comb(n, 2) * sum(comb(64, k) for k in range(radius + 1)) / 2.0**64


def run_radius(n: int, planted: int, radius: int, with_index: bool, brute_n: int) -> dict[str, float]:
    hashes, pairs = make_hashes(n, planted, radius)
    total = hashes.size
    res: dict[str, float] = {"radius": radius, "n": total}

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    i, j, _ = self_join(hashes, radius)
    res["self_join_s"] = time.perf_counter() - t0
    res["self_join_peak_mib"] = (tracemalloc.get_traced_memory()[1] - base) / MIB
    found = np.isin(pairs[:, 0] * total + pairs[:, 1], i * total + j)
    res["planted_found"] = int(found.sum())
    res["planted"] = planted
    res["pairs_found"] = int(i.size)
    # Planted pairs and pairs among random hashes (a planted partner near another random hash counts as random).
    res["random_found"] = int(i.size - found.sum())
    res["random_expected"] = expected_random_pairs(total, radius)
    del i, j

    if with_index:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        index = HammingIndex(radius)
        t0 = time.perf_counter()
        index.add(hashes, np.arange(total))
        index.search(np.zeros(0, np.uint64))  # the index builds lazily, at its first search
        res["index_build_s"] = time.perf_counter() - t0
        res["index_mib"] = (tracemalloc.get_traced_memory()[0] - before) / MIB
        t0 = time.perf_counter()
        q, ids, _ = index.search(hashes)
        res["index_search_s"] = time.perf_counter() - t0
        res["index_peak_mib"] = (tracemalloc.get_traced_memory()[1] - before) / MIB
        # Every hash finds itself; the rest are the self-join's pairs, from both ends.
        res["index_results"] = int(q.size)
        res["index_consistent"] = int(q.size == total + 2 * res["pairs_found"])
        del q, ids
        # The incremental case: a new partition's hashes against the stored corpus.
        batch = hashes[np.random.default_rng(2).choice(total, BATCH, replace=False)] ^ np.uint64(1)
        t0 = time.perf_counter()
        q, _, _ = index.search(batch)
        res["batch_search_s"] = time.perf_counter() - t0
        res["batch_found"] = int(np.unique(q).size)
        del index
    tracemalloc.stop()

    sub = hashes[np.random.default_rng(1).choice(total, brute_n, replace=False)]
    t0 = time.perf_counter()
    bi, bj = brute_self_join(sub, radius)
    res["brute_sub_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    si, sj, _ = self_join(sub, radius)
    res["index_sub_s"] = time.perf_counter() - t0
    res["sub_agree"] = int(np.array_equal(bi * brute_n + bj, np.sort(si * brute_n + sj)))
    res["brute_extrapolated_s"] = res["brute_sub_s"] * (total / brute_n) ** 2
    res["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def _worker(args: tuple, out: mp.Queue) -> None:
    out.put(run_radius(*args))


def report(r: dict[str, float]) -> None:
    print(
        f"\n## radius {r['radius']}: {r['n']:,} hashes"
        f" ({r['n'] - r['planted']:,} random + {r['planted']:,} planted partners)"
    )
    print(f"- self_join (build + join): {r['self_join_s']:.2f} s, tracemalloc peak {r['self_join_peak_mib']:.0f} MiB")
    print(
        f"- planted pairs found: {r['planted_found']:,} / {r['planted']:,}; other pairs found: {r['random_found']:,}"
        f" (expected for uniform random hashes: {r['random_expected']:.1f})"
    )
    if "index_build_s" in r:
        print(
            f"- HammingIndex: build {r['index_build_s']:.2f} s ({r['index_mib']:.0f} MiB), search all {r['n']:,}"
            f" against it {r['index_search_s']:.2f} s (peak {r['index_peak_mib']:.0f} MiB), {r['index_results']:,}"
            f" results, consistent with self_join: {bool(r['index_consistent'])}"
        )
        print(
            f"- {BATCH:,} new hashes (each 1 bit from a stored one) searched against the index:"
            f" {r['batch_search_s'] * 1000:.0f} ms, {r['batch_found']:,} found a match"
        )
    print(
        f"- brute force all pairs on {BRUTE_N:,}: {r['brute_sub_s']:.2f} s (self_join there: {r['index_sub_s']:.3f} s,"
        f" same pairs: {bool(r['sub_agree'])}); extrapolated to {r['n']:,}: {r['brute_extrapolated_s']:,.0f} s"
        f" = {r['brute_extrapolated_s'] / r['self_join_s']:,.0f}x the self_join"
    )
    print(f"- process peak RSS (ru_maxrss): {r['maxrss_mib']:,.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--planted", type=int, default=1_000)
    parser.add_argument("--radii", type=int, nargs="+", default=sorted({DEFAULT_RADIUS, 4, 6, 8, 10, 12}))
    parser.add_argument(
        "--index-radii", type=int, nargs="*", default=sorted({DEFAULT_RADIUS, 8}), help="also time HammingIndex"
    )
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    results = []
    for radius in args.radii:
        out = ctx.Queue()
        p = ctx.Process(target=_worker, args=((args.n, args.planted, radius, radius in args.index_radii, BRUTE_N), out))
        p.start()
        r = out.get()
        p.join()
        report(r)
        results.append(r)

    print(
        "\n| radius | self_join | index build | search all | planted found | other pairs (expected) | peak RSS |"
        " brute force, extrapolated | speed-up |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        build = f"{r['index_build_s']:.2f} s" if "index_build_s" in r else "-"
        search = f"{r['index_search_s']:.2f} s" if "index_search_s" in r else "-"
        print(
            f"| {r['radius']} | {r['self_join_s']:.2f} s | {build} | {search} |"
            f" {r['planted_found']:,}/{r['planted']:,} | {r['random_found']:,} ({r['random_expected']:.1f}) |"
            f" {r['maxrss_mib']:,.0f} MiB | {r['brute_extrapolated_s']:,.0f} s |"
            f" {r['brute_extrapolated_s'] / r['self_join_s']:,.0f}x |"
        )


if __name__ == "__main__":
    main()
