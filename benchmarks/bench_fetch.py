"""Fetch throughput: images/s through the real ingest path against a loopback server, by concurrency.

Run by hand (``make bench-fetch``); prints a table and the figures the issue asks for. The server
(tests/fakeweb.py) runs in its own process so that serving does not compete with the fetcher for
the GIL; it answers 256x256 JPEGs after a fixed latency. Each measurement ingests distinct URLs
(a ``url_list`` source) into a fresh local storage: download, full decode, sha256, atomic store
(fsync on), and the Parquet manifest, exactly what the ``raw_images`` asset does.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.fetch import Fetcher, FetchSettings
from pipelines.httpclient import HttpSettings
from pipelines.ingest import ingest_partition
from pipelines.sources.local import UrlListSource
from pipelines.storage import LocalStorage


def _serve(latency: float, ports: mp.Queue, stop: mp.Event) -> None:
    from tests.fakeweb import FakeWeb

    with FakeWeb(latency=latency, image_size=256) as fw:
        ports.put(fw.port)
        stop.wait()


def measure(base_url: str, concurrency: int, count: int, tag: str) -> tuple[float, int]:
    """Images/s and ok count for ``count`` distinct URLs fetched at ``concurrency``."""
    with tempfile.TemporaryDirectory() as tmp:
        urls = Path(tmp) / "urls.txt"
        urls.write_text("\n".join(f"{base_url}/img/bench/{tag}/{i}.jpg" for i in range(count)))
        storage = LocalStorage(Path(tmp) / "data")
        settings = FetchSettings(
            http=HttpSettings(pool_size=max(concurrency, 4)),
            per_host_concurrency=concurrency,
            per_host_rate=0,  # one loopback host stands in for many real ones
            respect_robots=False,
        )
        fetcher = Fetcher(storage, settings)
        try:
            t0 = time.perf_counter()
            report = ingest_partition(
                storage,
                fetcher,
                "bench",
                date(2026, 11, 24),
                [(UrlListSource(str(urls)), count)],
                concurrency=concurrency,
                log=lambda _: None,
            )
            elapsed = time.perf_counter() - t0
        finally:
            fetcher.close()
    ok = report.counts.get("ok", 0)
    return ok / elapsed, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=6.0, help="rough length of each measurement")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    results: dict[str, float] = {}
    for latency in (args.latency, 0.0):
        ports, stop = ctx.Queue(), ctx.Event()
        server = ctx.Process(target=_serve, args=(latency, ports, stop), daemon=True)
        server.start()
        base = f"http://127.0.0.1:{ports.get(timeout=30)}"
        measure(base, 8, 64, f"warmup-{latency}")  # the server caches encoded images per name; warm the pool
        levels = args.concurrency if latency else [max(args.concurrency)]
        for c in levels:
            expected = min(c / latency, 800.0) if latency else 800.0
            count = max(50, int(expected * args.seconds))
            rate, ok = measure(base, c, count, f"{latency}-{c}")
            results[f"{latency}:{c}"] = rate
            print(
                f"latency {latency * 1000:4.0f} ms  concurrency {c:3d}  {count:5d} images  {rate:7.1f} images/s"
                f"  ({ok} ok)",
                flush=True,
            )
        stop.set()
        server.join(timeout=10)

    lat, top = args.latency, max(args.concurrency)
    cpu_limit = results[f"0.0:{top}"]
    ideal = min(top / lat, cpu_limit)
    got = results[f"{lat}:{top}"]
    print(f"\nCPU-bound limit (no latency, concurrency {top}): {cpu_limit:.1f} images/s")
    print(
        f"concurrency {top} at {lat * 1000:.0f} ms: {got:.1f} images/s = {got / ideal:.0%} of "
        f"min({top}/{lat:g} s, CPU limit) = {ideal:.1f}  (target >= 70%)"
    )
    print(f"speed-up over one connection: {got / results[f'{lat}:1']:.1f}x")


if __name__ == "__main__":
    main()
