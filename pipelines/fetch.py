"""Download one URL, validate it as an image, and store it content-addressed: one manifest row out.

Every failure becomes a status and a reason, never an exception, so a run over thousands of URLs
accounts for each of them. Bytes are streamed with a size cap and a total deadline, so a huge or
dripping body cannot exhaust memory or stall a worker; local files get the same cap and deadline.

URLs come from listings on servers we do not control, so they are fetched only over http(s), and only
from public addresses unless allowed (see pipelines/httpclient.py); a ``file:`` URL is read only for a
candidate of the user's own files (``allow_local``, set for local_dir sources), and then only a regular
file. Whatever the fetcher refuses is a ``refused`` or ``invalid_url`` row, never retried, whose reason
says why without quoting the file or body.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote, urljoin, urlparse

import requests
import urllib3

from pipelines.httpclient import (
    BodyLimitExceeded,
    HttpSettings,
    RetryAfterTooLong,
    clip,
    describe_error,
    error_chain,
    make_session,
    read_limited,
)
from pipelines.politeness import HostLimits, RobotsCache, agent_token, opt_out_directives
from pipelines.storage import Storage, content_key
from pipelines.streamget import StreamGet
from pipelines.validate import ImageInfo, ImageRejected, validate_image


@dataclass(frozen=True)
class FetchSettings:
    """What to accept and how hard to push a host. Defaults are polite for public servers."""

    http: HttpSettings = field(default_factory=HttpSettings)
    download_timeout: float = 60.0
    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 50_000_000
    min_side: int = 64
    respect_robots: bool = True
    respect_x_robots_tag: bool = True
    opt_out: frozenset[str] = frozenset({"noai", "noimageai"})
    per_host_concurrency: int = 4
    per_host_rate: float = 10.0


@dataclass
class FetchResult:
    """One attempt at one URL; becomes a manifest row together with the candidate's source fields."""

    url: str
    status: str
    reason: str = ""
    http_status: int | None = None
    sha256: str | None = None
    storage_key: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    bytes: int | None = None
    content_type: str | None = None
    x_robots_tag: str | None = None
    retryable: bool = False  # a failure that may well succeed later (timeouts, 429, 5xx, network)
    elapsed_ms: float = 0.0
    fetched_at: datetime = field(default_factory=lambda: datetime.now(UTC))


# HTTP answers that say something about that moment, not about the URL: worth another try later.
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Failed(Exception):
    """A failed attempt. ``retryable`` defaults to: a timeout, no HTTP answer at all, or a transient status."""

    def __init__(
        self, status: str, reason: str, http_status: int | None = None, *, retryable: bool | None = None
    ) -> None:
        super().__init__(reason)
        self.status, self.reason, self.http_status = status, reason, http_status
        if retryable is None:
            retryable = status == "timeout" or (
                status == "http_error" and (http_status is None or http_status in TRANSIENT_HTTP)
            )
        self.retryable = retryable

    @classmethod
    def from_exception(cls, exc: BaseException) -> _Failed:
        """A network failure: transient unless it is a redirect loop or the network policy's refusal."""
        status, reason = describe_error(exc)
        too_long = [e for e in error_chain(exc) if isinstance(e, RetryAfterTooLong)]
        http_status = too_long[0].status if too_long else None
        retryable = status != "refused" and not reason.startswith("redirect loop")
        return cls(status, reason, http_status, retryable=retryable)


