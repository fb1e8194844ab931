"""Untrusted listings never steer the fetcher to local files or internal addresses.

Sources list URLs that other people's servers chose, so every test here plays a hostile or broken
server over real loopback sockets: a listing of ``file:`` URLs, a redirect to the cloud metadata
address, a host name that resolves to loopback, a status line of binary garbage. The conftest allows
127.0.0.0/8 for the suite; these tests set ``allowed_networks`` explicitly, which overrides it. Where a
refusal must not even connect, a server on a second loopback address (127.0.0.2) counts the
connections it accepts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from assets.demo import fetch_resource
from assets.resources import FetchResource
from pipelines.fetch import Fetcher, FetchResult, FetchSettings
from pipelines.httpclient import ALLOWED_NETWORKS_ENV, MAX_QUOTE, HttpSettings, make_session
from pipelines.ingest import ingest_partition
from pipelines.sources.base import SourceContext, SourceUnavailable
from pipelines.sources.dog_ceo import DogCeoSource
from pipelines.sources.local import LocalDirSource, UrlListSource
from pipelines.storage import LocalStorage
from tests.fakeweb import FakeWeb, make_image_bytes
from tests.test_raw_images_asset import manifest, materialise, resources, write_sources

HTTP = HttpSettings(connect_timeout=1, read_timeout=1, retries=1, backoff_factor=0.01)
PUBLIC_ONLY: tuple[str, ...] = ()  # the default when nothing is allowed: only public addresses
SECRET = "root:x:0:0"  # the start of /etc/passwd: must never show up in a row, a reason or a check


def settings(allowed: tuple[str, ...] = PUBLIC_ONLY, **overrides: Any) -> FetchSettings:
    """Fast test settings with the policy given explicitly, whatever the conftest put in the environment."""
    base: dict[str, Any] = {"download_timeout": 2.0, "per_host_rate": 0.0}
    http = dataclasses.replace(HTTP, allowed_networks=allowed)
    return FetchSettings(**{"http": http, **base, **overrides})


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store", fsync=False)


@pytest.fixture
def make_fetcher(store: LocalStorage) -> Iterator[Callable[..., Fetcher]]:
    made: list[Fetcher] = []

    def make(allowed: tuple[str, ...] = PUBLIC_ONLY, **overrides: Any) -> Fetcher:
        made.append(Fetcher(store, settings(allowed, **overrides)))
        return made[-1]

    yield make
    for fetcher in made:
        fetcher.close()


def assert_final(result: FetchResult, store: LocalStorage, status: str, reason: str) -> None:
    """A final error row: the status, a reason matching ``reason``, never retried, nothing stored or quoted."""
    assert (result.status, result.retryable, result.sha256) == (status, False, None), result
    assert re.search(reason, result.reason), result.reason
    assert SECRET not in result.reason
    assert list(store.list("")) == []


# --------------------------------------------------------------------------------------------------
# Small loopback servers: a redirector, a connection counter, a raw byte sender
# --------------------------------------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    """An HTTP server on ``host`` that counts the connections it accepts and answers from ``routes``."""

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.paths: list[str] = []
        self.connections = 0
        super().__init__((host, 0), _Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def get_request(self) -> tuple[socket.socket, Any]:
        self.connections += 1
        return super().get_request()

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{path}"

    def redirect(self, path: str, location: str) -> None:
        self.routes[path] = (302, {"Location": location}, b"")


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        status, headers, body = self.server.routes.get(self.path, (404, {}, b"not found\n"))
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(host: str = "127.0.0.1") -> Iterator[Server]:
    server = Server(host)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def raw_server(answer: bytes) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that sends ``answer`` to every connection and closes it: not HTTP at all."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError):
                self.request.recv(65536)
                self.request.sendall(answer)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()


@pytest.fixture
def observer() -> Iterator[Server]:
    """A server on a second loopback address: any connection it counts was a connection the policy let through."""
    with serve("127.0.0.2") as server:
        yield server


# --------------------------------------------------------------------------------------------------
# file: URLs are read for local_dir sources only
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "private" / "photo.jpg"
    path.parent.mkdir()
    path.write_bytes(make_image_bytes("a private photo"))
    return path


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "FILE:///etc/passwd", "file://localhost/etc/passwd", "file:{photo}"],
    ids=["passwd", "upper-case", "localhost", "photo"],
)
def test_a_listed_file_url_is_refused_unread(
    make_fetcher: Callable[..., Fetcher], store: LocalStorage, photo: Path, url: str
) -> None:
    """What a server lists is never read from disk, however the scheme is spelled, and the row says why."""
    result = make_fetcher().fetch(url.format(photo=photo))
    assert_final(result, store, "refused", r"^file: URLs are read only for local_dir sources")


def test_a_redirect_to_a_file_url_is_refused(make_fetcher: Callable[..., Fetcher], store: LocalStorage) -> None:
    """Even for a local_dir candidate (allow_local), a server's redirect never leads to the disk."""
    with serve() as web:
        web.redirect("/a.jpg", "file:///etc/passwd")
        result = make_fetcher(("127.0.0.1",)).fetch(web.url("/a.jpg"), allow_local=True)
    assert_final(result, store, "refused", r"^file: URLs are read only for local_dir sources")
    assert web.paths == ["/robots.txt", "/a.jpg"]


