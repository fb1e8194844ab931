"""A throwaway PostgreSQL server for tests, from Debian's ``postgresql`` package.

The deployment keeps Dagster's runs and event logs in Postgres; testing that configuration against SQLite or a
mock would not catch a wrong driver, schema or credential. So this starts the real server binaries on a loopback
port with password authentication, in a temporary data directory, and removes everything on ``stop()``.

PostgreSQL refuses to run as root: as root the binaries run as the ``postgres`` system user (created by the
Debian package) and the data directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_INSTALL_TIMEOUT = 600.0


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that has the server, else ``pg_config --bindir``."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
        reverse=True,
    )
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out:
            candidates.append(Path(out))
    for bindir in candidates:
        if all((bindir / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def ensure_installed() -> tuple[Path | None, str]:
    """The server's bin directory, installing Debian's ``postgresql`` when missing and allowed.

    Returns ``(bindir, "")``, or ``(None, reason)`` when there are no binaries and they cannot be installed
    (not root, no apt-get, or the install failed): the caller skips with that reason.
    """
    if os.geteuid() == 0 and find_bindir() is not None and not _has_user("postgres"):
        return None, "running as root, and there is no `postgres` user to run the server as (it refuses root)"
    bindir = find_bindir()
    if bindir is not None:
        return bindir, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "PostgreSQL server binaries not found and cannot be installed (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=_INSTALL_TIMEOUT, check=False)
    if proc.returncode != 0:  # a stale package list: update once and try again
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=_INSTALL_TIMEOUT, check=False)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=_INSTALL_TIMEOUT, check=False)
    bindir = find_bindir()
    if bindir is None:
        return (
            None,
            f"PostgreSQL server binaries not found and `apt-get install postgresql` failed: {proc.stderr[-500:]}",
        )
    return bindir, ""


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One server: ``start()`` runs initdb and pg_ctl, ``stop()`` stops it and deletes its files.

    ``url`` is a SQLAlchemy/libpq URL for ``dbname`` as ``user`` with ``password`` over TCP on 127.0.0.1.
    """

    def __init__(self, bindir: Path, user: str = "dagster", password: str = "s3cret pass", dbname: str = "dagster"):
        self.bindir = bindir
        self.user, self.password, self.dbname = user, password, dbname
        self.host = "127.0.0.1"
        self.port = 0
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        from urllib.parse import quote

        return f"postgresql://{quote(self.user)}:{quote(self.password)}@{self.host}:{self.port}/{self.dbname}"

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a server binary, as the ``postgres`` user when we are root (the server refuses root)."""
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self._dir)
        if proc.returncode != 0:
            log = self._dir / "server.log" if self._dir else None
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr}{proc.stdout}\n{tail}")
        return proc

    def start(self) -> PostgresServer:
        self._dir = Path(tempfile.mkdtemp(prefix="gan-pg-"))
        data, sockets = self._dir / "data", self._dir / "sockets"
        sockets.mkdir()
        pwfile = self._dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in (self._dir, sockets, pwfile):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self._run(
            "initdb", "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        self.port = free_port()
        opts = f"-c listen_addresses={self.host} -p {self.port} -k {sockets} -c fsync=off"
        self._run("pg_ctl", "-D", str(data), "-l", str(self._dir / "server.log"), "-o", opts, "-w", "-t", "60", "start")
        self._wait_ready()
        self._create_database()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _create_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres"
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,))
                if cur.fetchone() is None:
                    if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.dbname):
                        raise ValueError(f"unsafe database name {self.dbname!r}")
                    cur.execute(f'CREATE DATABASE "{self.dbname}"')
        finally:
            conn.close()

    def stop(self) -> None:
        if self._dir is None:
            return
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self._dir / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
