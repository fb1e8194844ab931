"""Being a good citizen on other people's servers: robots.txt, X-Robots-Tag opt-outs, per-host limits.

robots.txt is fetched once per origin with our own session (same User-Agent and timeouts) and read
with Protego (Scrapy's parser, which follows RFC 9309: longest match wins, ``*`` and ``$`` in paths;
the standard library's parser lets the first rule win and ignores wildcards). A 4xx means "no
rules", a 5xx (or a 429) or an unreachable server means "assume everything is disallowed" for now.
A host the network policy refuses is not asked at all: that refusal is raised to the caller.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import requests
from protego import Protego

from pipelines.httpclient import describe_error, is_refused, read_limited

# X-Robots-Tag directives that carry a value after a colon; anything else before a colon is a bot name.
_VALUED = {"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"}


def agent_token(user_agent: str) -> str:
    """The product token robots rules are matched against: 'gan-pipelines/0.1 (...)' -> 'gan-pipelines'."""
    return user_agent.split("/", 1)[0].split()[0].strip().lower()


def opt_out_directives(header: str | None, agent: str, wanted: frozenset[str]) -> list[str]:
    """Directives in an X-Robots-Tag value that opt this agent out, e.g. ``noai`` or ``noimageai``.

    ``"otherbot: noai"`` applies only to otherbot; ``"noai"`` or ``"gan-pipelines: noai"`` applies to us.
    """
    if not header:
        return []
    found: list[str] = []
    target: str | None = None
    for raw in header.split(","):
        token = raw.strip()
        name, sep, rest = token.partition(":")
        if sep and name.strip().lower() not in _VALUED:
            target, token = name.strip().lower(), rest.strip()
        directive = token.lower()
        if directive in wanted and (target is None or target == agent) and directive not in found:
            found.append(directive)
    return found


@dataclass
class RobotsVerdict:
    allowed: bool
    reason: str = ""
    http_status: int | None = None  # set when robots.txt itself failed: the verdict is temporary
    failed: bool = False


#: RFC 9309: crawlers must parse at least the first 500 KiB of a robots.txt and may ignore the rest; a
#: robots.txt still arriving after the deadline is "unreachable" (disallow for now), like one that never answers.
ROBOTS_MAX_BYTES = 500 * 1024
ROBOTS_DEADLINE_S = 30.0


class RobotsCache:
    """Per-origin robots.txt rules, fetched lazily and once, safe to share across threads."""

    def __init__(self, session: requests.Session, user_agent: str, timeout: tuple[float, float]) -> None:
        self.session = session
        self.agent = agent_token(user_agent)
        self.timeout = timeout
        self._rules: dict[str, Protego | RobotsVerdict] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _load(self, origin: str) -> Protego | RobotsVerdict:
        try:
            with self.session.get(f"{origin}/robots.txt", timeout=self.timeout, stream=True) as resp:
                body = read_limited(resp, ROBOTS_MAX_BYTES, ROBOTS_DEADLINE_S, truncate=True)
        except requests.RequestException as e:
            if is_refused(e):  # our policy, not the server: nothing to cache, and the fetcher must say so
                raise
            _, why = describe_error(e)
            return RobotsVerdict(False, f"robots.txt unreachable ({why}); RFC 9309: assume disallowed", failed=True)
        # A 429 says "slow down", not "there are no rules": treat it like a server error (as Google does).
        if resp.status_code >= 500 or resp.status_code == 429:
            why = f"robots.txt answered {resp.status_code}; RFC 9309: assume disallowed"
            return RobotsVerdict(False, why, http_status=resp.status_code, failed=True)
        if resp.status_code >= 400:
            return RobotsVerdict(True)
        return Protego.parse(body.decode("utf-8", "replace"))  # RFC 9309: robots.txt is UTF-8

    def rules(self, url: str) -> Protego | RobotsVerdict:
        parsed = urlparse(url)
        origin = f"{parsed.scheme}://{parsed.netloc}"
        with self._guard:
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:
            if origin not in self._rules:
                self._rules[origin] = self._load(origin)
            return self._rules[origin]

    def check(self, url: str) -> RobotsVerdict:
        rules = self.rules(url)
        if isinstance(rules, RobotsVerdict):
            return rules
        if rules.can_fetch(url, self.agent):
            return RobotsVerdict(True)
        return RobotsVerdict(False, f"robots.txt disallows {urlparse(url).path} for {self.agent}")

    def crawl_delay(self, url: str) -> float | None:
        rules = self.rules(url)
        if isinstance(rules, RobotsVerdict):
            return None
        return rules.crawl_delay(self.agent)


class RateLimiter:
    """Spaces calls at least ``1/rate`` seconds apart (rate <= 0: no limit).

    ``phase`` (0 to 1) delays the first call by that fraction of the interval: limiters of several processes
    sharing one host's budget (pipelines/fetchpool.py) then take turns instead of starting together.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, *, phase: float = 0.0) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.phase = phase
        self._next: float | None = None
        self._lock = threading.Lock()
        self._clock = clock

    def slow_down(self, interval: float) -> None:
        """Never go faster than one call per ``interval`` seconds from now on (e.g. robots Crawl-delay)."""
        with self._lock:
            self.interval = max(self.interval, interval)

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            if self._next is None:
                self._next = now + self.phase * self.interval
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class HostLimits:
    """At most ``concurrency`` requests in flight and ``rate`` requests/second per host."""

    def __init__(self, concurrency: int, rate: float, *, phase: float = 0.0) -> None:
        self.concurrency = concurrency
        self.rate = rate
        self.phase = phase
        self._hosts: dict[str, tuple[threading.BoundedSemaphore, RateLimiter]] = {}
        self._guard = threading.Lock()

    def _for(self, host: str) -> tuple[threading.BoundedSemaphore, RateLimiter]:
        with self._guard:
            if host not in self._hosts:
                limiter = RateLimiter(self.rate, phase=self.phase)
                self._hosts[host] = (threading.BoundedSemaphore(self.concurrency), limiter)
            return self._hosts[host]

    def limiter(self, host: str) -> RateLimiter:
        return self._for(host)[1]

    @contextlib.contextmanager
    def slot(self, host: str) -> Iterator[None]:
        sem, limiter = self._for(host)
        with sem:
            limiter.wait()
            yield
