"""The fake internet itself: every route answers in the real APIs' formats and every fault misbehaves as promised.

If these fail, scraper tests that use ``fakeweb`` would fail for the wrong reason, so they run first.
"""

from __future__ import annotations

import http.client
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import numpy as np
import pytest
import requests
from PIL import Image

from tests.fakeweb import FakeWeb, animated_gif, bomb_png, free_port, make_image_bytes, truncated_jpeg

MB = 2**20


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _ahash(data: bytes) -> int:
    """8x8 average hash: enough to show two generated images are perceptually different."""
    px = np.asarray(_open(data).convert("L").resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float64)
    return int("".join("1" if v else "0" for v in (px > px.mean()).ravel()), 2)


def _get(fw: FakeWeb, path: str, **kw) -> requests.Response:
    kw.setdefault("timeout", 10)
    return requests.get(fw.url(path), **kw)


def _assert_image(r: requests.Response, ctype: str = "image/jpeg", size: tuple[int, int] | None = None) -> Image.Image:
    assert r.status_code == 200, r.text[:200]
    assert r.headers["Content-Type"] == ctype
    assert int(r.headers["Content-Length"]) == len(r.content)
    img = _open(r.content)
    if size is not None:
        assert img.size == size
    return img


# -- module-level helpers ----------------------------------------------------------------------------


def test_make_image_bytes_deterministic_and_distinct():
    a, b = make_image_bytes("a"), make_image_bytes("b")
    assert a == make_image_bytes("a") and a != b
    assert bin(_ahash(a) ^ _ahash(b)).count("1") >= 10
    assert _open(make_image_bytes("a", (100, 60), "PNG", "RGBA")).mode == "RGBA"
    assert _open(make_image_bytes("a", (100, 60))).size == (100, 60)


def test_fault_helpers(monkeypatch):
    with pytest.raises(OSError):
        _open(truncated_jpeg())
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb_png(60000, 60000)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert Image.open(io.BytesIO(bomb_png(60000, 60000))).size == (60000, 60000)
    assert len(bomb_png()) < 200
    assert Image.open(io.BytesIO(animated_gif())).n_frames >= 3
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{free_port()}/", timeout=2)


# -- lifecycle, logging, knobs ----------------------------------------------------------------------


def test_lifecycle_keepalive_and_log():
    fw = FakeWeb().start()
    port = fw.port
    assert fw.base_url == f"http://127.0.0.1:{fw.port}" and fw.url("/x") == fw.base_url + "/x"
    conn = http.client.HTTPConnection("127.0.0.1", fw.port, timeout=5)
    for _ in range(3):  # one TCP connection, three requests: keep-alive works
        conn.request("GET", "/img/k?x=1", headers={"User-Agent": "ua-test"})
        resp = conn.getresponse()
        assert resp.status == 200 and len(resp.read()) == int(resp.getheader("Content-Length"))
    conn.request("HEAD", "/img/k")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) > 0 and resp.read() == b""
    assert fw.hits("/img/k") == 4 and fw.hits("/img/k?x=1") == 3 and fw.hits("/nope") == 0
    rec = fw.requests[0]
    assert (rec.method, rec.path, rec.headers["User-Agent"]) == ("GET", "/img/k?x=1", "ua-test")
    fw.stop()  # also cuts the still-open keep-alive connection
    conn.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/img/k", timeout=2)
    with pytest.raises(RuntimeError):
        _ = fw.base_url


def test_latency_is_mutable(fakeweb):
    t = time.monotonic()
    _get(fakeweb, "/robots.txt")
    assert time.monotonic() - t < 0.15
    fakeweb.latency = 0.3
    t = time.monotonic()
    _get(fakeweb, "/robots.txt")
    assert time.monotonic() - t >= 0.3


def test_robots_txt_is_mutable(fakeweb):
    assert _get(fakeweb, "/robots.txt").status_code == 404
    fakeweb.robots_txt = "User-agent: *\nDisallow: /img/private\n"
    r = _get(fakeweb, "/robots.txt")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert r.text == fakeweb.robots_txt
    with FakeWeb(robots_txt="User-agent: *\nDisallow: /\n") as fw:
        assert "Disallow: /" in _get(fw, "/robots.txt").text


