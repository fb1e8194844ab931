"""Fetching in worker processes (pipelines/fetchpool.py), against real loopback servers.

The pool must give the same rows as threads in one process, keep each host's limits across its
processes, survive a worker that dies, and fail the run (not every row) when workers cannot start.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import time
from concurrent.futures import wait
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pipelines import manifest as mf
from pipelines.fetch import Fetcher, FetchSettings
from pipelines.fetchpool import FetchPool, FetchWorkerError
from pipelines.ingest import ingest_partition
from pipelines.sources.local import UrlListSource
from pipelines.storage import LocalStorage, S3Storage
from tests.fakeweb import FakeWeb, make_image_bytes
from tests.test_fetch import HTTP, image_times, peak_overlap

DAY = date(2026, 12, 6)


def settings(**overrides: Any) -> FetchSettings:
    base: dict[str, Any] = {
        "http": HTTP,
        "download_timeout": 3.0,
        "per_host_rate": 0.0,
        "per_host_concurrency": 8,
        "respect_robots": False,
    }
    return FetchSettings(**{**base, **overrides})


@pytest.fixture
def fakeweb() -> Any:
    with FakeWeb() as fw:
        yield fw


def _rows(storage: LocalStorage) -> dict[str, tuple]:
    table = mf.read_table(storage, mf.manifest_key("null", DAY.isoformat()))
    return {r["url"]: (r["status"], r["retryable"], r["sha256"], r["attempts"]) for r in table.to_pylist()}


def test_processes_write_the_same_manifest_as_threads(fakeweb: FakeWeb, tmp_path: Path) -> None:
    """Every kind of outcome, through 2 processes and through threads: the same row for every URL."""
    fakeweb.serve("/page.jpg", "<html><body>not an image</body></html>", "text/html")
    fakeweb.serve("/dup-a.jpg", make_image_bytes("dup", (96, 96)), "image/jpeg")
    fakeweb.serve("/dup-b.jpg", make_image_bytes("dup", (96, 96)), "image/jpeg")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(make_image_bytes("local", (80, 80)))
    lines = [fakeweb.url(f"/img/p{i}") for i in range(40)]
    lines += [
        fakeweb.url("/fault/status/404"),
        fakeweb.url("/page.jpg"),
        fakeweb.url("/fault/truncated.jpg"),
        fakeweb.url("/fault/bomb.png"),
        fakeweb.url("/fault/redirect/r"),
        fakeweb.url("/dup-a.jpg"),
        fakeweb.url("/dup-b.jpg"),
        photo.as_uri(),  # a listed file: URL is refused, in a worker as in the parent
        "not a url",
    ]
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join(lines) + "\n")

    results = {}
    for processes in (1, 2):
        storage = LocalStorage(tmp_path / f"store-{processes}", fsync=False)
        fetcher = Fetcher(storage, settings())
        try:
            report = ingest_partition(
                storage, fetcher, "null", DAY, [(UrlListSource(str(listing)), 100)], concurrency=8, processes=processes
            )
        finally:
            fetcher.close()
        assert report.attempted == len(lines)
        rows = _rows(storage)
        # Which of two identical images is "ok" and which "already_seen" depends on which finished first.
        dups = [rows.pop(fakeweb.url(f"/dup-{c}.jpg")) for c in "ab"]
        rows["dups"] = tuple(sorted(dups))
        results[processes] = rows
        stored = sorted(p.name for p in (tmp_path / f"store-{processes}" / "raw" / "images").rglob("*.jpg"))
        results[processes, "files"] = stored
    assert results[1] == results[2]
    assert results[1, "files"] == results[2, "files"]
    statuses = sorted({s for url, (s, *_) in results[2].items() if url != "dups"})
    assert [s for s, *_ in results[2]["dups"]] == ["already_seen", "ok"]
    assert statuses == ["http_error", "invalid_url", "not_an_image", "ok", "refused", "too_large", "truncated"]


def test_workers_are_other_processes_and_keep_the_network_policy(fakeweb: FakeWeb, tmp_path: Path) -> None:
    """Two worker PIDs, neither this one; a worker refuses loopback unless the settings allow it."""
    storage = LocalStorage(tmp_path, fsync=False)
    pool = FetchPool(storage, settings(), processes=2, threads=4)
    try:
        results = [f.result(timeout=30) for f in [pool.submit(fakeweb.url(f"/img/w{i}")) for i in range(6)]]
        pids = {w.process.pid for w in pool._workers}
    finally:
        pool.close()
    assert [r.status for r in results] == ["ok"] * 6
    assert len(pids) == 2 and os.getpid() not in pids

    strict = settings(http=dataclasses.replace(HTTP, allowed_networks=()))
    pool = FetchPool(storage, strict, processes=2, threads=2)
    try:
        refused = pool.submit(fakeweb.url("/img/strict")).result(timeout=30)
    finally:
        pool.close()
    assert (refused.status, refused.retryable) == ("refused", False), refused.reason
    assert fakeweb.hits("/img/strict") == 0


def test_host_concurrency_is_split_between_processes(fakeweb: FakeWeb, tmp_path: Path) -> None:
    """per_host_concurrency=4 over 2 processes: the server never handles more than 4 at once, and does handle 4."""
    fakeweb.latency = 0.2
    pool = FetchPool(LocalStorage(tmp_path, fsync=False), settings(per_host_concurrency=4), processes=2, threads=16)
    try:
        results = [f.result(timeout=60) for f in [pool.submit(fakeweb.url(f"/img/c{i}")) for i in range(16)]]
    finally:
        pool.close()
    assert [r.status for r in results] == ["ok"] * 16
    assert peak_overlap(image_times(fakeweb), fakeweb.latency) == 4


def test_crawl_delay_holds_across_processes(fakeweb: FakeWeb, tmp_path: Path) -> None:
    """Crawl-delay 0.3 s with 2 processes: requests to the host stay ~0.3 s apart (each process waits 0.6 s,
    and they take turns), so the host sees one crawler's pace. Each process reads robots.txt once."""
    delay, n = 0.3, 6
    fakeweb.robots_txt = f"User-agent: *\nCrawl-delay: {delay}\n"
    pool = FetchPool(LocalStorage(tmp_path, fsync=False), settings(respect_robots=True), processes=2, threads=6)
    try:
        futures = [pool.submit(fakeweb.url(f"/img/cd{i}")) for i in range(n)]
        results = [f.result(timeout=60) for f in futures]
    finally:
        pool.close()
    assert [r.status for r in results] == ["ok"] * n
    times = image_times(fakeweb)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[-1] - times[0] >= (n - 1) * delay - 0.15, gaps
    assert min(gaps) >= delay / 2, gaps
    assert fakeweb.hits("/robots.txt") == 2


