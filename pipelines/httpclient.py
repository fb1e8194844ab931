"""The shared HTTP session: pooled connections, polite retries, timeouts, a network policy and errors with names.

Retries are urllib3's (exponential backoff on connection errors, 429 and 5xx, honouring
``Retry-After``); the one addition is a cap on ``Retry-After`` so a server that says "come back in an
hour" makes us give up on that URL instead of stalling the whole run.

URLs come from listings on other people's servers, so the session refuses to connect to addresses that
are not public (loopback, private, link-local such as cloud metadata at 169.254.169.254, ...) unless
they are allowed explicitly. The check runs where the socket is connected, on each address the host
name resolved to, before connecting: it covers every request of the session (downloads, each redirect
hop, robots.txt, listing APIs), and a name that resolves to a public address for one lookup and an
internal one for the next (DNS rebinding) gains nothing. Through an HTTP(S) proxy (``HTTP_PROXY``,
``HTTPS_PROXY``) the address connected to is the proxy's, which must then be public or allowed; the
proxy resolves and reaches the targets, so it must refuse internal destinations itself.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

DEFAULT_USER_AGENT = "gan-pipelines/0.1 (+https://github.com/gan-pipelines/gan-pipelines; image dataset research)"
#: Comma-separated networks allowed besides public addresses, when ``HttpSettings.allowed_networks`` is None.
ALLOWED_NETWORKS_ENV = "GAN_ALLOWED_NETWORKS"
#: How much of a server-controlled text (a status line, a body, a header) an error message may quote.
MAX_QUOTE = 200

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    # Networks ("192.168.1.0/24", "10.0.0.5", "fd00::/8") that may be connected to although not public, e.g. a
    # mirror on the LAN. None: those in $GAN_ALLOWED_NETWORKS (comma-separated), else none.
    allowed_networks: tuple[str, ...] | None = None

    def network_policy(self) -> NetworkPolicy:
        """The policy for these settings; the environment is read here, when a session is made, not at import."""
        if self.allowed_networks is not None:
            return NetworkPolicy.parse(self.allowed_networks, "allowed_networks")
        entries = os.environ.get(ALLOWED_NETWORKS_ENV, "").split(",")
        return NetworkPolicy.parse([e for e in entries if e.strip()], f"${ALLOWED_NETWORKS_ENV}")


def clip(text: str, limit: int = MAX_QUOTE) -> str:
    """``text`` on one line, control characters escaped, cut to about ``limit`` characters.

    Error messages quote what servers send (status lines, headers, bodies); a manifest reason or a check
    description must stay short and must never carry raw bytes or line breaks.
    """
    head = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return head if len(text) <= limit and len(head) <= limit else f"{head[:limit]}... ({len(text):,} characters)"


def quote_body(body: bytes, limit: int = 120) -> str:
    """The start of a response body for an error message: at most ``limit`` bytes, escaped."""
    return repr(body[:limit]) + (f"... ({len(body):,} bytes)" if len(body) > limit else "")


class BodyLimitExceeded(requests.RequestException):
    """A response body was larger or slower than its reader allows (``kind`` is "too_large" or "timeout")."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_limited(resp: requests.Response, max_bytes: int, timeout_s: float, *, truncate: bool = False) -> bytes:
    """The body of a ``stream=True`` response, at most ``max_bytes`` and within ``timeout_s`` in all.

    Size and deadline are checked after every network read (``read1`` returns whatever arrived), so a
    server that drips bytes just under the read timeout, or sends without end, is cut off. Past
    ``max_bytes`` the body is cut there when ``truncate`` (robots.txt: RFC 9309 reads the first 500 KiB),
    else :class:`BodyLimitExceeded` is raised; a body still arriving at the deadline raises it too.
    """
    deadline = time.monotonic() + timeout_s
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = resp.raw.read1(64 * 1024, decode_content=True)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            if truncate:
                resp.close()
                return b"".join(chunks)[:max_bytes]
            raise BodyLimitExceeded("too_large", f"body exceeds {max_bytes:,} bytes")
        if time.monotonic() > deadline:
            raise BodyLimitExceeded("timeout", f"body took longer than {timeout_s:g}s")
    return b"".join(chunks)


class AddressRefused(urllib3.exceptions.HTTPError):
    """The network policy forbids every address ``host`` resolved to; no connection was attempted.

    Not an ``OSError``, so urllib3 neither retries it nor wraps it: the session raises it as a
    ``requests.ConnectionError`` whose cause is this.
    """

    def __init__(self, host: str, address: str, why: str) -> None:
        name = host if host == address else f"{host} ({address})"
        super().__init__(
            f"refused to connect to {name}: {why}; only public addresses are fetched unless allowed_networks "
            f"(${ALLOWED_NETWORKS_ENV}) includes it"
        )


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d) or 6to4 (2002::/16) IPv6 address, else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address):
        return ip.ipv4_mapped or ip.sixtofour or ip
    return ip


