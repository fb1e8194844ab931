"""The two changes that made the fetcher faster keep its behaviour (benchmarks/README.md, fetch section).

- ``validate_image`` decodes JPEGs at 1/8 scale (DCT scaling): the verdict, size, mode and format must
  be those of a full decode for whole, truncated, corrupted, progressive, CMYK, greyscale, MPO and tiny
  JPEGs, on generated images and on the real photos of ../shared/fixtures when present.
- Downloads go through :class:`StreamGet` instead of ``Session.get``: the same response for the same
  request, through the same adapter (retries, network policy), without cookies, environment read once.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from pipelines.httpclient import HttpSettings, make_session
from pipelines.streamget import StreamGet
from pipelines.validate import ImageInfo, ImageRejected, validate_image
from tests.fakeweb import FakeWeb, make_image_bytes, mpo_jpeg, truncated_jpeg

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def _full_decode_verdict(data: bytes) -> tuple[str, ImageInfo | None]:
    """``validate_image`` with draft mode disabled: the full-scale decode the 1/8 decode must agree with."""
    original_open = Image.open

    def open_without_draft(fp: io.BytesIO) -> Image.Image:
        img = original_open(fp)
        img.draft = lambda *_: None  # type: ignore[method-assign]
        return img

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, "open", open_without_draft)
        return _verdict(data)


def _verdict(data: bytes) -> tuple[str, ImageInfo | None]:
    try:
        return "ok", validate_image(data, min_side=8)
    except ImageRejected as e:
        return e.status, None


def _variants(jpeg: bytes, rng: random.Random) -> Iterator[bytes]:
    """The JPEG, cut at random points, with random bytes overwritten, and re-encoded progressive."""
    yield jpeg
    for _ in range(3):
        yield jpeg[: rng.randrange(len(jpeg) // 10, len(jpeg) - 2)]
    for n in (1, 5, 50):
        broken = bytearray(jpeg)
        for _ in range(n):
            broken[rng.randrange(len(broken) // 5, len(broken))] = rng.randrange(256)
        yield bytes(broken)
    with Image.open(io.BytesIO(jpeg)) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", progressive=True, quality=80)
    yield buf.getvalue()
    yield buf.getvalue()[: len(buf.getvalue()) * 2 // 3]


def _assert_same_verdicts(jpegs: list[bytes]) -> None:
    rng = random.Random(0)
    statuses = set()
    for jpeg in jpegs:
        for data in _variants(jpeg, rng):
            expected = _full_decode_verdict(data)
            assert _verdict(data) == expected
            statuses.add(expected[0])
    assert {"ok", "truncated"} <= statuses  # both outcomes were exercised


def test_draft_decoding_gives_the_verdicts_of_a_full_decode() -> None:
    jpegs = [make_image_bytes(f"speed/{i}", (97 + 61 * i, 300 - 40 * i)) for i in range(5)]
    jpegs += [make_image_bytes("speed/cmyk", (200, 150), "JPEG", "CMYK")]
    jpegs += [make_image_bytes("speed/grey", (150, 200), "JPEG", "L"), make_image_bytes("speed/tiny", (9, 12))]
    _assert_same_verdicts(jpegs)
    for data in (truncated_jpeg(), mpo_jpeg()):
        assert _verdict(data) == _full_decode_verdict(data)
    assert _verdict(truncated_jpeg())[0] == "truncated"
    ok, info = _verdict(make_image_bytes("speed/size", (333, 211)))
    assert ok == "ok" and info == ImageInfo(width=333, height=211, mode="RGB", format="JPEG")  # the full size


@pytest.mark.realdata
def test_draft_decoding_gives_the_verdicts_of_a_full_decode_on_real_photos() -> None:
    photos = sorted((FIXTURES / "dogs-photos").glob("*.jpg"))[:40] + sorted((FIXTURES / "tiles").glob("*.jpg"))[:10]
    if not photos:
        pytest.skip(f"real-image fixtures not found at {FIXTURES}")
    _assert_same_verdicts([p.read_bytes() for p in photos])


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = make_session(HttpSettings(allowed_networks=("127.0.0.0/8",), retries=0))
    yield s
    s.close()


def test_stream_get_answers_as_session_get(fakeweb: FakeWeb, session: requests.Session) -> None:
    get = StreamGet(session)
    for path in ("/img/speed/a.jpg", "/fault/status/404", "/fault/redirect/speed/b.jpg", "/fault/xrobots/noai/c"):
        with session.get(fakeweb.url(path), stream=True, timeout=5, allow_redirects=False) as want:
            want_body = want.raw.read()
        with get(fakeweb.url(path), (5, 5)) as got:
            assert isinstance(got, requests.Response)
            assert (got.status_code, got.reason, got.url) == (want.status_code, want.reason, want.url)
            assert got.headers == want.headers
            assert session.get_redirect_target(got) == session.get_redirect_target(want)
            assert got.raw.read() == want_body
    sent = [r.headers for r in fakeweb.requests if r.path.startswith("/img/speed/")]
    assert len(sent) == 2 and sent[0]["User-Agent"] == sent[1]["User-Agent"] == session.headers["User-Agent"]


def test_stream_get_keeps_the_network_policy(fakeweb: FakeWeb) -> None:
    """Loopback is allowed for the suite (conftest); with no network allowed the adapter refuses it."""
    strict = make_session(HttpSettings(retries=0, allowed_networks=()))
    with strict, pytest.raises(requests.ConnectionError, match="loopback"):
        StreamGet(strict)(fakeweb.url("/img/speed/x.jpg"), (5, 5))


def test_stream_get_sends_no_cookies_and_reads_the_environment_once_per_origin(
    fakeweb: FakeWeb, session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    session.cookies.set("tracker", "1")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    get = StreamGet(session)
    with get(fakeweb.url("/img/speed/d.jpg"), (5, 5)) as resp:
        assert resp.status_code == 200
    # A proxy that does not exist, set after the origin's first download: later downloads still go direct.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with get(fakeweb.url("/img/speed/e.jpg"), (5, 5)) as resp:
        assert resp.status_code == 200
    assert all("Cookie" not in r.headers for r in fakeweb.requests)
    assert dict(session.cookies) == {"tracker": "1"}