def test_fail_rate_applies_to_images_only_and_is_seeded():
    def statuses(seed: int) -> list[int]:
        with FakeWeb(fail_rate=0.5, seed=seed) as fw:
            assert _get(fw, "/dogceo/api/breeds/list/all").status_code == 200
            assert _get(fw, "/picsum/v2/list").status_code == 200
            return [_get(fw, f"/img/{i}").status_code for i in range(40)]

    first = statuses(1)
    assert set(first) == {200, 500} and 8 < first.count(500) < 32
    assert statuses(1) == first  # same seed, same sequence
    with FakeWeb(fail_rate=1.0) as fw:
        assert {_get(fw, p).status_code for p in ("/tiles/3/1/1.jpg", "/dogimg/breeds/pug/n00000000.jpg")} == {500}
        fw.fail_rate = 0.0
        assert _get(fw, "/tiles/3/1/1.jpg").status_code == 200


def test_concurrent_keepalive_clients():
    """64 keep-alive clients, 256 requests, 50 ms latency: the benchmark's load, well within a few seconds."""
    local = threading.local()

    def fetch(i: int) -> int:
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        r = s.get(fw.url(f"/dogimg/breeds/pug/n{i % 100:08d}.jpg"), timeout=10)
        return r.status_code if len(r.content) == int(r.headers["Content-Length"]) else -1

    with FakeWeb(latency=0.05) as fw, ThreadPoolExecutor(64) as pool:
        t = time.monotonic()
        codes = list(pool.map(fetch, range(256)))
        elapsed = time.monotonic() - t
    assert codes == [200] * 256
    assert elapsed < 4.0, f"256 requests took {elapsed:.2f}s"


# -- Dog CEO ----------------------------------------------------------------------------------------


def test_dogceo(fakeweb):
    r = _get(fakeweb, "/dogceo/api/breeds/list/all")
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {
        "message": {"hound": ["afghan", "basset"], "pug": [], "shiba": [], "terrier": ["border"]},
        "status": "success",
    }
    pug = _get(fakeweb, "/dogceo/api/breed/pug/images").json()
    assert pug["status"] == "success" and len(pug["message"]) == 20
    assert pug["message"][3] == f"{fakeweb.base_url}/dogimg/breeds/pug/n00000003.jpg"
    afghan = _get(fakeweb, "/dogceo/api/breed/hound/afghan/images").json()["message"]
    basset = _get(fakeweb, "/dogceo/api/breed/hound/basset/images").json()["message"]
    assert afghan[0].endswith("/dogimg/breeds/hound-afghan/n00000000.jpg")
    assert _get(fakeweb, "/dogceo/api/breed/hound/images").json()["message"] == afghan + basset
    bad = _get(fakeweb, "/dogceo/api/breed/unicorn/images")
    assert bad.status_code == 404
    assert bad.json() == {"status": "error", "message": "Breed not found (master breed does not exist)", "code": 404}
    assert _get(fakeweb, "/dogceo/api/breed/hound/nope/images").status_code == 404
    img1 = _assert_image(requests.get(afghan[0], timeout=5), size=(256, 256))
    assert img1.mode == "RGB"
    assert requests.get(afghan[0], timeout=5).content != requests.get(basset[0], timeout=5).content


def test_dogceo_custom_breeds():
    with FakeWeb(dog_breeds={"corgi": ["cardigan"]}, images_per_breed=3, image_size=64) as fw:
        assert _get(fw, "/dogceo/api/breeds/list/all").json()["message"] == {"corgi": ["cardigan"]}
        urls = _get(fw, "/dogceo/api/breed/corgi/images").json()["message"]
        assert len(urls) == 3
        _assert_image(requests.get(urls[2], timeout=5), size=(64, 64))


# -- Picsum -----------------------------------------------------------------------------------------


def test_picsum_list(fakeweb):
    page1 = _get(fakeweb, "/picsum/v2/list").json()
    assert len(page1) == 30 and page1[0] == {
        "id": "0",
        "author": "Author 0",
        "width": 5000,
        "height": 3333,
        "url": "https://unsplash.com/photos/x0",
        "download_url": f"{fakeweb.base_url}/picsum/id/0/5000/3333",
    }
    assert any(it["height"] > it["width"] for it in page1)
    assert len(_get(fakeweb, "/picsum/v2/list", params={"limit": 500}).json()) == 60  # capped at 100
    assert [it["id"] for it in _get(fakeweb, "/picsum/v2/list?page=3&limit=25").json()] == [
        str(i) for i in range(50, 60)
    ]
    assert _get(fakeweb, "/picsum/v2/list?page=4&limit=20").json() == []


def test_picsum_images(fakeweb):
    _assert_image(_get(fakeweb, "/picsum/id/1/300/200"), size=(300, 200))
    _assert_image(_get(fakeweb, "/picsum/id/2/120/180.jpg"), size=(120, 180))
    _assert_image(_get(fakeweb, "/picsum/id/0/5000/3333"), size=(2048, 1365))  # capped, aspect kept
    assert _get(fakeweb, "/picsum/id/999/10/10").status_code == 404