def test_openverse_listing_local_files_gives_error_rows_without_their_content(
    tmp_path: Path, fakeweb: FakeWeb, instance: Any, photo: Path
) -> None:
    """The issue's case, through the asset: error rows, nothing stored, nothing of the files in the check."""
    good = fakeweb.url("/ovimg/cat/0.jpg")
    listed = ["file:///etc/passwd", photo.as_uri(), good]
    page = {"page_count": 1, "results": [{"url": u, "license": "cc0", "license_version": "1.0"} for u in listed]}
    fakeweb.serve("/openverse/v1/images/", json.dumps(page))
    spec = {"classes": {"null": [{"name": "ov", "kind": "openverse", "base_url": fakeweb.url("/openverse/v1")}]}}
    result = materialise(resources(tmp_path, write_sources(tmp_path / "s.yaml", spec)), instance, "null")
    rows = {r["url"]: r for r in manifest(tmp_path, "null")}
    assert {u: (rows[u]["status"], rows[u]["retryable"]) for u in listed} == {
        listed[0]: ("refused", False),
        listed[1]: ("refused", False),
        good: ("ok", False),
    }
    [check] = result.get_asset_check_evaluations()
    assert "refused" in check.description
    everything = json.dumps([list(rows.values()), check.description, str(check.metadata)], default=str)
    assert SECRET not in everything
    [stored] = [p for p in (tmp_path / "data" / "raw" / "images").rglob("*") if p.is_file()]
    assert stored.name.startswith(rows[good]["sha256"]) and stored.read_bytes() != photo.read_bytes()


# --------------------------------------------------------------------------------------------------
# Local reads: regular files only, capped, with a deadline
# --------------------------------------------------------------------------------------------------


def test_local_dir_devices_and_fifos_are_error_rows_not_hangs(tmp_path: Path, store: LocalStorage) -> None:
    """/dev/zero once raised MemoryError out of fetch(), a FIFO hung its worker: now both are rows, at once."""
    folder = tmp_path.resolve() / "folder"
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(make_image_bytes("linked"))
    folder.mkdir()
    (folder / "good.jpg").write_bytes(make_image_bytes("good"))
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "linked.jpg").symlink_to(elsewhere)  # a link to a regular file is fine, wherever it points
    os.mkfifo(folder / "pipe.jpg")
    fetcher = Fetcher(store, settings())
    t0 = time.monotonic()
    try:
        source = LocalDirSource(str(folder), name="mine")
        report = ingest_partition(store, fetcher, "null", date(2026, 11, 20), [(source, 10)], concurrency=2)
    finally:
        fetcher.close()
    assert time.monotonic() - t0 < 10
    rows = {Path(r["url"]).name: r for r in report.rows}
    assert {name: (r["status"], r["retryable"]) for name, r in rows.items()} == {
        "good.jpg": ("ok", False),
        "linked.jpg": ("ok", False),
        "pipe.jpg": ("refused", False),
        "zero.jpg": ("refused", False),
    }
    assert rows["zero.jpg"]["reason"] == "/dev/zero is a character device, not a regular file"
    assert rows["pipe.jpg"]["reason"] == f"{folder / 'pipe.jpg'} is a FIFO, not a regular file"


