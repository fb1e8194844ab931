"""The demo's loopback tile server: tiles, 404s, robots.txt, no way out of its folder, 127.0.0.1 only."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from protego import Protego

from pipelines.tileserver import TileServer

TILE = b"\xff\xd8\xff\xe0 a tile \xff\xd9"
TEMPLATE = "bluemarble_z{z}_x{x}_y{y}.jpg"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TileServer]:
    """Tiles z6/30/18 and z6/31/18 in a folder, beside a file the server must never hand out."""
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    (tiles / "bluemarble_z6_x30_y18.jpg").write_bytes(TILE)
    (tiles / "bluemarble_z6_x31_y18.jpg").write_bytes(TILE + b"2")
    (tiles / "bluemarble_z6_x32_y18.jpg").mkdir()  # a folder where a tile would be
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    with TileServer(tiles, TEMPLATE) as srv:
        yield srv


def get(srv: TileServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """The path goes on the wire as is: no client normalises its dot segments or escapes first."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: tiles\r\nConnection: close\r\n\r\n".encode())
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        return resp.status, dict(resp.getheaders()), resp.read()


def test_serves_tiles_with_their_type_and_length(server: TileServer) -> None:
    status, headers, body = get(server, "/6/30/18.jpg")
    assert (status, body) == (200, TILE)
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Content-Length"] == str(len(TILE))
    assert get(server, "/6/31/18.jpg?v=1")[2] == TILE + b"2"  # a query string is ignored
    status, headers, body = get(server, "/6/30/18.jpg", "HEAD")
    assert (status, headers["Content-Length"], body) == (200, str(len(TILE)), b"")
    assert server.url_template == f"http://127.0.0.1:{server.port}/{{z}}/{{x}}/{{y}}.jpg"
    assert server.stats == {"robots_txt": 0, "tiles": 3, "not_found": 0}


def test_missing_tiles_are_404(server: TileServer) -> None:
    for path in ("/6/33/18.jpg", "/7/30/18.jpg", "/6/32/18.jpg", "/", "/6/30/18.png", "/6/30.jpg"):
        status, headers, _ = get(server, path)
        assert status == 404, path
        assert headers["Content-Type"].startswith("text/plain")
    assert server.stats["not_found"] == 6


def test_robots_txt_allows_everything(server: TileServer) -> None:
    status, headers, body = get(server, "/robots.txt")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Content-Length"] == str(len(body))
    assert Protego.parse(body.decode()).can_fetch(server.base_url + "/6/30/18.jpg", "gan-pipelines")
    assert server.stats["robots_txt"] == 1


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.jpg",
        "/6/../../secret.jpg",
        "/6/30/../../../secret.jpg",
        "/%2e%2e/secret.jpg",
        "/6/30/18.jpg/../../../../secret.jpg",
        "/%36/30/18.jpg",  # escaped digits are not digits
        "/-6/30/18.jpg",
        "/+6/30/18.jpg",
        "/6/30/18.jpg%00.png",
    ],
)
def test_path_tricks_are_refused(server: TileServer, path: str) -> None:
    status, _, body = get(server, path)
    assert status == 404
    assert b"secret" not in body and TILE not in body


def test_only_ascii_digits_name_a_tile(server: TileServer) -> None:
    """int() reads Arabic-Indic digits too; the route must not (it would name /6/30/18)."""
    assert server.respond("/6/30/\u0661\u0668.jpg")[0] == 404
    assert server.respond("/6/30/18.jpg")[0] == 200


def test_listens_on_127_0_0_1_only(server: TileServer) -> None:
    try:
        control = socket.create_server(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not a loopback address here")
    with control, socket.create_connection(("127.0.0.2", control.getsockname()[1]), timeout=2):
        pass  # 127.0.0.2 reaches this host's loopback: the refusal below is the server's doing
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", server.port), timeout=2).close()
    assert server.base_url == f"http://127.0.0.1:{server.port}"


def test_answers_concurrent_clients_while_one_stalls(server: TileServer) -> None:
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=5)  # sends nothing
    with stalled, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: get(server, "/6/30/18.jpg")[0], range(32)))
    assert results == [200] * 32


def test_stops_promptly_despite_an_idle_client_and_frees_the_port(tmp_path: Path) -> None:
    with TileServer(tmp_path) as srv:
        port = srv.port
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        time.sleep(0.2)  # the server has accepted it and a handler waits for a request line
        started = time.monotonic()
    assert time.monotonic() - started < 2
    with idle:
        assert idle.recv(1) == b""  # the server closed its side
    assert not any(t.name == "tileserver" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(RuntimeError, match="not running"):
        _ = srv.port


def test_binds_the_port_asked_for_and_refuses_a_taken_one(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with TileServer(tmp_path, port=port) as srv:
        assert srv.port == port
        with pytest.raises(OSError), TileServer(tmp_path, port=port):
            pass


def test_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TileServer(tmp_path / "nope")
