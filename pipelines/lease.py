"""At most one live writer per raw partition, whatever started it: a Dagster run, a step process left
running after its ``dagster`` command was killed, a script or a notebook.

Two writers of one partition fetch the same URLs twice and race on its part files and manifest. The
lease lives in the storage itself, so it holds across processes, containers and hosts sharing the root:

- Local disk: an exclusive ``flock`` on a lock file under the root. The kernel drops it when the
  holder exits, however it dies, so a SIGKILLed writer frees the partition at once.
- S3: an object created only if absent (``If-None-Match: *``) that names the holder. A heartbeat
  thread rewrites it every ``ttl_s / 3`` (``If-Match`` its ETag). A lease not renewed for ``ttl_s``,
  by the store's own clock, belongs to a dead writer: the next one takes it over, ``If-Match`` the
  stale ETag, so of two contenders only one wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from pipelines.storage import LocalStorage, S3Storage, Storage

logger = logging.getLogger(__name__)


class LeaseError(RuntimeError):
    """The partition cannot be written by this process; the message says who holds it or what happened."""


class LeaseHeld(LeaseError):
    """Another live writer holds the lease; the message names it (host, pid, holder, since when)."""


class LeaseLost(LeaseError):
    """This writer's S3 lease lapsed or was taken over: writing on could clobber the new holder's work."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as stored in it, so a refused writer can name it."""

    holder: str  # the caller's own words, e.g. "Dagster run 1a2b3c4d-..."
    host: str
    pid: int
    since: str  # ISO 8601, UTC
    ttl_s: float
    token: str  # tells two leases of one process apart
    renewals: int = 0  # every renewal changes the S3 object, hence its ETag

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def describe(data: bytes) -> str:
    """A stored :class:`Holder` in words: ``host h, pid 123, Dagster run abc, since 2026-11-24T10:00:00Z``."""
    try:
        h = json.loads(data)
        who = f"host {h['host']}, pid {h['pid']}"
        return f"{who}, {h['holder']}, since {h['since']}" if h["holder"] else f"{who}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "a writer that has not recorded its name yet"


