"""The fetcher against the loopback FakeWeb over real sockets: every way a download goes wrong ends in one row.

Each case checks the contract the manifest relies on: a ``status``, a ``reason`` a person can act on,
whether a later run should retry, and that only ``ok`` results put an object in storage (at its
content key), so a failure never leaves a partial file behind. Timeouts and backoff are tiny so the
module runs in seconds; timing assertions use lower bounds the code guarantees and wide upper bounds.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pipelines.fetch import Fetcher, FetchResult, FetchSettings
from pipelines.httpclient import HttpSettings
from pipelines.storage import LocalStorage, S3Storage, Storage, content_key
from pipelines.validate import ImageRejected, validate_image
from tests.fakeweb import FakeWeb, animated_gif, free_port, make_image_bytes

UA = "gan-pipelines/0.1 (+https://example.invalid/fetch-tests)"  # robots/X-Robots-Tag token: gan-pipelines
HTTP = HttpSettings(
    user_agent=UA,
    connect_timeout=1,
    read_timeout=1.0,  # above the first-request image encoding time of FakeWeb on a loaded machine
    retries=2,
    backoff_factor=0.01,
    backoff_max=0.05,
    max_retry_after=5,
)
ATTEMPTS = 1 + HTTP.retries  # what the server sees for a URL that keeps failing transiently
MAX_BYTES = 2 * 2**20

MakeFetcher = Callable[..., Fetcher]


def fetch_settings(**overrides: Any) -> FetchSettings:
    """Small limits and no rate limit, so only the tests about rates and delays wait on purpose."""
    base: dict[str, Any] = {"http": HTTP, "download_timeout": 2.0, "max_bytes": MAX_BYTES, "per_host_rate": 0.0}
    return FetchSettings(**{**base, **overrides})


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store", fsync=False)


@pytest.fixture
def make_fetcher(store: LocalStorage) -> Iterator[MakeFetcher]:
    """Fetchers on ``store`` (or another storage) with test settings; closed after the test."""
    made: list[Fetcher] = []

    def make(storage: Storage | None = None, **overrides: Any) -> Fetcher:
        fetcher = Fetcher(storage or store, fetch_settings(**overrides))
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()


def timed_fetch(fetcher: Fetcher, url: str) -> tuple[FetchResult, float]:
    t0 = time.monotonic()
    result = fetcher.fetch(url)
    return result, time.monotonic() - t0


def files_under(root: Path) -> list[Path]:
    """Every file, temp files included: a partial write would show up here even if ``list`` hides it."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_failed(
    result: FetchResult, store: LocalStorage, status: str, *, retryable: bool, reason: str, http_status: Any = ...
) -> None:
    """A failure row: the status, a reason matching ``reason`` (regex), the retry flag, and nothing stored."""
    assert (result.status, result.retryable) == (status, retryable), result
    assert re.search(reason, result.reason, re.IGNORECASE), result.reason
    if http_status is not ...:
        assert result.http_status == http_status, result
    assert result.sha256 is None and result.storage_key is None
    assert files_under(store.root) == []


def assert_stored(result: FetchResult, storage: Storage, ext: str) -> bytes:
    """An ok row whose bytes sit at their content key; returns those bytes."""
    assert (result.status, result.reason, result.retryable) == ("ok", "", False), result
    assert result.sha256 and result.storage_key == content_key(result.sha256, ext)
    data = storage.get_bytes(result.storage_key)
    assert hashlib.sha256(data).hexdigest() == result.sha256 and len(data) == result.bytes
    return data


def image_times(fw: FakeWeb, prefix: str = "/img/") -> list[float]:
    """Server-side arrival times of the requests under ``prefix``, sorted."""
    return sorted(r.time for r in fw.requests if r.path.startswith(prefix))


def peak_overlap(starts: list[float], duration: float) -> int:
    """Most [t, t + duration) intervals open at once: requests the server was handling in parallel."""
    events = sorted([(t, 1) for t in starts] + [(t + duration, -1) for t in starts])  # ends sort before starts
    peak = active = 0
    for _, step in events:
        active += step
        peak = max(peak, active)
    return peak


def fetch_all(fetcher: Fetcher, urls: list[str], threads: int) -> list[FetchResult]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fetcher.fetch, urls))