def test_local_read_is_capped_where_stat_cannot_tell(make_fetcher: Callable[..., Fetcher], store: LocalStorage) -> None:
    """A regular file whose size stat reports as 0 (procfs) is still read no further than max_bytes."""
    result = make_fetcher(max_bytes=100).fetch("file:///proc/self/maps", allow_local=True)
    assert_final(result, store, "too_large", r"^file exceeds max_bytes=100$")


def test_local_read_has_the_download_deadline(
    make_fetcher: Callable[..., Fetcher], store: LocalStorage, tmp_path: Path
) -> None:
    """A read slower than download_timeout stops (here: any read, the deadline being zero); a later run retries."""
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"\0" * 3 * 2**20)
    result = make_fetcher(download_timeout=0.0).fetch(big.as_uri(), allow_local=True)
    assert (result.status, result.retryable) == ("timeout", True), result
    assert result.reason == "reading took longer than download_timeout=0s"


def test_a_read_error_midway_is_a_row(make_fetcher: Callable[..., Fetcher], store: LocalStorage) -> None:
    """fetch() never raises: /proc/self/mem opens as a regular file and then fails to read (EIO)."""
    result = make_fetcher().fetch("file:///proc/self/mem", allow_local=True)
    assert_final(result, store, "http_error", r"^cannot read /proc/[0-9]+/mem: Input/output error$")


def test_a_file_url_naming_another_host_is_invalid(make_fetcher: Callable[..., Fetcher], store: LocalStorage) -> None:
    """file://host/etc/passwd is not /etc/passwd on this machine: never read as if it were."""
    result = make_fetcher().fetch("file://fileserver/etc/passwd", allow_local=True)
    assert_final(result, store, "invalid_url", r"^file: URL names another host \('fileserver'\)$")


# --------------------------------------------------------------------------------------------------
# Internal addresses: refused before connecting, on every hop, after DNS
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("http://127.0.0.1:{port}/img/a", r"127\.0\.0\.1 is a loopback address", id="loopback"),
        pytest.param("https://127.0.0.1:{port}/img/a", r"127\.0\.0\.1 is a loopback address", id="https"),
        pytest.param("http://localhost:{port}/img/a", r"localhost \(127\.0\.0\.1\): .* loopback", id="dns-name"),
        pytest.param("http://0x7f000001:{port}/img/a", r"127\.0\.0\.1 is a loopback", id="hex-ip"),
        pytest.param("http://[::ffff:127.0.0.1]:{port}/img/a", r"127\.0\.0\.1 is a loopback", id="ipv4-mapped"),
        pytest.param("http://0.0.0.0:{port}/img/a", r"0\.0\.0\.0 is the unspecified address", id="unspecified"),
        pytest.param("http://169.254.169.254/latest/meta-data/", r"169\.254\.169\.254 is a link-local", id="metadata"),
        pytest.param("http://[fe80::1]/", r"fe80::1 is a link-local", id="ipv6-link-local"),
        pytest.param("http://100.100.100.200/latest/meta-data/", r"100\.100\.100\.200 is not a public", id="cgnat"),
        pytest.param("http://10.1.2.3/", r"10\.1\.2\.3 is a private address", id="rfc1918-10"),
        pytest.param("http://172.16.0.1/", r"172\.16\.0\.1 is a private address", id="rfc1918-172"),
        pytest.param("http://192.168.1.1/", r"192\.168\.1\.1 is a private address", id="rfc1918-192"),
        pytest.param("http://[fd00::1]/", r"fd00::1 is a private address", id="ula"),
        pytest.param("http://224.0.0.1/", r"224\.0\.0\.1 is a multicast address", id="multicast"),
        pytest.param("http://240.0.0.1/", r"240\.0\.0\.1 is a reserved address", id="reserved"),
    ],
)
def test_a_listed_internal_address_is_refused_unasked(
    fakeweb: FakeWeb, make_fetcher: Callable[..., Fetcher], store: LocalStorage, url: str, reason: str
) -> None:
    """Not even robots.txt is asked; the loopback cases would reach FakeWeb if anything connected."""
    t0 = time.monotonic()
    result = make_fetcher().fetch(url.format(port=fakeweb.port))
    assert_final(result, store, "refused", rf"^refused to connect to .*{reason}.*allowed_networks")
    assert result.http_status is None and fakeweb.requests == []
    assert time.monotonic() - t0 < HTTP.connect_timeout  # decided, not attempted