def test_a_dead_worker_fails_its_downloads_as_crashed_and_is_replaced(fakeweb: FakeWeb, tmp_path: Path) -> None:
    """SIGKILL of a worker (as by the OOM killer) with 4 downloads in flight: those 4 are retryable ``crashed``
    rows, the other worker's 4 succeed, and the next download starts a new worker."""
    fakeweb.latency = 0.8  # below the read timeout
    pool = FetchPool(LocalStorage(tmp_path, fsync=False), settings(), processes=2, threads=8)
    try:
        futures = [pool.submit(fakeweb.url(f"/img/k{i}")) for i in range(8)]
        deadline = time.monotonic() + 10
        while fakeweb.hits("/img/k") < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        victim = pool._workers[0]
        os.kill(victim.process.pid, signal.SIGKILL)
        results = [f.result(timeout=30) for f in futures]
        crashed = [r for r in results if r.status == "crashed"]
        assert len(crashed) == 4 and all(r.retryable for r in crashed)
        assert "exit code -9" in crashed[0].reason
        assert [r.status for r in results if r.status != "crashed"] == ["ok"] * 4
        fakeweb.latency = 0.0
        again = [f.result(timeout=30) for f in [pool.submit(fakeweb.url(f"/img/k{i}")) for i in range(4)]]
        assert [r.status for r in again] == ["ok"] * 4
        assert victim not in pool._workers and len(pool._workers) == 2
    finally:
        pool.close()


def test_close_drops_queued_downloads_and_leaves_every_future_done(fakeweb: FakeWeb, tmp_path: Path) -> None:
    fakeweb.latency = 0.5
    pool = FetchPool(LocalStorage(tmp_path, fsync=False), settings(), processes=2, threads=2)
    futures = [pool.submit(fakeweb.url(f"/img/q{i}")) for i in range(12)]
    time.sleep(0.2)
    pool.close()
    wait(futures, timeout=0)
    assert all(f.done() for f in futures)
    finished = [f.result() for f in futures if not f.cancelled()]
    assert 2 <= len(finished) < 12 and all(r.status == "ok" for r in finished)


class _Unopenable(LocalStorage):
    """Storage that cannot be opened in another process, like S3 without credentials there."""

    def __reduce__(self) -> tuple:
        return (_refuse, ("no credentials in this process",))


def _refuse(why: str) -> None:
    raise PermissionError(why)


def test_workers_that_cannot_start_fail_the_run_not_the_rows(fakeweb: FakeWeb, tmp_path: Path) -> None:
    """The run's error names the cause; no row is written as if a URL had failed."""
    storage = _Unopenable(tmp_path, fsync=False)
    listing = tmp_path / "urls.txt"
    listing.write_text("".join(fakeweb.url(f"/img/n{i}") + "\n" for i in range(6)))
    fetcher = Fetcher(storage, settings())
    try:
        with pytest.raises(FetchWorkerError, match="could not start: PermissionError: no credentials in this process"):
            ingest_partition(storage, fetcher, "null", DAY, [(UrlListSource(str(listing)), 10)], processes=2)
    finally:
        fetcher.close()
    rows = mf.read_rows(storage, list(storage.list(mf.parts_prefix("null", DAY.isoformat()))))
    assert not [r for r in rows if r["status"] == "crashed"]
    assert fakeweb.hits("/img/") == 0


def test_workers_store_into_s3(fakeweb: FakeWeb, moto_s3: str, tmp_path: Path) -> None:
    """S3 storage travels to the workers as its settings (each makes its own client) and gets the images."""
    s3 = S3Storage("pool-" + os.urandom(4).hex(), "data", endpoint_url=moto_s3)
    s3.client.create_bucket(Bucket=s3.bucket)
    listing = tmp_path / "urls.txt"
    listing.write_text("".join(fakeweb.url(f"/img/s{i}") + "\n" for i in range(6)))
    fetcher = Fetcher(s3, settings())
    try:
        report = ingest_partition(s3, fetcher, "null", DAY, [(UrlListSource(str(listing)), 10)], processes=2)
    finally:
        fetcher.close()
    assert report.counts == {"ok": 6}
    keys = {r["storage_key"] for r in report.rows}
    assert keys <= set(s3.list("raw/images/")) and len(keys) == 6
