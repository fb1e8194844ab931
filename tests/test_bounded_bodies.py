"""robots.txt and listing-API bodies are read like image bodies: bounded in size and in time, so a broken
or hostile server can neither exhaust memory nor hold a worker (a real loopback server sends them)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines import politeness
from pipelines.httpclient import HttpSettings, make_session
from pipelines.politeness import RobotsCache
from pipelines.sources import base
from pipelines.sources.base import SourceContext, SourceUnavailable

PAD = b"# " + b"x" * 1000 + b"\n"


class Handler(BaseHTTPRequestHandler):
    """``/robots.txt``: rules, ~2 MB of comments, a late rule (asked as ``localhost``: a byte every 0.2 s);
    ``/drip*``: a byte every 0.2 s for a minute; ``/big.json``: a 2 MiB JSON array."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        drip = "drip" in self.path or self.headers.get("Host", "").startswith("localhost")
        if self.path == "/robots.txt" and not drip:
            body = b"User-agent: *\nDisallow: /private\n" + PAD * 2000 + b"Disallow: /late\n"
            self._send(body)
        elif self.path.startswith("/big.json"):
            self._send(b"[" + b"1," * (2**20) + b"1]")
        elif drip:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(300):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client stopped reading: expected
            self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def session():
    return make_session(HttpSettings(allowed_networks=("127.0.0.0/8",), retries=0, read_timeout=2.0))


def test_robots_txt_is_read_up_to_500_kib(server: str) -> None:
    """RFC 9309's limit: the rules before it apply, a rule 2 MB down is never read."""
    robots = RobotsCache(session(), "gan-pipelines-test", (2.0, 2.0))
    assert not robots.check(f"{server}/private/a.jpg").allowed
    assert robots.check(f"{server}/late/a.jpg").allowed


def test_a_dripping_robots_txt_is_cut_off_at_its_deadline(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(politeness, "ROBOTS_DEADLINE_S", 1.0)
    robots = RobotsCache(session(), "gan-pipelines-test", (2.0, 2.0))
    start = time.monotonic()
    verdict = robots.check(f"{server}/a.jpg".replace("127.0.0.1", "localhost"))
    assert time.monotonic() - start < 1.0 + 2.0 + 1.0  # the deadline plus at most one read timeout
    assert not verdict.allowed and verdict.failed and "1s" in verdict.reason


def test_an_oversized_listing_is_refused_not_loaded(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "LISTING_MAX_BYTES", 2**20)
    ctx = SourceContext(session(), (2.0, 2.0), date(2026, 12, 6))
    with pytest.raises(SourceUnavailable, match=r"source 'api': GET .*/big\.json failed: .*exceeds 1,048,576 bytes"):
        ctx.get_json("api", f"{server}/big.json")


def test_a_dripping_listing_is_cut_off_at_its_deadline(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "LISTING_DEADLINE_S", 1.0)
    ctx = SourceContext(session(), (2.0, 2.0), date(2026, 12, 6))
    start = time.monotonic()
    with pytest.raises(SourceUnavailable, match=r"took longer than 1s"):
        ctx.get_json("api", f"{server}/drip.json")
    assert time.monotonic() - start < 1.0 + 2.0 + 1.0