# --------------------------------------------------------------------------------------------------
# One URL, one outcome
# --------------------------------------------------------------------------------------------------

FAILURES = [
    # path, status, retryable, http_status, reason (regex), requests the server sees for the path
    pytest.param("/fault/status/404", "http_error", False, 404, r"^HTTP 404 Not Found$", 1, id="404"),
    pytest.param("/fault/status/500", "http_error", True, 500, r"^HTTP 500", ATTEMPTS, id="500-after-retries"),
    pytest.param("/fault/status/503", "http_error", True, 503, r"^HTTP 503", ATTEMPTS, id="503-after-retries"),
    pytest.param(
        "/fault/ratelimit/100/k", "http_error", True, 429, r"^HTTP 429, Retry-After 100s exceeds", 1, id="429"
    ),
    pytest.param(
        "/fault/status/503?retry-after=100", "http_error", True, 503, r"^HTTP 503, Retry-After", 1, id="503-wait"
    ),
    pytest.param("/fault/slowbody/3/k", "timeout", True, 200, r"read timeout", 1, id="slow-body"),
    pytest.param("/fault/cut/k", "http_error", True, 200, r"connection dropped", 1, id="body-cut-short"),
    pytest.param("/fault/drop", "http_error", True, None, r"connection dropped", ATTEMPTS, id="dropped"),
    pytest.param(
        "/fault/redirect-loop/x", "http_error", False, 302, r"redirect loop", 1 + HTTP.max_redirects, id="redirect-loop"
    ),
    pytest.param("/fault/html", "not_an_image", False, 200, r"HTML page", 1, id="html"),
    pytest.param("/fault/html-as-jpeg", "not_an_image", False, 200, r"HTML page", 1, id="html-as-jpeg"),
    pytest.param("/fault/empty", "not_an_image", False, 200, r"empty body", 1, id="empty"),
    pytest.param("/fault/truncated.jpg", "truncated", False, 200, r"truncated", 1, id="truncated"),
    pytest.param("/fault/bomb.png", "too_large", False, 200, r"decompression bomb", 1, id="pixel-bomb"),
    pytest.param("/fault/huge", "too_large", False, 200, r"Content-Length 52,428,800 exceeds max_bytes", 1, id="huge"),
    pytest.param("/fault/huge-nolength", "too_large", False, 200, r"body exceeds max_bytes", 1, id="huge-nolength"),
    pytest.param("/fault/gzip-bomb", "too_large", False, 200, r"body exceeds max_bytes", 1, id="gzip-bomb"),
    pytest.param("/fault/animated.gif", "unsupported", False, 200, r"animated GIF with 4 frames", 1, id="animated"),
]


@pytest.mark.parametrize(("path", "status", "retryable", "http_status", "reason", "attempts"), FAILURES)
def test_failure_is_one_row_and_stores_nothing(
    fakeweb: FakeWeb,
    make_fetcher: MakeFetcher,
    store: LocalStorage,
    path: str,
    status: str,
    retryable: bool,
    http_status: int | None,
    reason: str,
    attempts: int,
) -> None:
    """Each fault ends in its own status, quickly: the huge bodies and the bomb are cut off, not read out."""
    result, elapsed = timed_fetch(make_fetcher(), fakeweb.url(path))
    assert_failed(result, store, status, retryable=retryable, reason=reason, http_status=http_status)
    assert fakeweb.hits(path) == attempts
    assert elapsed < 2.5, f"{path} took {elapsed:.2f}s"
    assert 0 < result.elapsed_ms < 2500


def test_thumbnail_is_refused_but_kept_for_its_links(fakeweb: FakeWeb, make_fetcher: MakeFetcher, store: LocalStorage):
    """An image below min_side is not for training (too_small), but its bytes are stored under their sha256 so
    curation can name the picture it is a thumbnail of."""
    result = make_fetcher().fetch(fakeweb.url("/fault/small.jpg"))
    assert (result.status, result.retryable, result.http_status) == ("too_small", False, 200)
    assert re.search(r"16x16 is below min_side=64", result.reason)
    assert (result.width, result.height, result.format) == (16, 16, "JPEG")
    assert result.storage_key == content_key(result.sha256, "jpg")
    assert hashlib.sha256(store.get_bytes(result.storage_key)).hexdigest() == result.sha256