class Lease(ABC):
    """A held lease. Writers call :meth:`check` before each write to the partition."""

    freed: str  # when a killed holder's lease becomes free, for the message that names the holder

    def __init__(self, uri: str, holder: Holder, what: str) -> None:
        self.uri, self.holder, self.what = uri, holder, what

    @abstractmethod
    def acquire(self, wait_s: float) -> None: ...

    @abstractmethod
    def release(self) -> None: ...

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`LeaseLost` when this writer may no longer write to what the lease protects."""

    def _held(self, data: bytes, extra: str = "") -> LeaseHeld:
        return LeaseHeld(
            f"{self.what} is being written by {describe(data)}{extra} (lease {self.uri}). Wait for it to finish "
            f"or stop that process; a killed writer frees it {self.freed}"
        )


class _FileLease(Lease):
    """``flock`` on a file under a local root: released by the kernel with the holder's last descriptor."""

    poll_s = 0.1
    freed = "at once"

    def __init__(self, storage: LocalStorage, key: str, holder: Holder, what: str) -> None:
        super().__init__(storage.uri(key), holder, what)
        self.path = storage.local_path(key)
        self.fd = -1

    def acquire(self, wait_s: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise self._held(self._holder_of_lock()) from None
                    time.sleep(self.poll_s)
            os.ftruncate(fd, 0)
            os.pwrite(fd, self.holder.to_bytes(), 0)
        except BaseException:
            os.close(fd)  # and with it the lock, if it was taken
            raise
        self.fd = fd

    def _holder_of_lock(self) -> bytes:
        """The lock file's content; empty for the moment between a holder's ``flock`` and its write."""
        for _ in range(10):
            data = self.path.read_bytes()
            if data:
                return data
            time.sleep(0.05)
        return data

    def check(self) -> None:
        """Nothing to check: nobody can take a held ``flock`` away."""

    def release(self) -> None:
        os.ftruncate(self.fd, 0)  # a holder's name must not outlive its lock
        os.close(self.fd)


class _S3Lease(Lease):
    """A conditionally created object, renewed by a heartbeat thread, taken over once it expires."""

    def __init__(self, storage: S3Storage, key: str, holder: Holder, what: str, log: Callable[[str], None]) -> None:
        super().__init__(storage.uri(key), holder, what)
        self.freed = f"once its lease expires ({holder.ttl_s:g} s after its last renewal)"
        self.storage, self.key, self.log = storage, key, log
        self.etag = ""
        self.renewed = 0.0  # time.monotonic() when the last successful write was sent
        self.lost = ""
        self.stop = threading.Event()
        self.beat = threading.Thread(target=self._heartbeat, name=f"lease-{key}", daemon=True)

    def acquire(self, wait_s: float) -> None:
        ttl = self.holder.ttl_s
        deadline = time.monotonic() + wait_s
        while True:
            sent = time.monotonic()
            etag = self.storage.put_if(self.key, self.holder.to_bytes())
            if etag:
                break
            current = self.storage.get_with_age(self.key)
            if current is None:  # released meanwhile
                continue
            data, stale, age = current
            their_ttl = _ttl_of(data, ttl)
            if age >= their_ttl:
                sent = time.monotonic()
                etag = self.storage.put_if(self.key, self.holder.to_bytes(), etag=stale)
                if etag:
                    self.log(f"took over {self.uri} from {describe(data)}: not renewed for {age:.0f} s")
                    break
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._held(data, f", last renewed {age:.0f} s ago")
            time.sleep(max(0.05, min(1.0, ttl / 4, remaining, their_ttl - age)))
        self.etag, self.renewed = etag, sent
        self.beat.start()

    def _heartbeat(self) -> None:
        n = 0
        while not self.stop.wait(self.holder.ttl_s / 3):
            n += 1
            sent = time.monotonic()
            body = replace(self.holder, renewals=n).to_bytes()
            try:
                etag = self.storage.put_if(self.key, body, etag=self.etag)
            except Exception as e:  # a network blip: retried next beat; check() fails after ttl_s
                logger.warning("cannot renew %s: %s", self.uri, e)
                continue
            if etag is None:
                self.lost = "another writer took it over"
                return
            self.etag, self.renewed = etag, sent

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"{self.what}: lost the lease {self.uri}: {self.lost}")
        silent = time.monotonic() - self.renewed
        if silent >= self.holder.ttl_s:
            raise LeaseLost(
                f"{self.what}: the lease {self.uri} was not renewed for {silent:.0f} s (ttl {self.holder.ttl_s:g} s); "
                "another writer may have taken it over"
            )

    def release(self) -> None:
        self.stop.set()
        self.beat.join()
        if self.lost:
            return
        try:
            self.storage.delete_if(self.key, self.etag)
        except Exception as e:  # must not hide the run's own outcome; the lease expires anyway
            logger.warning("cannot release %s (it expires in %g s): %s", self.uri, self.holder.ttl_s, e)


def _ttl_of(data: bytes, default: float) -> float:
    """The TTL the holder asked for: a writer with a longer TTL than ours renews less often."""
    try:
        return float(json.loads(data)["ttl_s"])
    except (ValueError, KeyError, TypeError):
        return default


@contextlib.contextmanager
def partition_lease(
    storage: Storage,
    key: str,
    holder: str = "",
    *,
    ttl_s: float = 60.0,
    wait_s: float = 0.0,
    what: str = "",
    log: Callable[[str], None] = logger.info,
) -> Iterator[Lease]:
    """Hold the lease at ``key`` for the block, or raise :class:`LeaseHeld` naming its holder.

    ``holder`` is recorded with this host, pid and start time. With ``wait_s`` a held lease is waited
    for that long; ``ttl_s`` is how long an S3 lease outlives a dead holder. ``what`` names the thing
    protected, in messages.
    """
    info = Holder(holder, socket.gethostname(), os.getpid(), _now(), ttl_s, secrets.token_hex(8))
    what = what or key
    lease: Lease
    if isinstance(storage, LocalStorage):
        lease = _FileLease(storage, key, info, what)
    elif isinstance(storage, S3Storage):
        lease = _S3Lease(storage, key, info, what, log)
    else:
        raise TypeError(f"no lease for {type(storage).__name__}: use LocalStorage or S3Storage")
    lease.acquire(wait_s)
    try:
        yield lease
    finally:
        lease.release()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
