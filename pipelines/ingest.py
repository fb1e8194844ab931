"""Fill one (class, day) partition of raw images: list candidates, fetch concurrently, write the manifest.

Crash safety: attempted rows are flushed to part files every few seconds; a re-run reads them back,
keeps every decided URL, retries only transient failures, and fetches only what the quota still
needs. Images are content-addressed, so re-storing one is a no-op. The final manifest is written
atomically and only then are the part files removed, so a kill at any point loses nothing and
duplicates nothing.

A finished partition stays finished: a URL is tried at most ``max_attempts`` times over all runs, and a
source whose listing ran out is not listed again (unless its settings change), so re-running a partition
with nothing left to do makes no HTTP request at all. A lease (pipelines/lease.py) keeps a second writer
of the same partition out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date

from pipelines import manifest as mf
from pipelines.fetch import Fetcher, FetchResult
from pipelines.fetchpool import FetchPool
from pipelines.lease import Lease, partition_lease
from pipelines.sources.base import Candidate, Source, SourceContext, SourceUnavailable
from pipelines.storage import Storage

logger = logging.getLogger(__name__)


@dataclass
class IngestReport:
    class_name: str
    partition_date: str
    manifest_key: str
    version: str
    rows: list[dict]
    attempted: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # whole partition, by status
    run_counts: dict[str, int] = field(default_factory=dict)  # this run's attempts, by status
    per_source_ok: dict[str, int] = field(default_factory=dict)
    skipped_seen_urls: int = 0
    bytes_ok: int = 0
    elapsed_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.run_counts.get("ok", 0) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def failure_rate(self) -> float:
        total = sum(self.counts.values())
        failed = sum(n for s, n in self.counts.items() if s not in mf.NOT_FAILURES)
        return failed / total if total else 0.0


@dataclass
class _SourceState:
    source: Source
    quota: int
    it: Iterator[Candidate]
    ok: int = 0
    inflight: int = 0
    failures: int = 0
    unanswered: int = 0  # downloads that got no HTTP answer at all, before the first one that did
    answered: bool = False
    exhausted: bool = False

    def wants_more(self, max_failures: int) -> bool:
        return not self.exhausted and self.failures < max_failures and self.ok + self.inflight < self.quota


class _PartWriter:
    """Appends rows to numbered Parquet part files, at most every ``every_s`` seconds or ``every_n`` rows."""

    def __init__(self, storage: Storage, prefix: str, every_n: int, every_s: float, lease: Lease) -> None:
        self.storage, self.prefix, self.every_n, self.every_s, self.lease = storage, prefix, every_n, every_s, lease
        self.pending: list[dict] = []
        self.last = time.monotonic()
        self.seq = 0

    def add(self, row: dict) -> None:
        self.pending.append(row)
        if len(self.pending) >= self.every_n or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.lease.check()
            self.seq += 1
            key = f"{self.prefix}part-{time.time_ns():020d}-{self.seq:05d}.parquet"
            mf.write_table(self.storage, key, mf.to_table(self.pending))
            self.pending = []
        self.last = time.monotonic()


def _prior(storage: Storage, class_name: str, this_key: str, this_parts: str) -> tuple[set[str], set[str]]:
    """URLs decided and hashes ingested by every other partition of the class (finished or not)."""
    keys = [k for k in mf.class_manifests(storage, class_name) if k != this_key]
    keys += [k for k in storage.list(f"raw/_parts/{class_name}/") if not k.startswith(this_parts)]
    urls: set[str] = set()
    hashes: set[str] = set()
    for key in keys:
        for row in mf.read_table(storage, key, ["url", "status", "retryable", "sha256"]).to_pylist():
            if not mf.is_transient(row):
                urls.add(row["url"])
            if row["status"] == "ok" and row["sha256"]:
                hashes.add(row["sha256"])
    return urls, hashes


def ingest_partition(
    storage: Storage,
    fetcher: Fetcher,
    class_name: str,
    partition_date: date,
    sources: list[tuple[Source, int]],
    *,
    concurrency: int = 16,
    processes: int = 1,
    max_failures_per_source: int | None = None,
    unreachable_after: int = 8,
    max_attempts: int = 3,
    holder: str = "",
    lease_ttl_s: float = 60.0,
    lease_wait_s: float = 0.0,
    flush_every: int = 200,
    flush_seconds: float = 5.0,
    log: Callable[[str], None] = logger.info,
) -> IngestReport:
    """Fetch up to each source's quota of new images for the partition and write its manifest.

    ``concurrency`` download threads in all; with ``processes`` > 1 they are split between that many worker
    processes (pipelines/fetchpool.py), which use every core.

    Raises :class:`SourceUnavailable` (after saving what was fetched) when a source's listing API
    cannot be reached, or its first ``unreachable_after`` downloads get no answer at all.
    Raises :class:`~pipelines.lease.LeaseHeld` naming the other writer when the partition is being
    ingested already (waiting up to ``lease_wait_s`` for it); ``holder`` says who this writer is.
    """
    day = partition_date.isoformat()
    with partition_lease(
        storage,
        mf.lease_key(class_name, day),
        holder,
        ttl_s=lease_ttl_s,
        wait_s=lease_wait_s,
        what=f"raw partition {class_name}/{day}",
        log=log,
    ) as lease:
        return _fill(
            storage,
            fetcher,
            class_name,
            partition_date,
            sources,
            lease,
            concurrency=concurrency,
            processes=processes,
            max_failures=max_failures_per_source or max(50, 2 * max((q for _, q in sources), default=0)),
            unreachable_after=unreachable_after,
            max_attempts=max_attempts,
            flush_every=flush_every,
            flush_seconds=flush_seconds,
            log=log,
        )


def _fill(
    storage: Storage,
    fetcher: Fetcher,
    class_name: str,
    partition_date: date,
    sources: list[tuple[Source, int]],
    lease: Lease,
    *,
    concurrency: int,
    processes: int,
    max_failures: int,
    unreachable_after: int,
    max_attempts: int,
    flush_every: int,
    flush_seconds: float,
    log: Callable[[str], None],
) -> IngestReport:
    """:func:`ingest_partition` once this process holds the partition's lease."""
    t0 = time.perf_counter()
    day = partition_date.isoformat()
    key, parts = mf.manifest_key(class_name, day), mf.parts_prefix(class_name, day)
    seen_urls, seen_hashes = _prior(storage, class_name, key, parts)

    current: dict[str, dict] = {}
    finished = storage.exists(key)
    for row in mf.read_rows(storage, ([key] if finished else []) + list(storage.list(parts))):
        current[row["url"]] = row
    for row in current.values():
        if row["status"] == "ok":
            seen_hashes.add(row["sha256"])
        if mf.is_transient(row) and row["attempts"] >= max_attempts:  # max_attempts was lowered since
            _give_up(row)
    if current:
        log(f"{class_name}/{day}: resuming with {len(current)} URLs already attempted")

    listed_out = mf.read_exhausted(storage, key) if finished else {}
    ctx = SourceContext(fetcher.session, fetcher.timeout, partition_date)
    retry = {r["source"] for r in current.values() if mf.is_transient(r)}

    def listing(src: Source) -> Iterator[Candidate]:
        """A source that ran out last time is listed again only for its transient failures or new settings."""
        done = listed_out.get(src.name) == _fingerprint(src) and src.name not in retry
        return iter(()) if done else iter(src.candidates(ctx))

    states = [_SourceState(src, quota, listing(src)) for src, quota in sources]
    for st in states:
        st.ok = sum(1 for r in current.values() if r["source"] == st.source.name and r["status"] == "ok")

    writer = _PartWriter(storage, parts, flush_every, flush_seconds, lease)
    inflight: dict[Future[FetchResult], tuple[_SourceState, Candidate]] = {}
    submitted: set[str] = set()
    run_counts: Counter[str] = Counter()
    skipped = 0
    bytes_ok = 0
    last_log = time.monotonic()

    def next_candidate(st: _SourceState) -> Candidate | None:
        nonlocal skipped
        for cand in st.it:
            prev = current.get(cand.url)
            if cand.url in submitted or (prev is not None and not mf.is_transient(prev)):
                continue
            if cand.url in seen_urls:
                skipped += 1
                continue
            return cand
        st.exhausted = True
        return None

    def record(fut: Future[FetchResult]) -> None:
        nonlocal bytes_ok
        st, cand = inflight.pop(fut)
        st.inflight -= 1
        res = fut.result()
        if res.status == "ok" and res.sha256 in seen_hashes:
            res.status, res.reason = "already_seen", f"same bytes (sha256 {res.sha256[:12]}) already ingested"
        elif res.status == "ok":
            seen_hashes.add(res.sha256)
            st.ok += 1
            bytes_ok += res.bytes or 0
        row = _row(class_name, day, cand, res)
        prev = current.get(cand.url)
        row["attempts"] = (prev["attempts"] if prev else 0) + 1
        if row["retryable"] and row["attempts"] >= max_attempts:
            _give_up(row)
        current[cand.url] = row
        writer.add(row)
        run_counts[res.status] += 1
        if _answered(res):
            st.answered = True
        elif _no_answer(cand.url, res) and not st.answered:
            st.unanswered += 1
            if st.unanswered >= unreachable_after:
                raise SourceUnavailable(
                    f"source {st.source.name!r} is unreachable: its first {st.unanswered} downloads got no answer "
                    f"from the server (last: {cand.url}: {res.reason})"
                )
        if res.status not in mf.NOT_FAILURES:
            st.failures += 1
            if st.failures == max_failures:
                log(f"{class_name}/{day}: source {st.source.name!r} stopped after {max_failures} failures")

    if processes > 1:
        procs = FetchPool(storage, fetcher.settings, processes=processes, threads=concurrency, known_hashes=seen_hashes)
        submit, close = procs.submit, procs.close
    else:
        threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"fetch-{class_name}")

        def submit(url: str, *, allow_local: bool) -> Future[FetchResult]:
            return threads.submit(fetcher.fetch, url, seen_hashes, allow_local=allow_local)

        def close() -> None:
            threads.shutdown(wait=True, cancel_futures=True)

    finished_q: queue.SimpleQueue[Future[FetchResult]] = queue.SimpleQueue()  # cheaper than wait() over all
    try:
        while True:
            progressed = True
            while len(inflight) < 2 * concurrency and progressed:
                progressed = False
                for st in states:
                    if len(inflight) >= 2 * concurrency or not st.wants_more(max_failures):
                        continue
                    cand = next_candidate(st)
                    if cand is None:
                        continue
                    submitted.add(cand.url)
                    st.inflight += 1
                    fut = submit(cand.url, allow_local=cand.local)
                    inflight[fut] = (st, cand)
                    fut.add_done_callback(finished_q.put)
                    progressed = True
            if not inflight:
                break
            fut = finished_q.get()
            while True:
                if fut in inflight and not fut.cancelled():
                    record(fut)
                try:
                    fut = finished_q.get_nowait()
                except queue.Empty:
                    break
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                rate = run_counts["ok"] / (time.perf_counter() - t0)
                log(
                    f"{class_name}/{day}: {sum(run_counts.values())} attempted, {dict(run_counts)}, {rate:.1f} images/s"
                )
    finally:
        # On an error, keep what finished: those rows are flushed, the rest is retried on resume. The error
        # already propagating is the one to report: the same failure in other downloads (e.g. a full disk)
        # must neither replace it nor skip the flush.
        close()
        for fut in [f for f in inflight if f.done() and not f.cancelled()]:
            with contextlib.suppress(Exception):
                record(fut)
        writer.flush()

    rows = mf.finalize(current.values())
    exhausted = {st.source.name: _fingerprint(st.source) for st in states if st.exhausted}
    lease.check()
    mf.write_table(storage, key, mf.to_table(rows, exhausted))
    for part in list(storage.list(parts)):
        storage.delete(part)
    counts = Counter(r["status"] for r in rows)
    report = IngestReport(
        class_name=class_name,
        partition_date=day,
        manifest_key=key,
        version=mf.content_version(rows),
        rows=rows,
        attempted=sum(run_counts.values()),
        counts=dict(counts),
        run_counts=dict(run_counts),
        per_source_ok={st.source.name: st.ok for st in states},
        skipped_seen_urls=skipped,
        bytes_ok=bytes_ok,
        elapsed_s=time.perf_counter() - t0,
    )
    log(
        f"{class_name}/{day}: done, {report.attempted} attempted this run, partition {dict(counts)}, "
        f"{report.images_per_s:.1f} images/s"
    )
    return report