@pytest.mark.parametrize("respect_robots", [True, False], ids=["robots", "no-robots"])
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("http://127.0.0.1:{port}/img/a.jpg", r"connection refused", id="refused"),
        pytest.param("http://nohost.invalid/img/a.jpg", r"DNS failure", id="dns"),
    ],
)
def test_unreachable_host_is_retryable(
    make_fetcher: MakeFetcher, store: LocalStorage, url: str, reason: str, respect_robots: bool
) -> None:
    """No server to answer (whether robots.txt or the image is asked first) is transient and says why."""
    result = make_fetcher(respect_robots=respect_robots).fetch(url.format(port=free_port()))
    assert_failed(result, store, "http_error", retryable=True, reason=reason, http_status=None)


OK_IMAGES = [
    # path, mode, format, ext, requests the server sees for the path
    pytest.param("/img/plain", "RGB", "JPEG", "jpg", 1, id="jpeg"),
    pytest.param("/img/plain.png", "RGB", "PNG", "png", 1, id="png"),
    pytest.param("/fault/cmyk.jpg", "CMYK", "JPEG", "jpg", 1, id="cmyk"),
    pytest.param("/fault/palette.png", "P", "PNG", "png", 1, id="palette"),
    pytest.param("/fault/gray.jpg", "L", "JPEG", "jpg", 1, id="gray"),
    pytest.param("/fault/rgba.png", "RGBA", "PNG", "png", 1, id="rgba"),
    pytest.param("/fault/mpo.jpg", "RGB", "JPEG", "jpg", 1, id="camera-jpeg-with-mpf"),
    pytest.param("/fault/flaky/2/k", "RGB", "JPEG", "jpg", 3, id="500-500-200"),
    pytest.param("/fault/redirect/k", "RGB", "JPEG", "jpg", 1, id="redirect"),
]


@pytest.mark.parametrize(("path", "mode", "fmt", "ext", "attempts"), OK_IMAGES)
def test_ok_image_is_stored_at_its_content_key(
    fakeweb: FakeWeb,
    make_fetcher: MakeFetcher,
    store: LocalStorage,
    path: str,
    mode: str,
    fmt: str,
    ext: str,
    attempts: int,
) -> None:
    """Unusual but valid images are kept with their mode recorded; transient 500s are retried away."""
    result = make_fetcher().fetch(fakeweb.url(path))
    assert_stored(result, store, ext)
    assert (result.mode, result.format, result.width, result.height) == (mode, fmt, 256, 256)
    assert result.http_status == 200 and result.content_type.startswith("image/")
    assert [p.relative_to(store.root).as_posix() for p in files_under(store.root)] == [result.storage_key]
    assert fakeweb.hits(path) == attempts


def test_429_with_short_retry_after_is_honoured(
    fakeweb: FakeWeb, make_fetcher: MakeFetcher, store: LocalStorage
) -> None:
    """The retry waits the full Retry-After (measured on both sides) and then succeeds."""
    path = "/fault/ratelimit/1/k"
    result, elapsed = timed_fetch(make_fetcher(), fakeweb.url(path))
    assert_stored(result, store, "jpg")
    first, second = image_times(fakeweb, path)
    assert second - first >= 1.0 and elapsed >= 1.0
    assert elapsed < 4.0


