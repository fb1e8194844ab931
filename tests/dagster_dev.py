"""A real ``dagster dev`` (webserver + daemon + code server) on a loopback port, for end-to-end UI tests.

The process is started in its own session so that stopping it kills the whole process group: the
webserver, the daemon, the code server and any run workers they spawned, which would otherwise outlive
the test. Talk to it with :meth:`DagsterDev.graphql`, exactly as the UI does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from tests.fakeweb import free_port

# Instance settings for a test: the queued run coordinator (which ``dagster dev`` uses anyway) polling
# every second instead of every five, two runs at a time on a two-core machine, and runs launched by
# declarative automation held in the queue (limit 0): they are real evaluation runs with their default,
# minutes-long settings, and a test can still see that automation asked for them.
TEST_DAGSTER_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
    max_concurrent_runs: 2
    tag_concurrency_limits:
      - key: dagster/from_automation_condition
        limit: 0
telemetry:
  enabled: false
"""

_SESSION = requests.Session()
_SESSION.trust_env = False  # loopback: never through a proxy from the environment


class DagsterDevError(RuntimeError):
    pass


class DagsterDev:
    """``dagster dev -w workspace.yaml`` in ``cwd`` with ``env`` added to the environment (``None``: removed).

    Use as a context manager: entering starts the server and waits until the code location is loaded,
    leaving stops it and everything it started.
    """

    def __init__(
        self, cwd: Path, home: Path, env: Mapping[str, str | None], log_path: Path, startup_timeout: float = 180
    ):
        self.cwd = cwd
        self.home = home
        self.env = dict(env)
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pgid: int | None = None
        self.leftovers: list[int] = []

    def __enter__(self) -> DagsterDev:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if not (self.home / "dagster.yaml").exists():
            (self.home / "dagster.yaml").write_text(TEST_DAGSTER_YAML)
        env = {k: v for k, v in {**os.environ, **self.env}.items() if v is not None}
        env["DAGSTER_HOME"] = str(self.home)
        exe = Path(sys.executable).parent / "dagster"
        command = [str(exe), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)]
        with open(self.log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the server
            self.proc = subprocess.Popen(
                command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pgid = self.proc.pid
        try:
            self._wait_until_loaded()
        except BaseException:
            self.stop()
            raise

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _wait_until_loaded(self) -> None:
        """Until the webserver answers and the workspace's code location is loaded (or failed: raise)."""
        deadline = time.monotonic() + self.startup_timeout
        query = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
            name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise DagsterDevError(f"dagster dev exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DagsterDevError(f"dagster dev not ready within {self.startup_timeout:g} s:\n{self.log_tail()}")
            try:
                _SESSION.get(f"{self.url}/server_info", timeout=5).raise_for_status()
                entries = self.graphql(query)["workspaceOrError"].get("locationEntries") or []
            except (requests.RequestException, DagsterDevError):
                time.sleep(1)
                continue
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                if errors:
                    raise DagsterDevError(f"code location failed to load: {errors}")
                return
            time.sleep(1)

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        """POST a GraphQL query to the webserver; the ``data``, or raise with the server's errors."""
        response = _SESSION.post(
            f"{self.url}/graphql", json={"query": query, "variables": dict(variables or {})}, timeout=timeout
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise DagsterDevError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the whole process group, SIGKILL to whatever is left after ``timeout`` seconds.

        Then any process still carrying this server's ``DAGSTER_HOME`` (one that left the group) is
        recorded in ``leftovers`` and killed, so a test can fail on it without leaking it.
        """
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and group_alive(pgid):
            self.proc.poll()  # reap the leader so it does not linger as a zombie
            time.sleep(0.2)
        if group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.leftovers = [pid for pid in processes_with_env("DAGSTER_HOME", str(self.home)) if pid != os.getpid()]
        for pid in self.leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None


def _live_processes() -> Iterator[tuple[int, Path]]:
    """(pid, /proc/<pid>) of every process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            yield int(entry.name), entry


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (zombies excluded: orphans' may never be reaped)."""
    for _, entry in _live_processes():
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False


def processes_with_env(key: str, value: str) -> list[int]:
    """Pids of the live processes whose environment has ``key=value`` (Linux ``/proc``)."""
    needle = f"{key}={value}".encode()
    found = []
    for pid, entry in _live_processes():
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found
