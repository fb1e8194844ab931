"""What every source yields, and how sources talk to their listing APIs.

A source only *lists* candidates (URL + metadata); downloading and validating is the fetcher's job,
so one politeness and error policy covers every source.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol, TypeVar

import requests

from pipelines.httpclient import describe_error, quote_body, read_limited, resolve_host

#: A listing API page is a few KiB to a few MiB of JSON; more, or slower, is a broken or hostile server.
LISTING_MAX_BYTES = 32 * 2**20
LISTING_DEADLINE_S = 60.0

OFFLINE_HINT = (
    "`make demo` runs the whole pipeline offline on tiles the repository ships; for your own data see README.md, "
    "section 'Offline and air-gapped use' (local_dir or url_list sources)"
)


class SourceUnavailable(RuntimeError):
    """A source's listing API cannot be used right now; the message names the source and the error."""


@dataclass(frozen=True)
class Candidate:
    url: str
    source: str
    license: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # A file of the user's own (local_dir): only then may the URL be a file: URL. Listings from servers never are,
    # or any web page could make the fetcher read local files.
    local: bool = False


@dataclass
class SourceContext:
    """What a source may use while listing: the shared session and the partition being filled."""

    session: requests.Session
    timeout: tuple[float, float]
    partition_date: date

    def preflight(self, source: str, url: str) -> None:
        """Fail at once, naming the source, when the host of ``url`` does not resolve (e.g. offline)."""
        try:
            resolve_host(url)
        except socket.gaierror as e:
            raise SourceUnavailable(
                f"source {source!r}: cannot resolve the host of {url} ({e.strerror}). "
                f"Is this machine offline? {OFFLINE_HINT}"
            ) from e

    def get_json(self, source: str, url: str, params: dict[str, Any] | None = None) -> Any:
        """GET a JSON document or raise :class:`SourceUnavailable` within seconds, with the reason."""
        self.preflight(source, url)
        try:
            with self.session.get(url, params=params, timeout=self.timeout, stream=True) as resp:
                body = read_limited(resp, LISTING_MAX_BYTES, LISTING_DEADLINE_S)
        except requests.RequestException as e:
            raise SourceUnavailable(f"source {source!r}: GET {url} failed: {describe_error(e)[1]}") from e
        if resp.status_code != 200:
            raise SourceUnavailable(
                f"source {source!r}: GET {resp.url} answered HTTP {resp.status_code}: {quote_body(body)}"
            )
        try:
            return json.loads(body)
        except ValueError as e:
            raise SourceUnavailable(
                f"source {source!r}: GET {resp.url} did not return JSON (starts with {quote_body(body)})"
            ) from e


T = TypeVar("T")


def interleave(iterators: Iterable[Iterator[T]]) -> Iterator[T]:
    """Round-robin over lazy iterators, dropping each as it runs out.

    Generators do no work until first advanced, so a listing API is only called for the lists
    actually reached before the caller stops.
    """
    active = list(iterators)
    while active:
        still: list[Iterator[T]] = []
        for it in active:
            try:
                item = next(it)
            except StopIteration:
                continue
            still.append(it)
            yield item
        active = still


class Source(Protocol):
    name: str

    def candidates(self, ctx: SourceContext) -> Iterator[Candidate]:
        """Candidates in a stable order, lazily: the caller stops once it has enough."""
        ...