def test_drip_is_cut_off_at_download_timeout(fakeweb: FakeWeb, make_fetcher: MakeFetcher, store: LocalStorage) -> None:
    """Bytes keep coming (no read ever times out) but the whole download has a deadline.

    The server would take 5 s; the fetcher stops within one read timeout of ``download_timeout``.
    """
    result, elapsed = timed_fetch(make_fetcher(download_timeout=1.0), fakeweb.url("/fault/drip/5/k"))
    assert_failed(result, store, "timeout", retryable=True, reason=r"download_timeout=1s", http_status=200)
    assert 1.0 <= elapsed < 1.0 + HTTP.read_timeout + 1.5


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("ftp://example.invalid/a.jpg", r"unsupported URL scheme 'ftp': only http and https", id="ftp"),
        pytest.param("javascript:alert(1)", r"unsupported URL scheme 'javascript'", id="javascript"),
        pytest.param("a.jpg", r"not a URL \(no scheme\); local files go in a local_dir source", id="relative"),
        pytest.param("/etc/hosts", r"not a URL \(no scheme\)", id="plain-path"),
        pytest.param("http:///a.jpg", r"invalid URL.*no host", id="no-host"),
        pytest.param("http://[::1/a.jpg", r"invalid URL", id="broken-ipv6"),
        pytest.param("http://127.0.0.1:99999/a.jpg", r"invalid URL", id="bad-port"),
        pytest.param("http://exa mple.invalid/a.jpg", r"invalid URL", id="space-in-host"),
    ],
)
def test_malformed_url_is_a_permanent_error(
    make_fetcher: MakeFetcher, store: LocalStorage, url: str, reason: str
) -> None:
    """A URL that can never work is not retried on the next run, and is not blamed on robots.txt."""
    result = make_fetcher().fetch(url)
    assert_failed(result, store, "invalid_url", retryable=False, reason=reason)
    assert "robots" not in result.reason


# --------------------------------------------------------------------------------------------------
# robots.txt and X-Robots-Tag
# --------------------------------------------------------------------------------------------------


def test_robots_disallow_means_never_requested(
    fakeweb: FakeWeb, make_fetcher: MakeFetcher, store: LocalStorage
) -> None:
    """A disallowed URL is decided from robots.txt alone; the server never sees it, other paths still work."""
    fakeweb.robots_txt = "User-agent: *\nDisallow: /fault/\n"
    fetcher = make_fetcher()
    result = fetcher.fetch(fakeweb.url("/fault/cmyk.jpg"))
    assert_failed(result, store, "robots_disallowed", retryable=False, reason=r"robots\.txt disallows /fault/cmyk.jpg")
    assert_stored(fetcher.fetch(fakeweb.url("/img/allowed")), store, "jpg")
    assert fakeweb.hits("/fault/") == 0
    assert fakeweb.hits("/robots.txt") == 1


def test_robots_apply_to_redirect_targets(fakeweb: FakeWeb, make_fetcher: MakeFetcher, store: LocalStorage) -> None:
    """An allowed URL that redirects into a disallowed path must not fetch that path."""
    fakeweb.robots_txt = "User-agent: *\nDisallow: /img/\n"
    result = make_fetcher().fetch(fakeweb.url("/fault/redirect/secret"))
    assert_failed(result, store, "robots_disallowed", retryable=False, reason=r"disallows /img/secret")
    assert fakeweb.hits("/fault/redirect/") == 1 and fakeweb.hits("/img/") == 0


# Realistic robots.txt files; Python's urllib.robotparser gets half of them wrong (RFC 9309, 2.2.1-2.2.3).
ROBOTS_CASES = [
    pytest.param("User-agent: *\nDisallow: /img/\nAllow: /img/pub\n", "/img/pub1", True, id="longest-match-allows"),
    pytest.param("User-agent: *\nAllow: /img/pub\nDisallow: /img/\n", "/img/priv", False, id="shorter-disallow"),
    pytest.param("User-agent: *\nDisallow: /*.png$\n", "/img/a.png", False, id="wildcard-and-anchor"),
    pytest.param("User-agent: *\nDisallow: /*.png$\n", "/img/a", True, id="anchor-does-not-match"),
    pytest.param("User-agent: *\nDisallow: /img/*/x\n", "/img/a/b/x", False, id="wildcard-spans-segments"),
    pytest.param("User-agent: *\nDisallow: /img\nAllow: /img$\n", "/img/x", False, id="allow-anchored"),
    pytest.param("User-agent: GAN-Pipelines\nDisallow: /img/\n", "/img/a", False, id="agent-case-insensitive"),
    # Protego matches agent names by substring: stricter than the RFC's exact token, never less polite.
    pytest.param("User-agent: gan\nDisallow: /\n", "/img/a", False, id="agent-substring-is-obeyed"),
    pytest.param("User-agent: otherbot\nDisallow: /\n", "/img/a", True, id="other-agent"),
    pytest.param(
        "User-agent: *\nDisallow: /\n\nUser-agent: gan-pipelines\nAllow: /\n", "/img/a", True, id="own-group-beats-star"
    ),
    pytest.param(
        "User-agent: gan-pipelines\nDisallow: /x/\n\nUser-agent: gan-pipelines\nDisallow: /img/\n",
        "/img/a",
        False,
        id="groups-for-one-agent-combine",
    ),
    pytest.param(
        "User-agent: otherbot\nUser-agent: gan-pipelines\nDisallow: /img/\n", "/img/a", False, id="multi-agent-group"
    ),
    pytest.param("User-agent: *\nDisallow:\n", "/img/a", True, id="empty-disallow"),
    pytest.param(f"User-agent: *\nDisallow: /{'*a' * 20}*b\n", f"/img/{'a' * 200}", True, id="no-regex-blowup"),
    pytest.param("# comment\nUser-agent: * # all\nDisallow: /img/ # none\n", "/img/a", False, id="comments"),
]


