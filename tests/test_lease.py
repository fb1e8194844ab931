"""The partition lease: one live writer, the holder named to the refused one, a dead holder's lease freed.

Local disk is a real ``flock``; S3 is the real ``moto_server`` speaking conditional writes over HTTP. The
dead holder is a real process killed with SIGKILL while it holds the lease.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.lease import LeaseHeld, LeaseLost, partition_lease
from pipelines.storage import LocalStorage, S3Storage, Storage

REPO = Path(__file__).resolve().parents[1]
KEY = "raw/_leases/dogs/2026-11-24.lease"


def _s3(endpoint: str) -> S3Storage:
    s3 = S3Storage("lease-" + os.urandom(4).hex(), "data", endpoint_url=endpoint)
    s3.client.create_bucket(Bucket=s3.bucket)
    return s3


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return _s3(request.getfixturevalue("moto_s3"))


def _refusal(storage: Storage, holder: str = "next", **kwargs) -> str:
    """The message of the LeaseHeld that taking the lease now raises."""
    with pytest.raises(LeaseHeld) as held, partition_lease(storage, KEY, holder, **kwargs):
        pytest.fail("two holders at once")
    return str(held.value)


def test_a_second_writer_fails_at_once_naming_the_holder(storage: Storage) -> None:
    with partition_lease(storage, KEY, "Dagster run r-1") as lease:
        lease.check()
        t0 = time.monotonic()
        message = _refusal(storage, "Dagster run r-2", what="raw partition dogs/2026-11-24")
        assert time.monotonic() - t0 < 2
        assert message.startswith("raw partition dogs/2026-11-24 is being written by ")
        assert f"host {socket.gethostname()}, pid {os.getpid()}, Dagster run r-1, since 20" in message
        assert storage.uri(KEY) in message and "r-2" not in message
    with partition_lease(storage, KEY, "Dagster run r-2"):  # released: free for the next writer
        pass


def test_leases_of_other_keys_are_independent(storage: Storage) -> None:
    with partition_lease(storage, KEY), partition_lease(storage, "raw/_leases/null/2026-11-24.lease"):
        pass


def test_a_waiting_writer_gets_the_lease_once_it_is_released(storage: Storage) -> None:
    released = threading.Event()

    def hold() -> None:
        with partition_lease(storage, KEY, "first"):
            started.set()
            time.sleep(1.0)
        released.set()

    started = threading.Event()
    thread = threading.Thread(target=hold)
    thread.start()
    assert started.wait(10)
    with pytest.raises(LeaseHeld, match="first"), partition_lease(storage, KEY, "impatient", wait_s=0.3):
        pass
    with partition_lease(storage, KEY, "patient", wait_s=15):
        assert released.is_set()
    thread.join()


# -- a holder killed with SIGKILL ---------------------------------------------------------------------


def hold_forever(root: str, endpoint: str, ttl_s: float) -> None:
    """The child: take the lease, say so on stdout, and hold it until killed."""
    storage = S3Storage(root.split("/", 1)[0], "data", endpoint_url=endpoint) if endpoint else LocalStorage(root)
    with partition_lease(storage, KEY, "doomed child", ttl_s=ttl_s):
        print("held", flush=True)
        time.sleep(600)


@pytest.fixture
def kill_holder() -> Iterator:
    """Start a child that holds the lease; the test SIGKILLs it by its pid. Killed at teardown otherwise."""
    procs: list[subprocess.Popen] = []

    def start(root: str, endpoint: str = "", ttl_s: float = 60.0) -> subprocess.Popen:
        code = f"from tests.test_lease import hold_forever; hold_forever({root!r}, {endpoint!r}, {ttl_s!r})"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "held\n", f"child ended ({proc.wait()})"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_local_lease_of_a_sigkilled_holder_is_free_at_once(tmp_path: Path, kill_holder) -> None:
    storage = LocalStorage(tmp_path / "store")
    proc = kill_holder(str(storage.root))
    assert re.search(f"pid {proc.pid}, doomed child, since .*a killed writer frees it at once", _refusal(storage))
    _sigkill(proc)
    t0 = time.monotonic()
    with partition_lease(storage, KEY, "next"):
        assert time.monotonic() - t0 < 1


def test_s3_lease_of_a_sigkilled_holder_is_taken_over_after_its_ttl(moto_s3: str, kill_holder) -> None:
    storage = _s3(moto_s3)
    ttl = 2.0
    proc = kill_holder(f"{storage.bucket}/data", moto_s3, ttl)
    time.sleep(2 * ttl)  # the heartbeat keeps a live holder's lease past its TTL
    assert re.search(f"pid {proc.pid}, doomed child.*last renewed [0-9] s ago", _refusal(storage, ttl_s=ttl))
    _sigkill(proc)
    assert re.search(f"pid {proc.pid}", _refusal(storage, ttl_s=ttl))  # not yet expired: still refused at once
    t0 = time.monotonic()
    taken: list[str] = []
    with partition_lease(storage, KEY, "next", ttl_s=ttl, wait_s=30, log=taken.append):
        waited = time.monotonic() - t0
        data, _, _ = storage.get_with_age(KEY) or (b"", "", 0)
        assert b'"next"' in data
    assert 0 < waited < ttl + 3, waited
    assert len(taken) == 1 and f"pid {proc.pid}, doomed child" in taken[0]
    assert storage.get_with_age(KEY) is None  # released


def test_s3_lease_taken_over_from_a_stalled_holder_is_lost(moto_s3: str) -> None:
    """A holder that stalled past its TTL (its lease taken over meanwhile) must stop writing."""
    storage = _s3(moto_s3)
    with partition_lease(storage, KEY, "stalled", ttl_s=1.5) as lease:
        storage.put_bytes(KEY, b'{"host": "elsewhere", "pid": 1, "holder": "new", "since": "now", "ttl_s": 60}')
        deadline = time.monotonic() + 10
        with pytest.raises(LeaseLost, match="another writer took it over"):  # at the next heartbeat
            while time.monotonic() < deadline:
                lease.check()
                time.sleep(0.1)
    assert b"elsewhere" in storage.get_bytes(KEY)  # the new holder's lease is left alone


def test_s3_conditional_writes(moto_s3: str) -> None:
    """The primitives the lease relies on, against a real S3 server: a write that lost returns None."""
    s3 = _s3(moto_s3)
    first = s3.put_if("k", b"one")
    assert first and s3.put_if("k", b"two") is None and s3.get_bytes("k") == b"one"
    second = s3.put_if("k", b"two", etag=first)
    assert second and second != first and s3.get_bytes("k") == b"two"
    assert s3.put_if("k", b"three", etag=first) is None and s3.get_bytes("k") == b"two"
    assert s3.put_if("missing", b"x", etag=first) is None and not s3.exists("missing")
    data, etag, age = s3.get_with_age("k") or (b"", "", -1.0)
    assert (data, etag) == (b"two", second) and 0 <= age < 5
    assert s3.delete_if("k", first) is False and s3.exists("k")
    assert s3.delete_if("k", second) is True and not s3.exists("k")
    assert s3.get_with_age("k") is None