def test_a_redirect_to_the_metadata_address_is_refused(
    make_fetcher: Callable[..., Fetcher], store: LocalStorage
) -> None:
    """The issue's case: a public-looking image redirects to 169.254.169.254; the row is final, not retried."""
    with serve() as web:
        web.redirect("/a.jpg", "http://169.254.169.254/latest/meta-data/")
        result = make_fetcher(("127.0.0.1/32",)).fetch(web.url("/a.jpg"))
    assert_final(result, store, "refused", r"169\.254\.169\.254 is a link-local address")
    assert result.http_status == 302


def test_a_redirect_to_an_internal_host_never_connects(
    make_fetcher: Callable[..., Fetcher], store: LocalStorage, observer: Server
) -> None:
    """Allowing 127.0.0.1 does not allow 127.0.0.2: neither its robots.txt nor the target is connected to."""
    with serve() as web:
        web.redirect("/a.jpg", observer.url("/latest/meta-data/"))
        result = make_fetcher(("127.0.0.1",)).fetch(web.url("/a.jpg"))
    assert_final(result, store, "refused", r"127\.0\.0\.2 is a loopback address")
    assert observer.connections == 0


@pytest.mark.parametrize("allowed", ["127.0.0.0/8", "127.0.0.1", "127.0.0.5/8"])
def test_allowed_networks_reach_the_host_also_by_name(
    fakeweb: FakeWeb, make_fetcher: Callable[..., Fetcher], store: LocalStorage, allowed: str
) -> None:
    """A mirror on an allowed network works, by address or by a name resolving there (host bits are ignored)."""
    result = make_fetcher((allowed,)).fetch(f"http://localhost:{fakeweb.port}/img/by-name")
    assert result.status == "ok", result
    assert [r.path for r in fakeweb.requests] == ["/robots.txt", "/img/by-name"]


def test_allowing_one_network_does_not_allow_others(fakeweb: FakeWeb, make_fetcher: Callable[..., Fetcher]) -> None:
    result = make_fetcher(("192.168.1.0/24", "fd00::/8")).fetch(fakeweb.url("/img/a"))
    assert (result.status, fakeweb.requests) == ("refused", [])


def test_allowed_networks_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """None reads $GAN_ALLOWED_NETWORKS when a session is made; an explicit tuple, even empty, wins; typos are named."""
    monkeypatch.setenv(ALLOWED_NETWORKS_ENV, " 192.168.1.0/24, 10.0.0.5 ,")
    assert [str(n) for n in HttpSettings().network_policy().allowed] == ["192.168.1.0/24", "10.0.0.5/32"]
    assert HttpSettings(allowed_networks=()).network_policy().allowed == ()
    monkeypatch.setenv(ALLOWED_NETWORKS_ENV, "192.168.1.0/33")
    with pytest.raises(ValueError, match=rf"\${ALLOWED_NETWORKS_ENV}: '192.168.1.0/33' is not an IP network"):
        make_session(HttpSettings())
    monkeypatch.delenv(ALLOWED_NETWORKS_ENV)
    assert HttpSettings().network_policy().allowed == ()


def test_fetch_resource_setting_overrides_the_environment(fakeweb: FakeWeb, store: LocalStorage) -> None:
    """The Dagster resource's allowed_networks; its default (None) is the environment, 127.0.0.0/8 in the tests."""
    for resource, status in ((FetchResource(), "ok"), (FetchResource(allowed_networks=[]), "refused")):
        fetcher = resource.fetcher(store)
        try:
            assert fetcher.fetch(fakeweb.url("/img/resource")).status == status
        finally:
            fetcher.close()