@pytest.mark.parametrize(("robots", "path", "allowed"), ROBOTS_CASES)
def test_robots_rules_follow_rfc9309(
    fakeweb: FakeWeb, make_fetcher: MakeFetcher, store: LocalStorage, robots: str, path: str, allowed: bool
) -> None:
    """Group selection and path matching as the standard says, so a site's rules mean what its author meant."""
    fakeweb.robots_txt = robots
    result = make_fetcher().fetch(fakeweb.url(path))
    assert result.status == ("ok" if allowed else "robots_disallowed"), result
    assert fakeweb.hits(path) == int(allowed)


def test_robots_fetched_once_per_origin_under_concurrency(fakeweb: FakeWeb, make_fetcher: MakeFetcher) -> None:
    """Sixteen threads hit two origins at once; each origin's robots.txt is asked for exactly once."""
    fakeweb.latency = 0.05  # a slow robots.txt makes the threads pile up behind it
    fakeweb.robots_txt = "User-agent: *\nAllow: /\n"
    with FakeWeb(latency=0.05) as other:  # robots.txt 404 there: allowed
        urls = [fw.url(f"/img/once{i}") for i in range(16) for fw in (fakeweb, other)]
        results = fetch_all(make_fetcher(per_host_concurrency=16), urls, threads=16)
        assert [r.status for r in results] == ["ok"] * len(urls)
        assert (fakeweb.hits("/robots.txt"), other.hits("/robots.txt")) == (1, 1)


@pytest.mark.parametrize(
    ("code", "allowed"),
    [(404, True), (410, True), (500, False), (503, False), (429, False)],
)
def test_robots_txt_status(
    fakeweb: FakeWeb, make_fetcher: MakeFetcher, store: LocalStorage, code: int, allowed: bool
) -> None:
    """RFC 9309: a 4xx robots.txt means no rules; 5xx means assume disallowed, for now (retryable).

    429 is "slow down", not "there are no rules": crawling everything after it would be rude.
    """
    fakeweb.serve("/robots.txt", "User-agent: *\nDisallow: /\n", "text/plain", status=code)
    result = make_fetcher().fetch(fakeweb.url("/img/r"))
    if allowed:
        assert_stored(result, store, "jpg")
    else:
        assert_failed(result, store, "http_error", retryable=True, reason=rf"robots\.txt.*{code}", http_status=code)
    assert fakeweb.hits("/img/") == int(allowed)


def test_respect_robots_false_never_asks(fakeweb: FakeWeb, make_fetcher: MakeFetcher, store: LocalStorage) -> None:
    """With respect_robots=False robots.txt is not even fetched, so its rules cannot apply."""
    fakeweb.robots_txt = "User-agent: *\nDisallow: /\n"
    assert_stored(make_fetcher(respect_robots=False).fetch(fakeweb.url("/img/x")), store, "jpg")
    assert fakeweb.hits("/robots.txt") == 0


def test_crawl_delay_spaces_requests(fakeweb: FakeWeb, make_fetcher: MakeFetcher) -> None:
    """Crawl-delay (fractional, as some sites write it) spaces requests to the host across all threads."""
    delay, n = 0.3, 5
    fakeweb.robots_txt = f"User-agent: *\nCrawl-delay: {delay}\n"
    results = fetch_all(make_fetcher(), [fakeweb.url(f"/img/cd{i}") for i in range(n)], threads=n)
    assert [r.status for r in results] == ["ok"] * n
    times = image_times(fakeweb)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[-1] - times[0] >= (n - 1) * delay - 0.1, gaps
    assert min(gaps) >= delay - 0.1, gaps


