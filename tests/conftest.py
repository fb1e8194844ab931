"""Shared pytest fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from pipelines.httpclient import ALLOWED_NETWORKS_ENV
from tests.fakeweb import FakeWeb, free_port

# ==================================================================================================
# fakeweb + moto_s3 fixtures: loopback HTTP servers standing in for the internet and for S3.
# (Other fixtures go below this block.)
# ==================================================================================================

_MOTO_START_TIMEOUT = 10.0


@pytest.fixture(scope="session", autouse=True)
def allow_loopback() -> Iterator[None]:
    """Let the fetcher reach the test servers: they listen on 127.0.0.1, which it refuses by default.

    The way a user allows a mirror on the LAN (``$GAN_ALLOWED_NETWORKS``), for the whole session so
    module-scoped servers and subprocesses see it too; tests of the refusal pass ``allowed_networks``
    explicitly, which overrides the variable.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ALLOWED_NETWORKS_ENV, "127.0.0.0/8")
        yield


@pytest.fixture
def fakeweb() -> Iterator[FakeWeb]:
    """A fresh FakeWeb per test, so latency/fault settings and request logs never leak between tests."""
    with FakeWeb() as fw:
        yield fw


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never via a proxy


def _answers(url: str) -> bool:
    try:
        with _NO_PROXY_OPENER.open(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a real ``moto_server`` process: S3 over real HTTP, as boto3 talks to it in production.

    Session scope because the server takes a second or two to start; tests use unique bucket names.
    """
    exe = Path(sys.executable).parent / ("moto_server.exe" if os.name == "nt" else "moto_server")
    if not exe.exists():
        pytest.skip(f"moto_server not installed next to {sys.executable} (pip install 'moto[server]')")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.setenv(k, "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.delenv("AWS_PROFILE", raising=False)
        with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the server
            proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + _MOTO_START_TIMEOUT
            while not _answers(endpoint):
                if proc.poll() is not None:
                    pytest.fail(f"moto_server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not answer on {endpoint} within {_MOTO_START_TIMEOUT:g} s")
                time.sleep(0.1)
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ==================================================================================================
# end of fakeweb + moto_s3 fixtures; add other fixtures below
# ==================================================================================================


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance with SQLite storage in the test's temp dir: runs, events and checks are real."""
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as inst:
        yield inst


@pytest.fixture(scope="session")
def fid_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FID Inception-v3 weights (seeded random init: the real file cannot be downloaded here)."""
    from tests.fid_weights import write_random_weights

    return write_random_weights(tmp_path_factory.mktemp("fid") / "random-inception.pth")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: tiny ops (spectral-norm power iterations, small convs) crawl when OpenMP threads
    fight a busy CPU."""
    import torch  # here: most tests need no torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