@dataclass(frozen=True)
class NetworkPolicy:
    """Which addresses the session may connect to: public ones, and those in ``allowed``."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str], origin: str) -> NetworkPolicy:
        """Networks or single addresses; ``origin`` names the setting in the error for a bad entry."""
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as e:
                raise ValueError(f"{origin}: {entry!r} is not an IP network or address ({e})") from e
        return cls(tuple(networks))

    def refusal(self, address: str) -> str | None:
        """Why connecting to ``address`` (an IP, as getaddrinfo returns it) is refused; None when it is allowed."""
        ip = ipaddress.ip_address(address)
        inner = _unwrap(ip)  # ::ffff:169.254.169.254 is 169.254.169.254
        if any(a in net for a in {ip, inner} for net in self.allowed):
            return None
        for what, flag in (
            ("a loopback address", inner.is_loopback),
            ("a link-local address (169.254.0.0/16, fe80::/10: where cloud metadata answers)", inner.is_link_local),
            ("the unspecified address", inner.is_unspecified),
            ("a multicast address", inner.is_multicast),
            ("a reserved address", inner.is_reserved),
            ("a private address", inner.is_private),
            ("not a public address", not inner.is_global),
        ):
            if flag:
                return f"{inner} is {what}"
        return None

    def connect(
        self,
        host: str,
        port: int,
        timeout: float | None,
        source_address: tuple[str, int] | None,
        socket_options: Any,
    ) -> socket.socket:
        """``urllib3.util.connection.create_connection``, skipping every resolved address the policy refuses.

        The address checked is the one then passed to ``connect``, so nothing else is ever connected to.
        """
        refused: AddressRefused | None = None
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(
            host, port, allowed_gai_family(), socket.SOCK_STREAM
        ):
            why = self.refusal(sockaddr[0])
            if why:
                refused = refused or AddressRefused(host, sockaddr[0], why)
                continue
            sock = socket.socket(family, kind, proto)
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as e:
                sock.close()
                error = e
        if error is not None:
            raise error
        raise refused or OSError(f"getaddrinfo returned no address for {host}")


class _PolicyConnection(HTTPConnection):
    """Opens its socket through ``network_policy`` (set on the per-session subclasses)."""

    network_policy: NetworkPolicy

    def _new_conn(self) -> socket.socket:
        # urllib3's own _new_conn with the policy's connect; the same errors for the same failures.
        try:
            sock = self.network_policy.connect(
                self._dns_host.strip("[]"),
                self.port,
                Timeout.resolve_default_timeout(self.timeout),
                self.source_address,
                self.socket_options,
            )
        except socket.gaierror as e:
            raise NameResolutionError(self.host, self, e) from e
        except TimeoutError as e:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from e
        except OSError as e:
            raise NewConnectionError(self, f"Failed to establish a new connection: {e}") from e
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock


class _PolicyAdapter(HTTPAdapter):
    """An HTTPAdapter whose pools (direct or to a proxy) connect only where ``policy`` allows."""

    def __init__(self, policy: NetworkPolicy, **kwargs: Any) -> None:
        http = type("PolicyHTTPConnection", (_PolicyConnection,), {"network_policy": policy})
        https = type("PolicyHTTPSConnection", (_PolicyConnection, HTTPSConnection), {"network_policy": policy})
        self.pool_classes = {
            "http": type("PolicyHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("PolicyHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self.pool_classes

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        if proxy.lower().startswith("socks"):  # its connections are PySocks', which the policy cannot check
            raise requests.exceptions.InvalidSchema("SOCKS proxies are not supported: the network policy cannot check")
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = self.pool_classes
        return manager

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        try:
            return super().send(request, *args, **kwargs)
        except AddressRefused as e:
            raise requests.exceptions.ConnectionError(e, request=request) from e


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
    """A pooled session whose every request retries politely, identifies itself and obeys the network policy."""
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
    adapter = _PolicyAdapter(
        settings.network_policy(), max_retries=retry, pool_connections=16, pool_maxsize=settings.pool_size
    )
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


def is_refused(exc: BaseException) -> bool:
    """Whether the network policy, not the network or the server, stopped this request."""
    return any(isinstance(e, AddressRefused) for e in error_chain(exc))


def describe_error(exc: BaseException) -> tuple[str, str]:
    """Map a requests/urllib3 exception to a manifest (status, reason) pair a person can act on.

    The reason is clipped: exceptions quote what the server sent (a status line of binary garbage, say).
    """
    status, reason = _describe(exc)
    return status, clip(reason)


def _describe(exc: BaseException) -> tuple[str, str]:
    chain = error_chain(exc)
    for e in chain:
        if isinstance(e, AddressRefused):
            return "refused", str(e)
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
