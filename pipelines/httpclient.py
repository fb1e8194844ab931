"""The shared HTTP session: pooled connections, polite retries, timeouts and errors with names.

Retries are urllib3's (exponential backoff on connection errors, 429 and 5xx, honouring
``Retry-After``); the one addition is a cap on ``Retry-After`` so a server that says "come back in an
hour" makes us give up on that URL instead of stalling the whole run.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

DEFAULT_USER_AGENT = "gan-pipelines/0.1 (+https://github.com/gan-pipelines/gan-pipelines; image dataset research)"


@dataclass(frozen=True)
class HttpSettings:
    """Timeouts in seconds, sizes in bytes. The defaults suit public APIs on a home connection."""

    user_agent: str = DEFAULT_USER_AGENT
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    retries: int = 3
    backoff_factor: float = 0.5
    backoff_max: float = 10.0
    max_retry_after: float = 30.0
    max_redirects: int = 5
    pool_size: int = 64


class RetryAfterTooLong(requests.exceptions.RetryError):
    """The server asked us to wait longer than ``max_retry_after``.

    A ``requests`` exception (requests wraps it in a ConnectionError), so every caller that handles
    request failures handles this one too.
    """

    def __init__(self, seconds: float, limit: float, status: int) -> None:
        super().__init__(f"Retry-After {seconds:g}s exceeds max_retry_after={limit:g}s")
        self.seconds = seconds
        self.status = status  # 429, or a 503 that also says when to come back


class PoliteRetry(Retry):
    """urllib3 Retry that refuses to sleep longer than ``max_retry_after``."""

    def __init__(self, *args: object, max_retry_after: float = 30.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.max_retry_after = max_retry_after

    def new(self, **kw: object) -> PoliteRetry:
        kw.setdefault("max_retry_after", self.max_retry_after)
        return super().new(**kw)  # type: ignore[return-value]

    def sleep_for_retry(self, response: urllib3.BaseHTTPResponse) -> bool:
        after = self.get_retry_after(response)
        if after is not None and after > self.max_retry_after:
            raise RetryAfterTooLong(after, self.max_retry_after, response.status)
        return super().sleep_for_retry(response)


def make_session(settings: HttpSettings) -> requests.Session:
    """A pooled session whose every request retries politely and identifies itself."""
    retry = PoliteRetry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,
        status=settings.retries,
        other=0,
        redirect=settings.max_redirects,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD"}),
        backoff_factor=settings.backoff_factor,
        backoff_max=settings.backoff_max,
        respect_retry_after_header=True,
        raise_on_status=False,
        raise_on_redirect=True,
        max_retry_after=settings.max_retry_after,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=16, pool_maxsize=settings.pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = settings.user_agent
    session.max_redirects = settings.max_redirects
    return session


def error_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything behind it (causes, contexts, urllib3 reasons): requests wraps deeply."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        nxt = seen.__cause__ or seen.__context__
        if nxt is None and seen.args and isinstance(seen.args[0], BaseException):
            nxt = seen.args[0]
        if nxt is None and isinstance(seen, urllib3.exceptions.MaxRetryError):
            nxt = seen.reason
        seen = nxt
    return chain


def describe_error(exc: BaseException) -> tuple[str, str]:
    """Map a requests/urllib3 exception to a manifest (status, reason) pair a person can act on."""
    chain = error_chain(exc)
    for e in chain:
        if isinstance(e, RetryAfterTooLong):
            return "http_error", f"HTTP {e.status}, {e}"
        if isinstance(e, urllib3.exceptions.NameResolutionError | socket.gaierror):
            return "http_error", f"DNS failure: {e}"
        if isinstance(e, requests.exceptions.TooManyRedirects) or (
            isinstance(e, urllib3.exceptions.MaxRetryError) and "redirect" in str(e).lower()
        ):
            return "http_error", f"redirect loop or too many redirects: {e}"
        if isinstance(e, ConnectionRefusedError):
            return "http_error", "connection refused"
        if isinstance(e, urllib3.exceptions.NewConnectionError):  # a subclass of ConnectTimeoutError
            if "refused" in str(e).lower():
                return "http_error", "connection refused"
            return "http_error", f"cannot connect: {e}"
        if isinstance(e, urllib3.exceptions.ConnectTimeoutError | requests.exceptions.ConnectTimeout):
            return "timeout", "connect timeout"
        if isinstance(e, urllib3.exceptions.ReadTimeoutError | requests.exceptions.ReadTimeout | TimeoutError):
            return "timeout", "read timeout: the server stopped sending"
        if isinstance(e, urllib3.exceptions.ProtocolError | requests.exceptions.ChunkedEncodingError):
            return "http_error", f"connection dropped: {e}"
    return "http_error", f"{type(exc).__name__}: {exc}"


def resolve_host(url: str) -> None:
    """Raise ``socket.gaierror`` at once when the host of ``url`` has no address (e.g. offline)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https") and parsed.hostname:
        socket.getaddrinfo(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
