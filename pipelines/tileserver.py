"""A loopback XYZ tile server over a folder of tile images.

``make demo`` serves the tiles the repository ships (``demo/tiles``) through this server, so that the
real ``xyz_tiles`` source and the real fetcher (robots.txt, validation, manifests) run end to end on a
machine without internet. It listens on 127.0.0.1 only (on a free port by default), in a background thread.

Routes: ``/robots.txt`` (allow all) and ``/{z}/{x}/{y}<suffix>`` with ASCII digits only, so a request
can only ever name a file built from three integers; anything else is a 404.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import re
import socket
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["ROBOTS_TXT", "TileServer"]

logger = logging.getLogger(__name__)

ROBOTS_TXT = b"User-agent: *\nAllow: /\n"


class _Server(ThreadingHTTPServer):
    # Handler threads are joined on close (block_on_close), so leaving the ``with`` block leaves no thread behind.
    daemon_threads = False
    tiles: TileServer

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def end_reads(self) -> None:
        """Shut the reading side of open connections: a client that sends nothing more no longer holds a
        handler thread, while a response being written still completes."""
        with self._open_lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up mid-response is its business, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "gan-pipelines-tileserver/1.0"
    timeout = 30  # a client that stalls mid-request cannot hold a handler thread for ever

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        status, body, content_type = self.server.tiles.respond(self.path.partition("?")[0])
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class TileServer:
    """Serves ``directory`` as an XYZ tile server on 127.0.0.1 while the ``with`` block runs.

    ``name_template`` maps a request to a file name in the folder (``{z}``, ``{x}`` and ``{y}`` are
    integers); its suffix is the URL's. ``port`` 0 takes a free one; a fixed port keeps the URLs of
    repeated runs the same. ``stats`` counts what was answered, so a caller can tell that
    the scraper read robots.txt and fetched the tiles.
    """

    def __init__(self, directory: str | Path, name_template: str = "{z}/{x}/{y}.jpg", port: int = 0) -> None:
        self.directory = Path(directory).resolve()
        if not self.directory.is_dir():
            raise FileNotFoundError(f"tile folder {self.directory} does not exist")
        self.name_template = name_template
        self.requested_port = port
        self.suffix = Path(name_template).suffix
        self.content_type = mimetypes.guess_type(name_template)[0] or "application/octet-stream"
        self._route = re.compile(rf"/([0-9]{{1,2}})/([0-9]{{1,10}})/([0-9]{{1,10}}){re.escape(self.suffix)}")
        self._stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def respond(self, path: str) -> tuple[int, bytes, str]:
        """(status, body, content type) for a request path without its query."""
        if path == "/robots.txt":
            self._count("robots_txt")
            return 200, ROBOTS_TXT, "text/plain; charset=utf-8"
        match = self._route.fullmatch(path)
        if match:
            z, x, y = (int(g) for g in match.groups())
            try:
                body = (self.directory / self.name_template.format(z=z, x=x, y=y)).read_bytes()
            except OSError:  # missing, or a folder of that name
                pass
            else:
                self._count("tiles")
                return 200, body, self.content_type
        self._count("not_found")
        return 404, b"not found\n", "text/plain; charset=utf-8"

    def _count(self, what: str) -> None:
        with self._lock:
            self._stats[what] += 1

    @property
    def stats(self) -> dict[str, int]:
        """Responses so far: ``robots_txt``, ``tiles`` (served) and ``not_found``."""
        with self._lock:
            return {k: self._stats[k] for k in ("robots_txt", "tiles", "not_found")}

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the tile server is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_template(self) -> str:
        """The XYZ URL template for this server, e.g. ``http://127.0.0.1:PORT/{z}/{x}/{y}.jpg``."""
        return f"{self.base_url}/{{z}}/{{x}}/{{y}}{self.suffix}"

    def __enter__(self) -> TileServer:
        server = _Server(("127.0.0.1", self.requested_port))  # OSError when that port is taken
        server.tiles = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="tileserver", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop accepting, finish the responses in flight, drop idle connections, close the socket."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        server.end_reads()
        server.server_close()
        thread.join()