def test_the_demo_allows_its_own_server_and_nothing_else(
    fakeweb: FakeWeb, observer: Server, store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's tile server is on 127.0.0.1; no other internal address, whatever the environment allows."""
    monkeypatch.setenv(ALLOWED_NETWORKS_ENV, "127.0.0.0/8")
    fetcher = fetch_resource().fetcher(store)
    try:
        assert fetcher.fetch(fakeweb.url("/img/demo")).status == "ok"
        assert fetcher.fetch(observer.url("/img/demo")).status == "refused"
    finally:
        fetcher.close()
    assert observer.connections == 0


def test_through_a_proxy_the_proxy_address_is_checked(
    monkeypatch: pytest.MonkeyPatch, make_fetcher: Callable[..., Fetcher], observer: Server
) -> None:
    """With HTTP_PROXY set, the connection goes to the proxy: refused unless the proxy is allowed, and then the
    proxy, which resolves the target, decides (documented in pipelines/httpclient.py)."""
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", observer.url(""))
    refused = make_fetcher().fetch("http://169.254.169.254/latest/meta-data/")
    assert (refused.status, observer.connections) == ("refused", 0)
    assert "127.0.0.2 is a loopback address" in refused.reason
    proxied = make_fetcher(("127.0.0.2",)).fetch("http://169.254.169.254/latest/meta-data/")
    assert (proxied.status, proxied.http_status) == ("http_error", 404)
    assert observer.paths == ["http://169.254.169.254/robots.txt", "http://169.254.169.254/latest/meta-data/"]


def test_socks_proxies_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, make_fetcher: Callable[..., Fetcher]
) -> None:
    """A SOCKS proxy would connect where the policy cannot see: an error that says so, not a silent bypass."""
    for var in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5h://user:secret@127.0.0.1:1080")
    result = make_fetcher().fetch("http://example.invalid/a.jpg")
    assert result.status == "http_error" and "SOCKS proxies are not supported" in result.reason, result
    assert "secret" not in result.reason


def test_listing_apis_obey_the_policy_too(fakeweb: FakeWeb, observer: Server) -> None:
    """A source's API on a refused address, or redirecting to one, stops the source at once, naming the refusal."""

    def first(source: DogCeoSource, allowed: tuple[str, ...]) -> None:
        with make_session(dataclasses.replace(HTTP, allowed_networks=allowed)) as session:
            next(source.candidates(SourceContext(session, (1.0, 1.0), date(2026, 11, 20))))

    with pytest.raises(SourceUnavailable, match=r"source 'dogs'.*refused to connect to 127\.0\.0\.1"):
        first(DogCeoSource(name="dogs", base_url=fakeweb.url("/dogceo/api")), PUBLIC_ONLY)
    assert fakeweb.requests == []
    with serve() as api, pytest.raises(SourceUnavailable, match=r"'dogs'.*127\.0\.0\.2 is a loopback address"):
        api.redirect("/api/breeds/list/all", observer.url("/api/breeds/list/all"))
        first(DogCeoSource(name="dogs", base_url=api.url("/api")), ("127.0.0.1",))
    assert observer.connections == 0


# --------------------------------------------------------------------------------------------------
# What servers send is quoted short and escaped
# --------------------------------------------------------------------------------------------------

GARBAGE = bytes(range(256)) * 120  # 30 KB, control characters and all, on one "status line"


@pytest.mark.parametrize("respect_robots", [True, False], ids=["robots", "no-robots"])
def test_a_binary_status_line_is_not_echoed(
    make_fetcher: Callable[..., Fetcher], store: LocalStorage, respect_robots: bool
) -> None:
    """http.client quotes the whole bad status line in its exception; the reason keeps a short, escaped start."""
    with raw_server(GARBAGE.replace(b"\n", b" ") + b"\r\n\r\n") as base:
        result = make_fetcher(("127.0.0.1",), respect_robots=respect_robots).fetch(base + "/a.jpg")
    assert result.status == "http_error", result
    assert len(result.reason) < MAX_QUOTE + 100 and result.reason.isprintable(), result.reason