def test_user_agent_reaches_server(fakeweb: FakeWeb, make_fetcher: MakeFetcher) -> None:
    """Sites identify (and block or allow) us by User-Agent: robots.txt, the image and its redirect all carry it."""
    fakeweb.robots_txt = "User-agent: *\nAllow: /\n"
    assert make_fetcher().fetch(fakeweb.url("/fault/redirect/ua")).status == "ok"
    assert [r.path for r in fakeweb.requests] == ["/robots.txt", "/fault/redirect/ua", "/img/ua"]
    assert {r.headers.get("User-Agent") for r in fakeweb.requests} == {UA}


@pytest.mark.parametrize(
    ("header", "respect", "opted_out"),
    [
        ("noai", True, True),
        ("noimageai", True, True),
        ("noindex, noimageai", True, True),
        ("gan-pipelines: noai", True, True),
        ("otherbot: noai", True, False),
        ("noindex", True, False),
        ("noai", False, False),
    ],
)
def test_x_robots_tag(
    fakeweb: FakeWeb, make_fetcher: MakeFetcher, store: LocalStorage, header: str, respect: bool, opted_out: bool
) -> None:
    """An AI opt-out for us (or for all bots) is honoured; the header is recorded in every case."""
    result = make_fetcher(respect_x_robots_tag=respect).fetch(fakeweb.url(f"/fault/xrobots/{quote(header, '')}/k"))
    assert result.x_robots_tag == header
    if opted_out:
        assert_failed(
            result, store, "opted_out", retryable=False, reason=r"^X-Robots-Tag: (noai|noimageai)$", http_status=200
        )
    else:
        assert_stored(result, store, "jpg")


# --------------------------------------------------------------------------------------------------
# Per-host limits, measured on the server
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("concurrency", "threads", "floor"), [(1, 6, 1), (3, 12, 2), (8, 16, 6)])
def test_per_host_concurrency(
    fakeweb: FakeWeb, make_fetcher: MakeFetcher, concurrency: int, threads: int, floor: int
) -> None:
    """The server never handles more than ``per_host_concurrency`` of our requests at once, and does handle several.

    Each request occupies the server for ``latency`` after it arrives, and the fetcher holds its slot
    at least that long, so overlapping server-side intervals can only come from parallel slots.
    """
    fakeweb.latency = 0.2
    urls = [fakeweb.url(f"/img/c{i}") for i in range(max(4, 3 * concurrency))]
    results = fetch_all(make_fetcher(per_host_concurrency=concurrency), urls, threads=threads)
    assert [r.status for r in results] == ["ok"] * len(urls)
    assert floor <= peak_overlap(image_times(fakeweb), fakeweb.latency) <= concurrency


def test_per_host_rate(fakeweb: FakeWeb, make_fetcher: MakeFetcher) -> None:
    """per_host_rate spaces request starts even when eight threads are free to go at once."""
    rate, n = 20.0, 10
    fetcher = make_fetcher(per_host_rate=rate, per_host_concurrency=8)
    results = fetch_all(fetcher, [fakeweb.url(f"/img/rate{i}") for i in range(n)], threads=8)
    assert [r.status for r in results] == ["ok"] * n
    times = image_times(fakeweb)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[-1] - times[0] >= (n - 1) / rate - 0.1, gaps
    assert statistics.median(gaps) >= 0.7 / rate, gaps


# --------------------------------------------------------------------------------------------------
# Storage: content addressing, file:// URLs, S3
# --------------------------------------------------------------------------------------------------


