"""X-Robots-Tag parsing and the per-host rate limiter."""

import threading
import time

import pytest

from pipelines.politeness import HostLimits, RateLimiter, agent_token, opt_out_directives

WANTED = frozenset({"noai", "noimageai"})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, []),
        ("noai", ["noai"]),
        ("noindex, noimageai", ["noimageai"]),
        ("NoAI, NOIMAGEAI", ["noai", "noimageai"]),
        ("otherbot: noai", []),
        ("gan-pipelines: noai", ["noai"]),
        ("googlebot: noindex, gan-pipelines: noimageai", ["noimageai"]),
        ("max-image-preview: large, noai", ["noai"]),
        ("unavailable_after: 25 Jun 2010 15:00:00 PST", []),
    ],
)
def test_opt_out_directives(header, expected):
    assert opt_out_directives(header, "gan-pipelines", WANTED) == expected


def test_agent_token():
    assert agent_token("gan-pipelines/0.1 (+https://example.org)") == "gan-pipelines"
    assert agent_token("MyBot") == "mybot"


def test_rate_limiter_spaces_calls():
    lim = RateLimiter(rate=50)  # 20 ms apart
    t0 = time.monotonic()
    for _ in range(11):
        lim.wait()
    assert time.monotonic() - t0 >= 0.19


def test_host_limits_cap_concurrency():
    limits = HostLimits(concurrency=3, rate=0)
    active, peak, lock = 0, 0, threading.Lock()

    def work(host: str) -> None:
        nonlocal active, peak
        with limits.slot(host):
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.02)
            with lock:
                active -= 1

    threads = [threading.Thread(target=work, args=("h",)) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 3