# -- Openverse --------------------------------------------------------------------------------------


def test_openverse_search(fakeweb):
    pages = [_get(fakeweb, "/openverse/v1/images/", params={"q": "cat", "page": p}) for p in (1, 2, 3)]
    assert all(r.status_code == 200 for r in pages)
    data = [r.json() for r in pages]
    assert {k: data[0][k] for k in ("result_count", "page_count", "page_size", "page")} == {
        "result_count": 45,
        "page_count": 3,
        "page_size": 20,
        "page": 1,
    }
    results = [res for d in data for res in d["results"]]
    assert len(results) == 45 and len({r["id"] for r in results}) == 45
    r0 = results[0]
    keys = "id title url creator creator_url license license_version license_url provider source "
    keys += "foreign_landing_url attribution width height filetype tags thumbnail"
    assert set(keys.split()) <= set(r0)
    assert [r["license"] for r in results[:5]] == ["by", "by-sa", "cc0", "pdm", "by"]
    assert r0["license_version"] == "2.0" and r0["filetype"] == "jpg" and r0["tags"] == [{"name": "cat"}]
    assert r0["url"] == f"{fakeweb.base_url}/ovimg/cat/0.jpg"
    again = _get(fakeweb, "/openverse/v1/images/?q=cat&page=1").json()["results"][0]["id"]
    assert again == r0["id"]  # deterministic ids
    other = _get(fakeweb, "/openverse/v1/images/?q=office&page=1").json()["results"][0]
    assert other["id"] != r0["id"]
    _assert_image(requests.get(r0["url"], timeout=5), size=(r0["width"], r0["height"]))
    _assert_image(requests.get(r0["thumbnail"], timeout=5))


def test_openverse_errors(fakeweb):
    r = _get(fakeweb, "/openverse/v1/images/?q=cat&page=4")
    assert r.status_code == 400 and r.json() == {"detail": "Invalid page"}
    r = _get(fakeweb, "/openverse/v1/images/?q=cat&page_size=50")
    assert r.status_code == 401 and "detail" in r.json()
    assert _get(fakeweb, "/openverse/v1/images/?q=cat&page=9&page_size=5").status_code == 200


# -- tiles, /img ------------------------------------------------------------------------------------


def test_tiles(fakeweb):
    land = _assert_image(_get(fakeweb, "/tiles/5/10/12.jpg"), size=(256, 256))
    ocean = _assert_image(_get(fakeweb, "/tiles/5/10/11.jpg"), size=(256, 256))  # (10 + 11) % 7 == 0
    channel_std = [np.asarray(t).reshape(-1, 3).std(axis=0).max() for t in (ocean, land)]
    assert channel_std[0] < 2.0 < channel_std[1]
    assert _get(fakeweb, "/tiles/5/10/12.jpg").content == _get(fakeweb, "/tiles-yx/5/12/10.jpg").content
    d1 = _get(fakeweb, "/tiles-dated/2024-01-01/5/10/12.jpg").content
    assert d1 == _get(fakeweb, "/tiles-dated/2024-01-01/5/10/12.jpg").content
    assert d1 != _get(fakeweb, "/tiles-dated/2024-01-02/5/10/12.jpg").content
    assert _get(fakeweb, "/tiles/2/4/0.jpg").status_code == 404  # outside the zoom's grid


def test_img(fakeweb):
    _assert_image(_get(fakeweb, "/img/foo"), size=(256, 256))
    png = _assert_image(_get(fakeweb, "/img/foo.png"), ctype="image/png")
    assert png.format == "PNG"
    assert _get(fakeweb, "/img/foo").content != _get(fakeweb, "/img/bar").content
    assert _get(fakeweb, "/nowhere").status_code == 404


# -- faults -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "ctype", "check"),
    [
        ("/fault/html", "text/html; charset=utf-8", lambda b: b.lstrip().startswith(b"<!doctype html>")),
        ("/fault/html-as-jpeg", "image/jpeg", lambda b: b"<html>" in b),
        ("/fault/empty", "image/jpeg", lambda b: b == b""),
        ("/fault/truncated.jpg", "image/jpeg", lambda b: b == truncated_jpeg()),
        ("/fault/bomb.png", "image/png", lambda b: b == bomb_png(60000, 60000)),
        ("/fault/cmyk.jpg", "image/jpeg", lambda b: _open(b).mode == "CMYK"),
        ("/fault/gray.jpg", "image/jpeg", lambda b: _open(b).mode == "L"),
        ("/fault/palette.png", "image/png", lambda b: _open(b).mode == "P"),
        ("/fault/rgba.png", "image/png", lambda b: _open(b).mode == "RGBA"),
        ("/fault/animated.gif", "image/gif", lambda b: Image.open(io.BytesIO(b)).n_frames >= 3),
        ("/fault/small.jpg", "image/jpeg", lambda b: _open(b).size == (16, 16)),
        ("/fault/xrobots/noai/k", "image/jpeg", lambda b: _open(b).size == (256, 256)),
    ],
)
def test_static_faults(fakeweb, path, ctype, check):
    r = _get(fakeweb, path)
    assert r.status_code == 200 and r.headers["Content-Type"] == ctype
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert check(r.content)