def test_same_bytes_from_two_urls_stored_once(
    fakeweb: FakeWeb, make_fetcher: MakeFetcher, store: LocalStorage, tmp_path: Path
) -> None:
    """Content addressing: one object per distinct content, whatever the number of URLs serving it."""
    fetcher = make_fetcher()
    a, b = fetcher.fetch(fakeweb.url("/img/dup")), fetcher.fetch(fakeweb.url("/img/dup.jpg"))
    assert_stored(a, store, "jpg")
    assert_stored(b, store, "jpg")
    assert a.sha256 == b.sha256 and list(store.list("raw/images")) == [a.storage_key]
    # Hashes the caller already holds elsewhere are recognised but not written again.
    elsewhere = LocalStorage(tmp_path / "elsewhere", fsync=False)
    c = make_fetcher(elsewhere).fetch(fakeweb.url("/img/dup"), known_hashes={a.sha256})
    assert (c.status, c.storage_key) == ("ok", a.storage_key)
    assert files_under(elsewhere.root) == []


def test_file_url(make_fetcher: MakeFetcher, store: LocalStorage, tmp_path: Path) -> None:
    """Local files (path with a space and non-ASCII, percent-encoded in the URL) go through the same checks."""
    src = tmp_path / "in put" / "bild ä.png"
    src.parent.mkdir()
    src.write_bytes(make_image_bytes("file-url", fmt="PNG"))
    result = make_fetcher().fetch(src.as_uri(), allow_local=True)
    assert assert_stored(result, store, "png") == src.read_bytes()


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        ("missing", "http_error", r"^cannot read /.*/missing: No such file"),
        ("directory", "refused", r"^/.*/directory is a directory, not a regular file$"),
        ("big", "too_large", rf"^file of {MAX_BYTES + 1:,} bytes exceeds max_bytes={MAX_BYTES:,}$"),
    ],
)
def test_file_url_errors(
    make_fetcher: MakeFetcher, store: LocalStorage, tmp_path: Path, kind: str, status: str, reason: str
) -> None:
    """A local file that is absent or unusable will stay so: a clear error, not retried."""
    path = tmp_path / kind
    if kind == "directory":
        path.mkdir()
    elif kind == "big":
        path.write_bytes(b"\xff\xd8" + b"\0" * (MAX_BYTES - 1))
    result = make_fetcher().fetch(path.as_uri(), allow_local=True)
    assert_failed(result, store, status, retryable=False, reason=reason)


@pytest.mark.parametrize(
    ("path", "status"), [("/img/s3", "ok"), ("/fault/truncated.jpg", "truncated")], ids=["ok", "truncated"]
)
def test_fetch_into_s3(fakeweb: FakeWeb, make_fetcher: MakeFetcher, moto_s3: str, path: str, status: str) -> None:
    """Same behaviour on S3 (moto_server over HTTP): only an ok image becomes an object."""
    s3 = S3Storage("fetch-" + os.urandom(4).hex(), "pre", endpoint_url=moto_s3)
    s3.client.create_bucket(Bucket=s3.bucket)
    result = make_fetcher(s3).fetch(fakeweb.url(path))
    assert result.status == status, result
    if status == "ok":
        assert_stored(result, s3, "jpg")
        assert list(s3.list("")) == [result.storage_key]
    else:
        assert list(s3.list("")) == []


# --------------------------------------------------------------------------------------------------
# Corrupt images never escape as exceptions
# --------------------------------------------------------------------------------------------------


def test_corrupt_file_is_a_row_not_an_exception(make_fetcher: MakeFetcher, store: LocalStorage, tmp_path: Path) -> None:
    """An animated GIF cut after its first frame makes Pillow raise IndexError; one bad URL must not kill a run."""
    path = tmp_path / "cut.gif"
    path.write_bytes(animated_gif()[: len(animated_gif()) // 2])
    result = make_fetcher(min_side=8).fetch(path.as_uri(), allow_local=True)
    assert result.status in {"truncated", "not_an_image"} and "GIF" in result.reason, result
    assert not result.retryable and files_under(store.root) == []


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF metadata warnings
@pytest.mark.parametrize("fmt", ["GIF-animated", "PNG", "JPEG", "TIFF", "WEBP"])
def test_validate_raises_only_image_rejected(fmt: str) -> None:
    """Sweep truncation points through real encodings: every outcome is ok or an ImageRejected."""
    data = animated_gif() if fmt == "GIF-animated" else make_image_bytes("sweep", (64, 64), fmt=fmt)
    for cut in range(0, len(data), 7):
        with contextlib.suppress(ImageRejected):
            validate_image(data[:cut], min_side=8)