def _answered(res: FetchResult) -> bool:
    """A server answered (an HTTP status, or robots.txt's verdict): the source is reachable."""
    return res.http_status is not None or res.status == "robots_disallowed"


def _no_answer(url: str, res: FetchResult) -> bool:
    """An http(s) server that never answered: refused, reset, timed out, unresolvable. Evidence the source is down.

    Neither this nor an answer: a line that is no URL, a scheme we do not fetch, a URL refused by
    policy. Those rows are final (not retryable) and say nothing about any server.
    """
    scheme = url.split(":", 1)[0].lower()
    no_status = res.http_status is None and res.status in ("http_error", "timeout")
    return no_status and res.retryable and scheme in ("http", "https")


def _give_up(row: dict) -> None:
    """Make a transient failure final once it was tried ``max_attempts`` times: later runs leave it alone."""
    row["retryable"] = False
    row["reason"] = f"{row['reason']} (gave up after {row['attempts']} attempts)"


def _fingerprint(source: Source) -> str:
    """The source's settings (its repr): a changed source is listed again even where it had run out."""
    return hashlib.sha256(repr(source).encode()).hexdigest()[:16]


def _row(class_name: str, day: str, cand: Candidate, res: FetchResult) -> dict:
    row = asdict(res)
    row.update(
        {
            "class": class_name,
            "partition_date": day,
            "source": cand.source,
            "license": cand.license,
            "meta": json.dumps(cand.meta, sort_keys=True, default=str),
        }
    )
    return row
