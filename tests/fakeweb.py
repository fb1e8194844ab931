"""A real HTTP server on 127.0.0.1 that speaks the public APIs the scrapers use, plus misbehaving URLs.

Tests have no internet, so every source is exercised against this server over real sockets: the
scraper's HTTP client, retries, timeouts and decoders all run as they would in production. Response
formats copy the real services (Dog CEO, Lorem Picsum, Openverse, XYZ tile servers) so the production
parsers need no test-only paths.

The server is also used by a throughput benchmark (64 keep-alive clients, 50 ms latency), hence:
HTTP/1.1 with exact Content-Length, one daemon thread per connection, images encoded once and cached,
latency slept in the handler thread, no per-request logging, TCP_NODELAY.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import random
import socket
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "DEFAULT_BREEDS",
    "FakeWeb",
    "RequestRecord",
    "animated_gif",
    "bomb_png",
    "free_port",
    "gzip_bomb",
    "make_image_bytes",
    "mpo_jpeg",
    "truncated_jpeg",
]

DEFAULT_BREEDS: dict[str, list[str]] = {"hound": ["afghan", "basset"], "pug": [], "shiba": [], "terrier": ["border"]}

# Picsum originals: (width, height) cycled by id; id 0 matches the real API's first entry. Some portrait.
_PICSUM_DIMS = [(5000, 3333), (3000, 2000), (2000, 3000), (4000, 4000), (3333, 5000), (1920, 1080), (2400, 3600)]
_PICSUM_MAX_SIDE = 2048
_OPENVERSE_LICENSES = ["by", "by-sa", "cc0", "pdm"]
_OPENVERSE_MAX_ANON_PAGE_SIZE = 20
_OCEAN_RGB = (21, 62, 118)
_HUGE_BYTES = 50 * 2**20
_CHUNK = 64 * 1024


# --------------------------------------------------------------------------------------------------
# Image helpers (module level so tests can build expected bytes without a server)
# --------------------------------------------------------------------------------------------------


def _rng_for(name: str) -> np.random.Generator:
    """A generator seeded from sha256(name): stable across runs and Python's hash randomisation."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big"))


def _render_rgb(name: str, size: tuple[int, int]) -> Image.Image:
    """An 8x8 random colour grid upscaled bicubic plus a few rectangles.

    The coarse grid makes perceptual hashes differ between names; rectangles are placed in relative
    coordinates so the same name at two sizes is "the same photo" (useful for near-duplicate tests).
    """
    rng = _rng_for(name)
    grid = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(grid, "RGB").resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(int(rng.integers(3, 7))):
        x0, x1 = sorted(rng.random(2) * w)
        y0, y1 = sorted(rng.random(2) * h)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.rectangle([int(x0), int(y0), max(int(x0), int(x1)), max(int(y0), int(y1))], fill=colour)
    return img


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert to ``mode``; RGBA gets a real gradient alpha so compositing code is actually exercised."""
    if mode == "RGB":
        return img
    if mode == "RGBA":
        w, h = img.size
        alpha = np.tile(np.linspace(0, 255, w, dtype=np.float64), (h, 1)).astype(np.uint8)
        out = img.convert("RGBA")
        out.putalpha(Image.fromarray(alpha, "L"))
        return out
    if mode == "P":
        return img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return img.convert(mode)


@lru_cache(maxsize=2048)
def _image_bytes_cached(name: str, size: tuple[int, int], fmt: str, mode: str) -> bytes:
    img = _to_mode(_render_rgb(name, size), mode)
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"quality": 88} if fmt == "JPEG" else {}
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make_image_bytes(name: str, size: tuple[int, int] = (256, 256), fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """Deterministic encoded image, distinct per ``name``; cached so the server encodes each once."""
    return _image_bytes_cached(name, (int(size[0]), int(size[1])), fmt.upper(), mode)


@lru_cache(maxsize=1)
def truncated_jpeg() -> bytes:
    """The first 60 % of a real JPEG: the header parses, decoding the pixels fails."""
    full = make_image_bytes("fault/truncated")
    return full[: int(len(full) * 0.6)]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height``: a decompression bomb as far as headers go.

    Pillow's default MAX_IMAGE_PIXELS makes ``Image.open`` raise DecompressionBombError on it; with the
    limit lifted, ``Image.open(...).size`` reports the claimed size. The pixel data is not valid.
    """
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