def test_long_status_reason_and_headers_are_clipped(make_fetcher: Callable[..., Fetcher]) -> None:
    """The reason phrase and the headers the manifest keeps are the server's choice of length: clipped, escaped.

    The opt-out is read from the whole header, so a long X-Robots-Tag cannot hide its ``noai``.
    """
    long = "x" * 50_000
    head = f"HTTP/1.1 404 {long}\r\nContent-Type: text/{long}\x7f\r\nX-Robots-Tag: {long}, noai\r\n"
    with raw_server(f"{head}Content-Length: 0\r\nConnection: close\r\n\r\n".encode("latin-1")) as base:
        not_found = make_fetcher(("127.0.0.1",), respect_robots=False).fetch(base + "/a.jpg")
    assert not_found.status == "http_error" and not_found.http_status == 404
    for text in (not_found.reason, not_found.content_type, not_found.x_robots_tag):
        assert text and len(text) < MAX_QUOTE + 100 and text.isprintable(), text
    image = make_image_bytes("opted out")
    head = f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Robots-Tag: {long}, noai\r\n"
    answer = f"{head}Content-Length: {len(image)}\r\nConnection: close\r\n\r\n".encode() + image
    with raw_server(answer) as base:
        opted_out = make_fetcher(("127.0.0.1",), respect_robots=False).fetch(base + "/a.jpg")
    assert (opted_out.status, opted_out.reason) == ("opted_out", "X-Robots-Tag: noai")


@pytest.mark.parametrize(("status", "what"), [(500, "answered HTTP 500"), (200, "did not return JSON")])
def test_a_listing_error_quotes_a_short_escaped_prefix(fakeweb: FakeWeb, status: int, what: str) -> None:
    """A megabyte of binary from a listing API: the message quotes its first bytes, escaped, and says how much."""
    body = b"\x00\x1b[2J" + GARBAGE * 35
    fakeweb.serve("/dogceo/api/breeds/list/all", body, "text/html", status=status)
    with make_session(HTTP) as session, pytest.raises(SourceUnavailable) as err:
        ctx = SourceContext(session, (1.0, 1.0), date(2026, 11, 20))
        next(DogCeoSource(name="dogs", base_url=fakeweb.url("/dogceo/api")).candidates(ctx))
    message = str(err.value)
    assert what in message and f"... ({len(body):,} bytes)" in message, message
    assert len(message) < 700 and message.isprintable() and "\\x1b[2J" in message


# --------------------------------------------------------------------------------------------------
# url_list: a bad line is one error row; the rest of the list is fetched
# --------------------------------------------------------------------------------------------------


def test_bad_url_list_lines_are_one_final_row_each(tmp_path: Path, fakeweb: FakeWeb, store: LocalStorage) -> None:
    """Garbage, other schemes, local paths and file: URLs (more of them than it takes to call a source
    unreachable) are each a final row saying why; the good lines are still fetched, nothing local is read."""
    bad = {
        "hello world": ("invalid_url", r"^not a URL \(no scheme\)"),
        "/etc/passwd": ("invalid_url", r"^not a URL \(no scheme\); local files go in a local_dir source$"),
        "file:///etc/passwd": ("refused", r"^file: URLs are read only for local_dir sources"),
        "ftp://mirror.example/a.jpg": ("invalid_url", r"^unsupported URL scheme 'ftp'"),
        "javascript:alert(1)": ("invalid_url", r"^unsupported URL scheme 'javascript'"),
        "gopher://127.0.0.1:70/x": ("invalid_url", r"^unsupported URL scheme 'gopher'"),
        "http://": ("invalid_url", r"^invalid URL"),
        "http://[::1/a.jpg": ("invalid_url", r"^invalid URL"),
        "http://127.0.0.1:99999/a.jpg": ("invalid_url", r"^invalid URL"),
        "x" * 5000 + ":y": ("invalid_url", r"^unsupported URL scheme 'x{20}\.\.\."),
    }
    good = [fakeweb.url(f"/img/list{i}.jpg") for i in range(3)]
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join([*bad, *good]) + "\n")
    fetcher = Fetcher(store, settings(("127.0.0.1",)))
    try:
        report = ingest_partition(store, fetcher, "null", date(2026, 11, 20), [(UrlListSource(str(listing)), 20)])
    finally:
        fetcher.close()
    rows = {r["url"]: r for r in report.rows}
    assert {u: rows[u]["status"] for u in good} == dict.fromkeys(good, "ok")
    for url, (status, reason) in bad.items():
        row = rows[url]
        assert (row["status"], row["retryable"]) == (status, False), row
        assert re.search(reason, row["reason"]) and len(row["reason"]) < 300, row["reason"]
    assert SECRET not in json.dumps(report.rows, default=str)
    assert sorted(r.path for r in fakeweb.requests if not r.path.startswith("/robots.txt")) == [
        f"/img/list{i}.jpg" for i in range(3)
    ]