@pytest.mark.parametrize("code", [403, 404, 410, 500, 503])
def test_fault_status(fakeweb, code):
    r = _get(fakeweb, f"/fault/status/{code}")
    assert r.status_code == code and r.text == f"status {code}\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("noai", "noai"), ("noimageai", "noimageai"), ("googlebot%3A%20noindex", "googlebot: noindex")],
)
def test_fault_xrobots(fakeweb, value, expected):
    assert _get(fakeweb, f"/fault/xrobots/{value}/k").headers["X-Robots-Tag"] == expected


def test_fault_flaky_and_ratelimit(fakeweb):
    assert [_get(fakeweb, "/fault/flaky/2/a").status_code for _ in range(4)] == [500, 500, 200, 200]
    assert _get(fakeweb, "/fault/flaky/2/b").status_code == 500  # counters are per key
    first = _get(fakeweb, "/fault/ratelimit/3/a")
    assert first.status_code == 429 and first.headers["Retry-After"] == "3"
    _assert_image(_get(fakeweb, "/fault/ratelimit/3/a"))


def test_fault_redirects(fakeweb):
    with pytest.raises(requests.TooManyRedirects):
        _get(fakeweb, "/fault/redirect-loop/a")
    r = _get(fakeweb, "/fault/redirect/abc")
    assert r.history[0].status_code == 302 and r.url == fakeweb.url("/img/abc")
    assert r.content == _get(fakeweb, "/img/abc").content


def test_fault_slowbody(fakeweb):
    t = time.monotonic()
    _assert_image(_get(fakeweb, "/fault/slowbody/0.5/a"))
    assert time.monotonic() - t >= 0.5
    with pytest.raises(requests.RequestException):  # the read timeout fires mid-body
        _get(fakeweb, "/fault/slowbody/1.0/b", timeout=(2, 0.3)).content  # noqa: B018


def test_fault_drip(fakeweb):
    """Each gap stays under a per-read timeout while the whole body takes longer than a total deadline."""
    t = time.monotonic()
    with requests.get(fakeweb.url("/fault/drip/1.5/a"), stream=True, timeout=(2, 1.0)) as r:
        assert int(r.headers["Content-Length"]) > 0
        body, gaps, last = b"", [], time.monotonic()
        for chunk in r.iter_content(100):
            now = time.monotonic()
            gaps.append(now - last)
            last, body = now, body + chunk
    assert time.monotonic() - t >= 1.4 and max(gaps) < 1.0
    assert _open(body).size == (256, 256)


@pytest.mark.parametrize("path", ["/fault/huge", "/fault/huge-nolength"])
def test_fault_huge(fakeweb, path):
    with requests.get(fakeweb.url(path), stream=True, timeout=10) as r:
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
        if path.endswith("nolength"):
            assert "Content-Length" not in r.headers and r.headers["Connection"] == "close"
        else:
            assert int(r.headers["Content-Length"]) == 50 * MB
        total = sum(len(c) for c in r.iter_content(MB))
    assert total == 50 * MB
    _assert_image(_get(fakeweb, "/img/after-huge"))  # the server is still fine


def test_fault_huge_client_hangs_up(fakeweb):
    with requests.get(fakeweb.url("/fault/huge"), stream=True, timeout=10) as r:
        assert len(next(r.iter_content(MB))) > 0
    _assert_image(_get(fakeweb, "/img/after-hangup"))


def test_fault_drop(fakeweb):
    with pytest.raises(requests.ConnectionError):
        _get(fakeweb, "/fault/drop")
    _assert_image(_get(fakeweb, "/img/after-drop"))


# -- S3 ---------------------------------------------------------------------------------------------


def test_moto_s3(moto_s3):
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    s3.create_bucket(Bucket="fakeweb-check")
    s3.put_object(Bucket="fakeweb-check", Key="a/b.txt", Body=b"hello")
    assert s3.get_object(Bucket="fakeweb-check", Key="a/b.txt")["Body"].read() == b"hello"