class _Redirect(Exception):
    """A 3xx with a Location. Followed by the fetcher, so each hop passes robots.txt and the host limits."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


LOCAL_ONLY = "file: URLs are read only for local_dir sources, never from a listing or a redirect"


def _http_host(url: str) -> str:
    """The host of a well-formed http(s) URL; anything else is a permanent failure, not worth a retry."""
    try:
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https"):
            requests.PreparedRequest().prepare_url(url, None)  # reject now what requests would reject later
            return parsed.hostname or ""
    except (ValueError, requests.RequestException) as e:
        raise _Failed("invalid_url", f"invalid URL: {clip(str(e))}", retryable=False) from e
    if parsed.scheme == "file":
        raise _Failed("refused", LOCAL_ONLY, retryable=False)
    if not parsed.scheme:
        raise _Failed("invalid_url", "not a URL (no scheme); local files go in a local_dir source", retryable=False)
    raise _Failed(
        "invalid_url", f"unsupported URL scheme {clip(parsed.scheme, 20)!r}: only http and https", retryable=False
    )


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    kinds |= {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


class Fetcher:
    """Thread-safe: one instance is shared by all download threads of a process.

    ``share``: this fetcher is one of ``share`` processes fetching for the same run (pipelines/fetchpool.py),
    so it takes that fraction of every host's concurrency and request rate, and waits ``share`` times a
    robots.txt Crawl-delay: together they load a host no more than one fetcher would. ``rank`` (0 to
    share - 1) offsets its turns, so the processes' requests to a host alternate rather than coincide.
    """

    def __init__(
        self, storage: Storage, settings: FetchSettings | None = None, *, share: int = 1, rank: int = 0
    ) -> None:
        self.settings = settings or FetchSettings()
        self.share = share
        self.storage = storage
        self.session = make_session(self.settings.http)
        self.stream_get = StreamGet(self.session)  # downloads: the session's adapter without Session.request's overhead
        self.timeout = (self.settings.http.connect_timeout, self.settings.http.read_timeout)
        self.robots = RobotsCache(self.session, self.settings.http.user_agent, self.timeout)
        s = self.settings
        self.hosts = HostLimits(max(1, s.per_host_concurrency // share), s.per_host_rate / share, phase=rank / share)
        self.agent = agent_token(self.settings.http.user_agent)

    def close(self) -> None:
        self.session.close()

    def fetch(
        self, url: str, known_hashes: frozenset[str] | set[str] = frozenset(), *, allow_local: bool = False
    ) -> FetchResult:
        """Fetch ``url``; bytes whose sha256 is in ``known_hashes`` are not stored again.

        ``allow_local``: the URL names a file of the user's own (a local_dir candidate), so a ``file:``
        URL may be read; for anything a server listed it stays False.
        """
        t0 = time.perf_counter()
        result = FetchResult(url=url, status="ok")
        try:
            data = self._download(url, result, allow_local)
            result.bytes = len(data)
            try:
                info = validate_image(data, min_side=self.settings.min_side, max_pixels=self.settings.max_pixels)
            except ImageRejected as e:
                if e.info is None:
                    raise
                # A thumbnail: not for training, but kept so curation can link it to the picture it shows.
                result.status, result.reason = e.status, e.reason
                info = e.info
            self._store(data, info, result, known_hashes)
        except _Failed as e:
            result.status, result.reason, result.retryable = e.status, e.reason, e.retryable
            result.http_status = e.http_status or result.http_status
        except ImageRejected as e:
            result.status, result.reason = e.status, e.reason
        result.elapsed_ms = (time.perf_counter() - t0) * 1000
        return result

    def _store(
        self, data: bytes, info: ImageInfo, result: FetchResult, known_hashes: frozenset[str] | set[str]
    ) -> None:
        result.sha256 = hashlib.sha256(data).hexdigest()
        result.width, result.height, result.mode, result.format = info.width, info.height, info.mode, info.format
        result.storage_key = content_key(result.sha256, info.ext)
        if result.sha256 not in known_hashes and not self.storage.exists(result.storage_key):
            self.storage.put_bytes(result.storage_key, data)

    def _download(self, url: str, result: FetchResult, allow_local: bool) -> bytes:
        if allow_local and url[:5].lower() == "file:":  # only as given: a redirect never reaches the local disk
            return self._read_file(url)
        redirects = self.settings.http.max_redirects
        for _ in range(redirects + 1):
            host = _http_host(url)
            if self.settings.respect_robots:
                self._check_robots(url, host)
            try:
                with self.hosts.slot(host):
                    return self._get(url, result)
            except _Redirect as r:
                url = r.location
        raise _Failed(
            "http_error", f"redirect loop or more than {redirects} redirects", result.http_status, retryable=False
        )

    def _check_robots(self, url: str, host: str) -> None:
        try:
            verdict = self.robots.check(url)
            delay = self.robots.crawl_delay(url)
        except requests.RequestException as e:  # only on exotic failures; _load catches the rest
            raise _Failed.from_exception(e) from e
        if verdict.failed:  # the server, not its rules, said no: a transient http_error
            raise _Failed("http_error", verdict.reason, verdict.http_status, retryable=True)
        if not verdict.allowed:
            raise _Failed("robots_disallowed", verdict.reason)
        if delay:
            self.hosts.limiter(host).slow_down(delay * self.share)

    def _get(self, url: str, result: FetchResult) -> bytes:
        s = self.settings
        try:
            with self.stream_get(url, self.timeout) as resp:
                result.http_status = resp.status_code
                result.content_type = _header(resp, "Content-Type")
                result.x_robots_tag = _header(resp, "X-Robots-Tag")
                x_robots_tag = resp.headers.get("X-Robots-Tag")  # all of it: a clipped copy could lose an opt-out
                location = self.session.get_redirect_target(resp)
                if location:
                    raise _Redirect(urljoin(resp.url, location))
                if resp.status_code != 200:
                    raise _Failed("http_error", f"HTTP {resp.status_code} {clip(resp.reason or '')}", resp.status_code)
                if s.respect_x_robots_tag:
                    found = opt_out_directives(x_robots_tag, self.agent, s.opt_out)
                    if found:
                        raise _Failed("opted_out", f"X-Robots-Tag: {', '.join(found)}", 200)
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > s.max_bytes:
                    raise _Failed(
                        "too_large", f"Content-Length {int(declared):,} exceeds max_bytes={s.max_bytes:,}", 200
                    )
                return self._read_body(resp)
        except requests.RequestException as e:
            raise _Failed.from_exception(e) from e

    def _read_body(self, resp: requests.Response) -> bytes:
        """The body, checking size and the total deadline after every network read.

        ``read1`` returns whatever arrived, so a server that drips bytes just under the read timeout
        is cut off at ``download_timeout`` (overshooting by at most one read timeout).
        """
        s = self.settings
        try:
            return read_limited(resp, s.max_bytes, s.download_timeout)
        except BodyLimitExceeded as e:
            if e.kind == "too_large":
                raise _Failed("too_large", f"body exceeds max_bytes={s.max_bytes:,}", 200) from None
            raise _Failed(
                "timeout", f"download took longer than download_timeout={s.download_timeout:g}s", 200
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _Failed.from_exception(e) from e

    def _read_file(self, url: str) -> bytes:
        """A regular file, read like a body: at most ``max_bytes``, within ``download_timeout``.

        Symlinks are resolved first and the result opened without following links, non-blocking (a FIFO
        would otherwise wait for a writer forever); what was opened is checked with ``fstat``, so a device
        (``/dev/zero``), FIFO or directory is refused before a byte is read, even if it replaced a file
        after listing.
        """
        s = self.settings
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise _Failed("invalid_url", f"file: URL names another host ({clip(parsed.netloc, 60)!r})", retryable=False)
        path = os.path.realpath(unquote(parsed.path))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:  # a missing or unreadable local file stays that way: not retryable
            raise _Failed("http_error", f"cannot read {path}: {e.strerror or e}", retryable=False) from e
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                raise _Failed("refused", f"{path} is {_file_kind(opened.st_mode)}, not a regular file", retryable=False)
            if opened.st_size > s.max_bytes:
                raise _Failed("too_large", f"file of {opened.st_size:,} bytes exceeds max_bytes={s.max_bytes:,}")
            deadline = time.monotonic() + s.download_timeout
            chunks: list[bytes] = []
            total = 0
            while chunk := os.read(fd, 1024 * 1024):
                total += len(chunk)
                if total > s.max_bytes:  # a file that grew, or one whose size stat cannot tell (/proc)
                    raise _Failed("too_large", f"file exceeds max_bytes={s.max_bytes:,}")
                if time.monotonic() > deadline:
                    raise _Failed("timeout", f"reading took longer than download_timeout={s.download_timeout:g}s")
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as e:  # EIO and the like, mid-read
            raise _Failed("http_error", f"cannot read {path}: {e.strerror or e}", retryable=False) from e
        finally:
            os.close(fd)


def _header(resp: requests.Response, name: str) -> str | None:
    """A response header as the manifest keeps it: clipped, since the server chose its length."""
    value = resp.headers.get(name)
    return None if value is None else clip(value)