@lru_cache(maxsize=1)
def animated_gif() -> bytes:
    """A 4-frame animated GIF (frames differ, so Pillow keeps all of them)."""
    frames = [
        _render_rgb(f"fault/animated/{i}", (64, 64)).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(4)
    ]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


@lru_cache(maxsize=1)
def mpo_jpeg() -> bytes:
    """A JPEG with a second image appended in an MPF segment, as phone cameras write (previews, HDR gain maps).

    Pillow opens it as format MPO with two "frames"; any JPEG decoder shows the first, a still photo.
    """
    buf = io.BytesIO()
    main, extra = _render_rgb("fault/mpo", (256, 256)), _render_rgb("fault/mpo/extra", (128, 128))
    main.save(buf, format="MPO", save_all=True, append_images=[extra], quality=88)
    return buf.getvalue()


@lru_cache(maxsize=1)
def gzip_bomb() -> bytes:
    """``Content-Encoding: gzip`` body of ~50 KB that inflates to 50 MB (a JPEG marker, then zeros).

    Fifty 1 MiB gzip members back to back (valid gzip, and quick to build on first request).
    """

    def member(data: bytes) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
        return c.compress(data) + c.flush()

    mib = 2**20
    return member(b"\xff\xd8\xff\xe0" + b"\x00" * (mib - 4)) + member(b"\x00" * mib) * (_HUGE_BYTES // mib - 1)


def free_port() -> int:
    """A loopback port with nothing listening (bound then released), for "connection refused" tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@lru_cache(maxsize=4096)
def _tile_bytes(key: str, ocean: bool) -> bytes:
    """256x256 JPEG tile; "ocean" tiles are flat blue with +-1 noise like real near-empty tiles."""
    if not ocean:
        return make_image_bytes(key, (256, 256))
    rng = _rng_for(key)
    arr = np.empty((256, 256, 3), dtype=np.int16)
    arr[:] = _OCEAN_RGB
    arr += rng.integers(-1, 2, size=arr.shape, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), "RGB").save(buf, format="JPEG", quality=88)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------


class RequestRecord(NamedTuple):
    """One logged request: what a test needs to assert on politeness (paths, headers, timing)."""

    method: str
    path: str  # including the query string
    headers: dict[str, str]
    time: float  # time.monotonic() when the request line was read


class _Response(NamedTuple):
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = {}


class _Handled(Exception):
    """Raised by a route that wrote its own response (streaming or fault routes)."""


def _json(obj: Any, status: int = 200) -> _Response:
    return _Response(status, json.dumps(obj).encode(), "application/json")


def _text(body: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> _Response:
    return _Response(status, body.encode(), content_type)


_NOT_FOUND = _Response(404, b"not found\n", "text/plain; charset=utf-8")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for idle keep-alive connections
    request_queue_size = 256  # 64+ clients connecting at once must not overflow the listen backlog
    fakeweb: FakeWeb

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, size caps, fault routes) are expected, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakeweb/1.0"
    disable_nagle_algorithm = True  # header and body go in separate writes; avoid the 40 ms Nagle stall
    timeout = 60  # idle keep-alive connections end eventually even if a test forgets its session
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fakeweb._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fakeweb._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: per-request logging to stderr would dominate the benchmark."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    # -- plumbing -----------------------------------------------------------------------------------

    @property
    def head(self) -> bool:
        return self.command == "HEAD"

    def _dispatch(self) -> None:
        fw = self.server.fakeweb
        fw._log(RequestRecord(self.command, self.path, dict(self.headers.items()), time.monotonic()))
        latency = fw.latency
        if latency > 0:
            time.sleep(latency)
        try:
            resp = fw._route(self)
        except _Handled:
            return
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        except Exception as e:  # a bug in the fake server: answer 500 rather than hang the client
            resp = _text(f"fakeweb error: {e!r}\n", 500)
        self.send_simple(resp)

    def send_simple(self, resp: _Response) -> None:
        """Status, Content-Type, exact Content-Length, extra headers, body (none for HEAD)."""
        try:
            self.send_response(resp.status)
            if resp.content_type:
                self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(resp.body)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.end_headers()
            if not self.head and resp.body and resp.status not in (204, 304):
                self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def start_stream(
        self, status: int, content_type: str, length: int | None, headers: dict[str, str] | None = None
    ) -> bool:
        """Send headers of a hand-written response; False when no body must follow (HEAD)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is None:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()
        return not self.head

    def write_quietly(self, data: bytes) -> bool:
        """Write, returning False (and closing) if the client has gone, which faults expect."""
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False


class FakeWeb:
    """Real HTTP server on 127.0.0.1 (ephemeral port) in a daemon thread.

    ``latency``, ``fail_rate`` and ``robots_txt`` may be changed while it runs; every request is
    logged in ``requests`` so tests can assert what the scraper actually sent.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        image_size: int = 256,
        robots_txt: str | None = None,
        fail_rate: float = 0.0,
        seed: int = 0,
        dog_breeds: dict[str, list[str]] | None = None,
        images_per_breed: int = 20,
        picsum_count: int = 60,
        openverse_per_query: int = 45,
    ) -> None:
        self.latency = latency
        self.image_size = image_size
        self.robots_txt = robots_txt
        self.fail_rate = fail_rate
        self.seed = seed
        self.dog_breeds = {k: list(v) for k, v in (DEFAULT_BREEDS if dog_breeds is None else dog_breeds).items()}
        self.images_per_breed = images_per_breed
        self.picsum_count = picsum_count
        self.openverse_per_query = openverse_per_query
        self.requests: list[RequestRecord] = []
        self.canned: dict[str, _Response] = {}  # exact path -> response, answered before any route (see serve)
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._counters: dict[str, int] = {}
        self._ov_ids: dict[str, tuple[str, int]] = {}
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._bound_port = 0
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, Callable[[_Handler, list[str], dict[str, list[str]]], _Response]]] = [
            ("/dogceo/api/", self._r_dogceo),
            ("/dogimg/", self._r_dogimg),
            ("/picsum/v2/list", self._r_picsum_list),
            ("/picsum/id/", self._r_picsum_img),
            ("/openverse/v1/images", self._r_openverse),
            ("/ovimg/", self._r_ovimg),
            ("/tiles/", self._r_tiles),
            ("/tiles-yx/", self._r_tiles_yx),
            ("/tiles-dated/", self._r_tiles_dated),
            ("/img/", self._r_img),
            ("/robots.txt", self._r_robots),
            ("/fault/", self._r_fault),
        ]

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> FakeWeb:
        """Bind a port (ephemeral the first time, the same one after a :meth:`stop`, so URLs handed out
        earlier stay valid: a server restart) and serve in a daemon thread; idempotent."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._bound_port), _Handler)
        self._bound_port = int(server.server_address[1])
        server.fakeweb = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fakeweb:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the listener and cut open keep-alive connections so threads exit."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeWeb:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeWeb is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """``base_url + path``."""
        return self.base_url + path

    def serve(self, path: str, body: bytes | str, content_type: str = "application/json", status: int = 200) -> None:
        """Answer ``path`` (exact, any query) with this body from now on: a malformed or changed API."""
        data = body.encode() if isinstance(body, str) else body
        self.canned[path] = _Response(status, data, content_type)

    def hits(self, path_prefix: str) -> int:
        """How many logged requests have a path (with query) starting with ``path_prefix``."""
        with self._lock:
            return sum(1 for r in self.requests if r.path.startswith(path_prefix))

    # -- internals shared with the handler ----------------------------------------------------------

    def _log(self, rec: RequestRecord) -> None:
        with self._lock:
            self.requests.append(rec)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _count(self, key: str) -> int:
        """Increment and return the per-key request counter (1 for the first request)."""
        with self._lock:
            n = self._counters.get(key, 0) + 1
            self._counters[key] = n
            return n

    def _should_fail(self) -> bool:
        """Draw from the seeded RNG: a ``fail_rate`` share of image requests answers 500."""
        rate = self.fail_rate
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def _image(self, name: str, size: tuple[int, int] | None = None, fmt: str = "JPEG") -> _Response:
        """An image response subject to ``fail_rate``."""
        if self._should_fail():
            return _text("injected failure\n", 500)
        s = size or (self.image_size, self.image_size)
        ctype = "image/png" if fmt == "PNG" else "image/jpeg"
        return _Response(200, make_image_bytes(name, s, fmt), ctype)

    def _route(self, h: _Handler) -> _Response:
        split = urlsplit(h.path)
        path = split.path
        if path in self.canned:
            return self.canned[path]
        query = parse_qs(split.query, keep_blank_values=True)
        for prefix, fn in self._routes:
            if path == prefix or path.startswith(prefix):
                rest = path[len(prefix) :]
                return fn(h, [unquote(p) for p in rest.split("/")] if rest else [], query)
        return _NOT_FOUND

    # -- Dog CEO ------------------------------------------------------------------------------------

    def _dog_urls(self, breed: str, sub: str | None) -> list[str]:
        folder = f"{breed}-{sub}" if sub else breed
        return [f"{self.base_url}/dogimg/breeds/{folder}/n{i:08d}.jpg" for i in range(self.images_per_breed)]

    def _r_dogceo(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        if parts == ["breeds", "list", "all"]:
            return _json({"message": self.dog_breeds, "status": "success"})
        if len(parts) >= 3 and parts[0] == "breed":
            breed, subs = parts[1], self.dog_breeds.get(parts[1])
            if subs is None:
                return _json(
                    {"status": "error", "message": "Breed not found (master breed does not exist)", "code": 404}, 404
                )
            if parts[2:] == ["images"]:
                # A master breed's list is the union of its sub-breeds' images, like the real API.
                urls = [u for s in subs for u in self._dog_urls(breed, s)] if subs else self._dog_urls(breed, None)
                return _json({"message": urls, "status": "success"})
            if parts[2:] == ["list"]:
                return _json({"message": subs, "status": "success"})
            if len(parts) == 4 and parts[3] == "images":
                if parts[2] not in subs:
                    return _json(
                        {"status": "error", "message": "Breed not found (sub breed does not exist)", "code": 404}, 404
                    )
                return _json({"message": self._dog_urls(breed, parts[2]), "status": "success"})
        return _json({"status": "error", "message": "No route found", "code": 404}, 404)

    def _r_dogimg(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        if not parts or not parts[-1].endswith(".jpg"):
            return _NOT_FOUND
        return self._image("dogimg/" + "/".join(parts))

    # -- Lorem Picsum -------------------------------------------------------------------------------

    def _picsum_item(self, i: int) -> dict[str, Any]:
        w, h = _PICSUM_DIMS[i % len(_PICSUM_DIMS)]
        return {
            "id": str(i),
            "author": f"Author {i}",
            "width": w,
            "height": h,
            "url": f"https://unsplash.com/photos/x{i}",
            "download_url": f"{self.base_url}/picsum/id/{i}/{w}/{h}",
        }

    def _r_picsum_list(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        if parts:
            return _NOT_FOUND
        try:
            page = int(q.get("page", ["1"])[0] or 1)
            limit = int(q.get("limit", ["30"])[0] or 30)
        except ValueError:
            return _json({"error": "Invalid parameters"}, 400)
        page, limit = max(1, page), min(100, max(1, limit))
        start = (page - 1) * limit
        items = [self._picsum_item(i) for i in range(start, min(start + limit, self.picsum_count))]
        links = []
        if page > 1:
            links.append(f'<{self.base_url}/picsum/v2/list?page={page - 1}&limit={limit}>; rel="prev"')
        if start + limit < self.picsum_count:
            links.append(f'<{self.base_url}/picsum/v2/list?page={page + 1}&limit={limit}>; rel="next"')
        resp = _json(items)
        return resp._replace(headers={"Link": ", ".join(links)}) if links else resp

    def _r_picsum_img(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        """``/picsum/id/{id}/{w}/{h}[.jpg]`` (or ``/{size}`` square); sides above 2048 scale down, keeping aspect."""
        if len(parts) not in (2, 3):
            return _NOT_FOUND
        dims = [p.removesuffix(".jpg") for p in parts[1:]]
        try:
            pid = int(parts[0])
            w, hh = (int(dims[0]), int(dims[-1]))
        except ValueError:
            return _text("Invalid size\n", 400)
        if not 0 <= pid < self.picsum_count:
            return _text("Image does not exist\n", 404)
        if w < 1 or hh < 1:
            return _text("Invalid size\n", 400)
        scale = min(1.0, _PICSUM_MAX_SIDE / max(w, hh))
        size = (max(1, round(w * scale)), max(1, round(hh * scale)))
        return self._image(f"picsum/{pid}", size)

    # -- Openverse ----------------------------------------------------------------------------------

    def _ov_dims(self, query: str, i: int) -> tuple[int, int]:
        s = self.image_size
        choices = [(s, s), (s * 4 // 3, s), (s, s * 4 // 3), (s * 3 // 2, s)]
        return choices[_rng_for(f"ovdims/{query}/{i}").integers(0, len(choices))]

    def _ov_result(self, query: str, i: int) -> dict[str, Any]:
        rid = str(uuid.UUID(bytes=hashlib.sha256(f"openverse/{query}/{i}".encode()).digest()[:16], version=4))
        with self._lock:
            self._ov_ids[rid] = (query, i)
        lic = _OPENVERSE_LICENSES[i % len(_OPENVERSE_LICENSES)]
        if lic == "cc0":
            lic_url, lic_name = "https://creativecommons.org/publicdomain/zero/1.0/", "CC0 1.0"
        elif lic == "pdm":
            lic_url, lic_name = "https://creativecommons.org/publicdomain/mark/1.0/", "Public Domain Mark 1.0"
        else:
            lic_url, lic_name = f"https://creativecommons.org/licenses/{lic}/2.0/", f"CC {lic.upper()} 2.0"
        w, hh = self._ov_dims(query, i)
        title, creator = f"{query.title() or 'Photo'} photo {i}", f"Photographer {i % 7}"
        verb = "is marked with" if lic == "pdm" else "is licensed under"
        return {
            "id": rid,
            "title": title,
            "indexed_on": "2024-01-01T00:00:00Z",
            "foreign_landing_url": f"https://www.flickr.com/photos/fake/{10_000 + i}",
            "url": f"{self.base_url}/ovimg/{quote(query or '_', safe='')}/{i}.jpg",
            "creator": creator,
            "creator_url": f"https://www.flickr.com/photos/photographer{i % 7}",
            "license": lic,
            "license_version": "2.0",
            "license_url": lic_url,
            "provider": "flickr",
            "source": "flickr",
            "category": "photograph",
            "filesize": None,
            "filetype": "jpg",
            "tags": [{"name": query}],
            "attribution": f'"{title}" by {creator} {verb} {lic_name}. To view the terms, visit {lic_url}.',
            "fields_matched": ["title"],
            "mature": False,
            "height": hh,
            "width": w,
            "thumbnail": f"{self.base_url}/openverse/v1/images/{rid}/thumb/",
            "detail_url": f"{self.base_url}/openverse/v1/images/{rid}/",
            "related_url": f"{self.base_url}/openverse/v1/images/{rid}/related/",
        }

    def _r_openverse(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        """Search at ``/openverse/v1/images/``; ``/openverse/v1/images/{id}/thumb/`` serves thumbnails."""
        parts = [p for p in parts if p]
        if len(parts) == 2 and parts[1] == "thumb":
            with self._lock:
                hit = self._ov_ids.get(parts[0])
            if hit is None:
                return _json({"detail": "Not found."}, 404)
            w, hh = self._ov_dims(*hit)
            return self._image(f"ovimg/{hit[0]}/{hit[1]}", (max(1, w // 2), max(1, hh // 2)))
        if parts:
            return _json({"detail": "Not found."}, 404)
        query = q.get("q", [""])[0]
        try:
            page = int(q.get("page", ["1"])[0] or 1)
            page_size = int(q.get("page_size", ["20"])[0] or 20)
        except ValueError:
            return _json({"detail": {"page": ["A valid integer is required."]}}, 400)
        if page_size > _OPENVERSE_MAX_ANON_PAGE_SIZE and not h.headers.get("Authorization"):
            return _json(
                {
                    "detail": "Authentication credentials were not provided. "
                    f"Anonymous requests are limited to page_size {_OPENVERSE_MAX_ANON_PAGE_SIZE}."
                },
                401,
            )
        if page_size < 1 or page < 1:
            return _json({"detail": "Invalid page"}, 400)
        total = self.openverse_per_query
        page_count = math.ceil(total / page_size)
        if page > page_count:
            return _json({"detail": "Invalid page"}, 400)
        start = (page - 1) * page_size
        results = [self._ov_result(query, i) for i in range(start, min(start + page_size, total))]
        return _json(
            {"result_count": total, "page_count": page_count, "page_size": page_size, "page": page, "results": results}
        )

    def _r_ovimg(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        if len(parts) != 2 or not parts[1].endswith(".jpg"):
            return _NOT_FOUND
        query = "" if parts[0] == "_" else parts[0]
        try:
            i = int(parts[1].removesuffix(".jpg"))
        except ValueError:
            return _NOT_FOUND
        return self._image(f"ovimg/{query}/{i}", self._ov_dims(query, i))

    # -- XYZ tiles ----------------------------------------------------------------------------------

    def _tile(self, z: str, x: str, y: str, date: str | None) -> _Response:
        try:
            zi, xi, yi = int(z), int(x), int(y.removesuffix(".jpg"))
        except ValueError:
            return _NOT_FOUND
        if not y.endswith(".jpg") or not (0 <= zi <= 30 and 0 <= xi < 2**zi and 0 <= yi < 2**zi):
            return _NOT_FOUND
        if self._should_fail():
            return _text("injected failure\n", 500)
        key = f"tile/{date}/{zi}/{xi}/{yi}" if date else f"tile/{zi}/{xi}/{yi}"
        return _Response(200, _tile_bytes(key, (xi + yi) % 7 == 0), "image/jpeg")

    def _r_tiles(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        return self._tile(*parts, date=None) if len(parts) == 3 else _NOT_FOUND

    def _r_tiles_yx(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        """ArcGIS order ``{z}/{y}/{x}``: same tiles as ``/tiles/``."""
        if len(parts) != 3 or not parts[2].endswith(".jpg"):
            return _NOT_FOUND
        z, y, x = parts
        return self._tile(z, x.removesuffix(".jpg"), y + ".jpg", date=None)

    def _r_tiles_dated(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        return self._tile(*parts[1:], date=parts[0]) if len(parts) == 4 and parts[0] else _NOT_FOUND

    # -- misc ---------------------------------------------------------------------------------------

    def _r_img(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        """``/img/{name}`` JPEG, ``/img/{name}.png`` PNG of the same picture (``.jpg`` suffix optional)."""
        name = "/".join(parts)
        if not name:
            return _NOT_FOUND
        if name.endswith(".png"):
            return self._image("img/" + name.removesuffix(".png"), fmt="PNG")
        return self._image("img/" + name.removesuffix(".jpg"))

    def _r_robots(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        robots = self.robots_txt
        if parts or robots is None:
            return _NOT_FOUND
        return _text(robots)

    # -- faults -------------------------------------------------------------------------------------

    def _r_fault(self, h: _Handler, parts: list[str], q: dict[str, list[str]]) -> _Response:
        name, args = (parts[0], parts[1:]) if parts else ("", [])
        size = (self.image_size, self.image_size)
        jpeg = "image/jpeg"
        static: dict[str, Callable[[], _Response]] = {
            "html": lambda: _text(_HTML, content_type="text/html; charset=utf-8"),
            "html-as-jpeg": lambda: _Response(200, _HTML.encode(), jpeg),
            "empty": lambda: _Response(200, b"", jpeg),
            "truncated.jpg": lambda: _Response(200, truncated_jpeg(), jpeg),
            "bomb.png": lambda: _Response(200, bomb_png(60000, 60000), "image/png"),
            "cmyk.jpg": lambda: _Response(200, make_image_bytes("fault/cmyk", size, "JPEG", "CMYK"), jpeg),
            "gray.jpg": lambda: _Response(200, make_image_bytes("fault/gray", size, "JPEG", "L"), jpeg),
            "palette.png": lambda: _Response(200, make_image_bytes("fault/palette", size, "PNG", "P"), "image/png"),
            "rgba.png": lambda: _Response(200, make_image_bytes("fault/rgba", size, "PNG", "RGBA"), "image/png"),
            "animated.gif": lambda: _Response(200, animated_gif(), "image/gif"),
            "small.jpg": lambda: _Response(200, make_image_bytes("fault/small", (16, 16)), jpeg),
            "mpo.jpg": lambda: _Response(200, mpo_jpeg(), jpeg),
            "gzip-bomb": lambda: _Response(200, gzip_bomb(), jpeg, {"Content-Encoding": "gzip"}),
        }
        if not args and name in static:
            return static[name]()
        key = "/".join(args)
        if name == "status" and len(args) == 1 and args[0].isdigit() and 200 <= int(args[0]) <= 599:
            code = int(args[0])
            body = b"" if code in (204, 304) else f"status {code}\n".encode()
            extra = {"Retry-After": q["retry-after"][0]} if "retry-after" in q else {}  # ?retry-after=seconds
            return _Response(code, body, "text/plain; charset=utf-8", extra)
        if name == "flaky" and len(args) >= 2 and args[0].isdigit():
            if self._count(f"flaky/{key}") <= int(args[0]):
                return _text("flaky: failing on purpose\n", 500)
            return _Response(200, make_image_bytes(f"fault/flaky/{key}", size), jpeg)
        if name == "stall" and len(args) >= 3 and args[0].isdigit():
            # /fault/stall/{n}/{seconds}/{key}: the first n requests stall (a timeout), later ones answer at once.
            if self._count(f"stall/{key}") <= int(args[0]):
                time.sleep(float(args[1]))
            return _Response(200, make_image_bytes(f"fault/stall/{key}", size), jpeg)
        if name == "ratelimit" and len(args) >= 2:
            if self._count(f"ratelimit/{key}") == 1:
                return _Response(429, b"slow down\n", "text/plain; charset=utf-8", {"Retry-After": args[0]})
            return _Response(200, make_image_bytes(f"fault/ratelimit/{key}", size), jpeg)
        if name == "slowbody" and len(args) >= 2:
            self._slowbody(h, float(args[0]), make_image_bytes(f"fault/slowbody/{key}", size))
        if name == "drip" and len(args) >= 2:
            self._drip(h, float(args[0]), key)
        if name == "redirect-loop" and args:
            return _Response(302, b"", "text/plain", {"Location": self.url(h.path)})
        if name == "redirect" and args:
            return _Response(302, b"", "text/plain", {"Location": self.url("/img/" + quote(key))})
        if name in ("huge", "huge-nolength") and not args:
            self._huge(h, with_length=name == "huge")
        if name == "xrobots" and len(args) >= 2:
            img = make_image_bytes(f"fault/xrobots/{'/'.join(args[1:])}", size)
            return _Response(200, img, jpeg, {"X-Robots-Tag": args[0]})
        if name == "cut" and args:
            self._cut(h, make_image_bytes(f"fault/cut/{key}", size))
        if name == "drop" and not args:
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            raise _Handled
        return _NOT_FOUND

    @staticmethod
    def _cut(h: _Handler, body: bytes) -> None:
        """Headers promise the whole body; half of it is sent, then the connection closes."""
        if h.start_stream(200, "image/jpeg", len(body)):
            h.write_quietly(body[: len(body) // 2])
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.shutdown(socket.SHUT_RDWR)
        raise _Handled

    @staticmethod
    def _slowbody(h: _Handler, pause: float, body: bytes) -> None:
        """First half, flush, pause, rest: a server that stalls mid-body."""
        half = len(body) // 2
        if h.start_stream(200, "image/jpeg", len(body)) and h.write_quietly(body[:half]):
            time.sleep(pause)
            h.write_quietly(body[half:])
        raise _Handled

    def _drip(self, h: _Handler, seconds: float, key: str) -> None:
        """100-byte chunks spread over ``seconds``: no single gap reaches 1 s, the total does.

        Catches clients that only set a per-read timeout: they never time out here. The image is
        made larger when needed so that gaps stay under 0.9 s.
        """
        side = self.image_size
        body = make_image_bytes(f"fault/drip/{key}", (side, side))
        while len(body) / 100 * 0.9 < seconds and side < 4096:
            side *= 2
            body = make_image_bytes(f"fault/drip/{key}", (side, side))
        chunks = [body[i : i + 100] for i in range(0, len(body), 100)]
        gap = min(0.9, seconds / len(chunks))
        if h.start_stream(200, "image/jpeg", len(body)):
            for c in chunks:
                if not h.write_quietly(c):
                    break
                time.sleep(gap)
        raise _Handled

    @staticmethod
    def _huge(h: _Handler, *, with_length: bool) -> None:
        """50 MB streamed from one reusable chunk, never built in memory."""
        chunk = b"\xff\xd8\xff\xe0" + b"\x00" * (_CHUNK - 4)
        zeros = b"\x00" * _CHUNK
        if h.start_stream(200, "image/jpeg", _HUGE_BYTES if with_length else None):
            sent = 0
            while sent < _HUGE_BYTES:
                part = (chunk if sent == 0 else zeros)[: _HUGE_BYTES - sent]
                if not h.write_quietly(part):
                    break
                sent += len(part)
        if not with_length:
            h.close_connection = True
        raise _Handled


_HTML = """<!doctype html>
<html><head><title>Not an image</title></head>
<body><h1>Welcome</h1><p>This is a web page, not a picture.</p><img src="/img/x.jpg"></body></html>
"""
