"""Fetch in several processes, so decoding, hashing and the HTTP client's Python use every core.

One process of download threads tops out at about 1.3 cores: the GIL serialises the Python of the
HTTP client and of the fetch bookkeeping. :class:`FetchPool` runs ``processes`` worker processes
(``python -m pipelines.fetchworker``: new interpreters, safe beside Dagster's threads), each with its
own :class:`~pipelines.fetch.Fetcher` and download threads. A worker does the whole fetch (download,
validate, hash, store) and sends back only the small :class:`~pipelines.fetch.FetchResult`; the ingest
loop, the manifest and every decision stay in the calling process.

Politeness holds across processes: each worker takes ``1/processes`` of every host's budget (its
concurrency and request rate, and ``processes`` times a robots.txt Crawl-delay) and the workers take
turns, so a host sees at most the load one process would put on it; each worker reads a host's
robots.txt once.

A worker that dies (a decoder crash, the OOM killer) fails the downloads it had in flight as
``crashed`` (retryable, so the ingest's retry budget bounds a URL that crashes every time) and is
replaced; the run goes on.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from pipelines.fetch import FetchResult, FetchSettings
from pipelines.fetchworker import STOP
from pipelines.storage import Storage

logger = logging.getLogger(__name__)

# The package's parent, so that ``python -m pipelines.fetchworker`` finds this copy of the package.
_ROOT = str(Path(__file__).resolve().parents[1])


def default_processes() -> int:
    """One fetch process per core this process may run on (a container's CPU set, not the host's), at most 4:
    past that, the download threads, not the cores, are what a partition waits for."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


class FetchWorkerError(RuntimeError):
    """The fetch processes cannot do their work at all (not one URL's failure): the run fails with this."""


@dataclass
class _Worker:
    process: subprocess.Popen
    send: Connection
    recv: Connection
    jobs: dict[int, tuple[Future[FetchResult], str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    alive: bool = True
    collector: threading.Thread | None = None


class FetchPool:
    """``submit(url) -> Future[FetchResult]`` over worker processes; a drop-in for a thread pool running
    ``fetcher.fetch``. ``threads`` is the total number of download threads, split between the processes."""

    def __init__(
        self,
        storage: Storage,
        settings: FetchSettings,
        *,
        processes: int,
        threads: int,
        known_hashes: set[str] | frozenset[str] = frozenset(),
        max_restarts: int = 8,
    ) -> None:
        # Each worker gets a whole share of every host's concurrency, so never more workers than that allows.
        self.processes = max(1, min(processes, settings.per_host_concurrency))
        self.storage, self.settings = storage, settings
        self.threads = max(1, -(-threads // self.processes))
        self.known = set(known_hashes)
        self.restarts_left = max_restarts
        self._jobs = itertools.count()
        self._guard = threading.Lock()
        self._closing = False
        self._broken: FetchWorkerError | None = None
        self._workers: list[_Worker] = []  # started at the first submit: a run with nothing to fetch starts none

    def _start(self, rank: int) -> _Worker:
        """A fresh ``python -m pipelines.fetchworker``: a new interpreter (no fork beside threads) that imports
        only the fetcher, not whatever the calling program's ``__main__`` imports."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "pipelines.fetchworker"]
        process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        assert process.stdin is not None and process.stdout is not None
        send = Connection(os.dup(process.stdin.fileno()), readable=False)
        recv = Connection(os.dup(process.stdout.fileno()), writable=False)
        process.stdin.close()
        process.stdout.close()
        send.send((self.storage, self.settings, self.threads, self.processes, rank, self.known))
        worker = _Worker(process, send, recv)
        worker.collector = threading.Thread(target=self._collect, args=(worker,), daemon=True, name="fetch-results")
        worker.collector.start()
        return worker

    def _collect(self, worker: _Worker) -> None:
        """Resolve the worker's futures as its results arrive; when it dies, fail what it still had.

        A worker that cannot even start (its first message is an error, e.g. storage it cannot open) fails its
        jobs with :class:`FetchWorkerError`: that is the run's error, not a row per URL.
        """
        setup_error = None
        while True:
            try:
                job, result = worker.recv.recv()
            except (EOFError, OSError):
                break
            if job is None:  # the handshake: None when ready, else why setting up failed
                setup_error = result
                continue
            with worker.lock:
                fut, _ = worker.jobs.pop(job)
            fut.set_result(result)
        worker.process.wait()
        worker.recv.close()
        with worker.lock:
            worker.alive = False
            lost, worker.jobs = list(worker.jobs.values()), {}
        reason = f"the fetch process died (exit code {worker.process.returncode}) while this download was in flight"
        if self._closing:  # downloads dropped by close(): not attempted
            for fut, _ in lost:
                fut.cancel()
            return
        if setup_error is not None:
            self._broken = FetchWorkerError(f"a fetch process could not start: {setup_error}")
            for fut, _ in lost:
                fut.set_exception(self._broken)
            return
        for fut, url in lost:
            fut.set_result(FetchResult(url=url, status="crashed", reason=reason, retryable=True))
        if lost:
            logger.warning("fetch process %s died (exit code %s)", worker.process.pid, worker.process.returncode)

    def _pick(self) -> _Worker:
        """The live worker with the fewest downloads in flight, replacing dead ones while restarts are left."""
        with self._guard:
            if self._broken is not None:
                raise self._broken
            if not self._workers:
                self._workers = [self._start(rank) for rank in range(self.processes)]
            for i, w in enumerate(self._workers):
                if not w.alive and self.restarts_left > 0:
                    self.restarts_left -= 1
                    self._workers[i] = self._start(i)
            live = [w for w in self._workers if w.alive]
            if not live:
                raise FetchWorkerError("every fetch process died and the restart budget is spent; see the log")
            return min(live, key=lambda w: len(w.jobs))

    def submit(self, url: str, *, allow_local: bool = False) -> Future[FetchResult]:
        fut: Future[FetchResult] = Future()
        job = next(self._jobs)
        worker = self._pick()
        with worker.lock:
            if not worker.alive:  # died between the pick and now: its collector will not see this job
                fut.set_result(FetchResult(url=url, status="crashed", reason="the fetch process died", retryable=True))
                return fut
            worker.jobs[job] = (fut, url)
        with contextlib.suppress(OSError):  # a broken pipe: the collector fails the job with the others
            worker.send.send((job, url, allow_local))
        return fut

    def close(self) -> None:
        """Stop taking work: queued downloads are dropped (their futures cancelled), running ones finish and
        report, workers exit. On return every future is done."""
        self._closing = True
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.send.send(STOP)
                w.send.close()
        for w in self._workers:
            w.process.wait()
            if w.collector is not None:
                w.collector.join()
