"""Every web source against FakeWeb over real sockets: what it lists, in which order, and how it fails.

Sources only list candidates; these tests drive them through a real ``SourceContext`` (the production
session, retries and timeouts) so parsing, paging and error reporting run exactly as in a real run.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from datetime import date
from itertools import islice
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image

from pipelines.httpclient import HttpSettings, make_session
from pipelines.sources.base import Candidate, Source, SourceContext, SourceUnavailable
from pipelines.sources.dog_ceo import DogCeoSource
from pipelines.sources.openverse import OpenverseSource
from pipelines.sources.picsum import PicsumSource
from pipelines.sources.xyz_tiles import XyzTilesSource
from tests.fakeweb import FakeWeb, free_port

DAY = date(2024, 5, 6)
FAST = HttpSettings(connect_timeout=1, read_timeout=1, backoff_factor=0.01, retries=1)
BBOX = (-122.55, 37.60, -122.30, 37.85)


def _ctx(settings: HttpSettings = FAST) -> SourceContext:
    """A context as ingestion builds it: the production session with its retries and timeouts."""
    return SourceContext(make_session(settings), (settings.connect_timeout, settings.read_timeout), DAY)


def _take(source: Source, n: int | None = None, ctx: SourceContext | None = None) -> list[Candidate]:
    """The first ``n`` candidates (all when None), consuming the listing lazily like ingestion does."""
    return list(islice(source.candidates(ctx or _ctx()), n))


def _get(url: str, **params: object) -> requests.Response:
    """A plain GET with its own session, so no connection outlives the test's FakeWeb."""
    with make_session(FAST) as session:
        resp = session.get(url, params=params, timeout=(1, 5))
    assert resp.status_code == 200, f"{url}: HTTP {resp.status_code}"
    return resp


def _get_image(url: str) -> Image.Image:
    """Download and fully decode: a candidate URL is only useful if it serves a real image."""
    img = Image.open(io.BytesIO(_get(url).content))
    img.load()
    return img


def _queries(fakeweb: FakeWeb, path: str) -> list[dict[str, list[str]]]:
    """Query strings of the logged requests to ``path``, in order."""
    return [parse_qs(urlsplit(r.path).query) for r in fakeweb.requests if urlsplit(r.path).path == path]


# -- Dog CEO ----------------------------------------------------------------------------------------


def test_dog_ceo_all_breeds_round_robin_lazily(fakeweb: FakeWeb) -> None:
    """Every partition gets a mix of breeds, and a small partition does not list every breed first."""
    src = DogCeoSource(base_url=fakeweb.url("/dogceo/api"))
    first = _take(src, 3)
    assert [c.meta["breed"] for c in first] == ["hound-afghan", "pug", "shiba"]
    assert fakeweb.hits("/dogceo/api/breeds/list/all") == 1
    assert fakeweb.hits("/dogceo/api/breed/terrier") == 0, "listed a breed the caller never reached"

    every = _take(src)
    assert len(every) == len({c.url for c in every}) == 5 * 20  # hound has two sub-breeds
    assert [c.meta["breed"] for c in every[:4]] == ["hound-afghan", "pug", "shiba", "terrier-border"]
    assert {c.meta["breed"] for c in every} == {"hound-afghan", "hound-basset", "pug", "shiba", "terrier-border"}
    assert all(c.source == "dog_ceo" and f"/breeds/{c.meta['breed']}/" in c.url for c in every)
    assert _get_image(every[0].url).size == (256, 256)


def test_dog_ceo_chosen_breeds_in_either_spelling(fakeweb: FakeWeb) -> None:
    """'hound/afghan' and 'hound-afghan' name the same sub-breed: listed once, each URL yielded once."""
    src = DogCeoSource(name="dogs", base_url=fakeweb.url("/dogceo/api"), breeds=["pug", "hound/afghan", "hound-afghan"])
    cands = _take(src)
    assert [c.meta["breed"] for c in cands[:4]] == ["pug", "hound-afghan", "pug", "hound-afghan"]
    assert len(cands) == len({c.url for c in cands}) == 40
    assert {c.source for c in cands} == {"dogs"}
    assert fakeweb.hits("/dogceo/api/breed/hound/afghan/images") == 1
    assert fakeweb.hits("/dogceo/api/breed/hound/images") == fakeweb.hits("/dogceo/api/breed/shiba") == 0

    overlapping = _take(DogCeoSource(base_url=fakeweb.url("/dogceo/api"), breeds=["hound", "hound/afghan"]))
    assert len(overlapping) == len({c.url for c in overlapping}) == 40  # hound = afghan + basset


@pytest.mark.parametrize("breeds", [["pug", "unicorn"], ["hound/nope"]], ids=["breed", "sub-breed"])
def test_dog_ceo_unknown_breed_is_named(fakeweb: FakeWeb, breeds: list[str]) -> None:
    """A typo in the config fails before any download, saying which breed does not exist."""
    src = DogCeoSource(name="dogs", base_url=fakeweb.url("/dogceo/api"), breeds=breeds)
    with pytest.raises(SourceUnavailable, match=rf"'dogs'.*unknown breeds.*{breeds[-1]}"):
        _take(src, 1)
    assert fakeweb.hits("/dogceo/api/breed/") == 0


@pytest.mark.parametrize(
    ("path", "body", "content_type", "message"),
    [
        ("/dogceo/api/breeds/list/all", "<html><body>Captive portal</body></html>", "text/html", "did not return JSON"),
        ("/dogceo/api/breeds/list/all", '{"message": ["pug"], "status": "success"}', "application/json", "unexpected"),
        ("/dogceo/api/breeds/list/all", '["pug"]', "application/json", "unexpected breeds listing"),
        ("/dogceo/api/breed/hound/images", '{"message": "hound"}', "application/json", "unexpected image list"),
    ],
    ids=["html-page", "message-not-a-dict", "not-an-object", "image-list-not-a-list"],
)
def test_dog_ceo_malformed_listing(fakeweb: FakeWeb, path: str, body: str, content_type: str, message: str) -> None:
    """An API that changed shape or a proxy's HTML page is reported, naming the source, never a TypeError."""
    fakeweb.serve(path, body, content_type)
    src = DogCeoSource(name="dogs", base_url=fakeweb.url("/dogceo/api"))
    with pytest.raises(SourceUnavailable, match=rf"'dogs'.*{message}"):
        _take(src, 1)


# -- Lorem Picsum -----------------------------------------------------------------------------------


def test_picsum_pages_to_the_end_with_capped_sizes(fakeweb: FakeWeb) -> None:
    """All 60 photos, page by page; sizes capped to ``size`` with the aspect ratio kept; author kept."""
    src = PicsumSource(base_url=fakeweb.url("/picsum"), size=200, page_size=25)
    cands = _take(src)
    assert [c.meta["picsum_id"] for c in cands] == [str(i) for i in range(60)]
    assert [q["page"] for q in _queries(fakeweb, "/picsum/v2/list")] == [["1"], ["2"], ["3"], ["4"]]  # 4 is empty
    listing = {it["id"]: it for it in _get(fakeweb.url("/picsum/v2/list"), limit=100).json()}
    for c in cands:
        it = listing[c.meta["picsum_id"]]
        w, h = (int(v) for v in c.url.rsplit("/", 2)[1:])
        assert c.url.startswith(fakeweb.url(f"/picsum/id/{it['id']}/"))
        assert max(w, h) == 200, c.url
        assert abs(w / h - it["width"] / it["height"]) < 0.02, c.url
        assert c.meta["author"] == it["author"] and c.meta["page_url"] == it["url"]
        assert c.license == "Unsplash License" and c.source == "picsum"
    landscape, portrait = cands[0], cands[2]
    assert _get_image(landscape.url).size == (200, 133)
    assert _get_image(portrait.url).size == (133, 200)

    big = _take(PicsumSource(base_url=fakeweb.url("/picsum"), size=3000), 6)
    assert big[5].url.endswith("/5/1920/1080"), "an original smaller than size is not upscaled"


@pytest.mark.parametrize(
    ("body", "message"),
    [('{"error": "Invalid parameters"}', "unexpected list page"), ('[{"id": "1", "author": "A"}]', "unexpected")],
    ids=["not-a-list", "item-without-size"],
)
def test_picsum_malformed_page(fakeweb: FakeWeb, body: str, message: str) -> None:
    """A list page of the wrong shape is a SourceUnavailable naming the source, not a KeyError."""
    fakeweb.serve("/picsum/v2/list", body)
    with pytest.raises(SourceUnavailable, match=rf"'nulls'.*{message}"):
        _take(PicsumSource(name="nulls", base_url=fakeweb.url("/picsum")), 1)


# -- Openverse --------------------------------------------------------------------------------------


def test_openverse_round_robin_with_licenses_and_attribution(fakeweb: FakeWeb) -> None:
    """Queries alternate; license with its version, creator and attribution go into the manifest."""
    src = OpenverseSource(base_url=fakeweb.url("/openverse/v1"), queries=["cat", "office"], license_type="commercial")
    cands = _take(src)
    assert [c.meta["query"] for c in cands[:4]] == ["cat", "office", "cat", "office"]
    assert len(cands) == len({c.url for c in cands}) == 2 * 45
    cats = [c for c in cands if c.meta["query"] == "cat"]
    assert [c.url for c in cats] == [fakeweb.url(f"/ovimg/cat/{i}.jpg") for i in range(45)]
    assert [c.license for c in cats[:4]] == ["by 2.0", "by-sa 2.0", "cc0 2.0", "pdm 2.0"]
    c0 = cats[0]
    assert c0.meta["creator"] == "Photographer 0" and c0.meta["provider"] == "flickr"
    assert c0.meta["attribution"].startswith('"Cat photo 0" by Photographer 0 is licensed under CC BY 2.0')
    assert c0.meta["license_url"] == "https://creativecommons.org/licenses/by/2.0/"
    assert c0.meta["landing_url"] and c0.meta["openverse_id"] and c0.meta["title"] == "Cat photo 0"
    queries = _queries(fakeweb, "/openverse/v1/images/")
    assert sorted(int(q["page"][0]) for q in queries if q["q"] == ["cat"]) == [1, 2, 3]  # page_count is 3
    assert all(q["page_size"] == ["20"] and q["license_type"] == ["commercial"] for q in queries)
    assert _get_image(c0.url).size[0] > 0


def test_openverse_stops_cleanly_when_a_later_page_fails(fakeweb: FakeWeb) -> None:
    """Anonymous paging ends with an error page after a while: that ends the query, not the run."""
    it = OpenverseSource(base_url=fakeweb.url("/openverse/v1"), queries=["cat"]).candidates(_ctx())
    assert len(list(islice(it, 20))) == 20  # page 1
    fakeweb.openverse_per_query = 20  # page 2 no longer exists: HTTP 400 "Invalid page"
    assert list(it) == []
    assert [q["page"] for q in _queries(fakeweb, "/openverse/v1/images/")] == [["1"], ["2"]]


def test_openverse_skips_malformed_results(fakeweb: FakeWeb) -> None:
    """One odd result (no URL, not an object) is skipped; the rest of the page is still used."""
    good = {"url": fakeweb.url("/ovimg/cat/0.jpg"), "license": "cc0", "license_version": "1.0"}
    fakeweb.serve("/openverse/v1/images/", json.dumps({"page_count": 1, "results": ["x", {"id": "1"}, good]}))
    [cand] = _take(OpenverseSource(base_url=fakeweb.url("/openverse/v1"), queries=["cat"]))
    assert (cand.url, cand.license) == (good["url"], "cc0 1.0")


def test_openverse_first_page_error_raises(fakeweb: FakeWeb) -> None:
    """An error on page 1 means the source cannot be used at all: say so, with the server's reason."""
    src = OpenverseSource(name="ov", base_url=fakeweb.url("/openverse/v1"), queries=["cat"], page_size=50)
    with pytest.raises(SourceUnavailable, match=r"'ov'.*HTTP 401.*page_size 20"):
        _take(src, 1)


# -- XYZ tiles --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/tiles/{z}/{x}/{y}.jpg", "/tiles/{z}/{x}/{y}.jpg"),
        ("/tiles-yx/{z}/{y}/{x}.jpg", "/tiles-yx/{z}/{y}/{x}.jpg"),
        ("/tiles-dated/{date}/{z}/{x}/{y}.jpg", "/tiles-dated/2024-05-06/{z}/{x}/{y}.jpg"),
    ],
    ids=["z-x-y", "z-y-x", "date"],
)
def test_xyz_tiles_from_a_url_template(fakeweb: FakeWeb, template: str, expected: str) -> None:
    """A raw template in either axis order, with ``{date}`` = the partition date; the tiles decode."""
    src = XyzTilesSource(
        name="sat", provider=None, url_template=fakeweb.url(template), bbox=BBOX, zooms=[12, 13], license="PD"
    )
    cands = _take(src, 6)
    assert {c.meta["z"] for c in cands} == {12, 13}
    for c in cands:
        z, x, y = c.meta["z"], c.meta["x"], c.meta["y"]
        assert c.url == fakeweb.url(expected.format(z=z, x=x, y=y))
        assert c.license == "PD" and c.source == "sat"
        img = _get_image(c.url)
        assert (img.size, img.format) == ((256, 256), "JPEG")
    if "tiles-yx" in template:  # the same picture as the {x}/{y} server: the axes were not swapped
        c = cands[0]
        same = _get(fakeweb.url(f"/tiles/{c.meta['z']}/{c.meta['x']}/{c.meta['y']}.jpg"))
        assert _get(c.url).content == same.content


# -- fail fast --------------------------------------------------------------------------------------

SourceFactory = Callable[[str], Source]
WEB_SOURCES: dict[str, SourceFactory] = {
    "dog_ceo": lambda base: DogCeoSource(name="dogs_web", base_url=f"{base}/api"),
    "picsum": lambda base: PicsumSource(name="picsum_web", base_url=base),
    "openverse": lambda base: OpenverseSource(name="openverse_web", base_url=f"{base}/v1"),
    "xyz_tiles": lambda base: XyzTilesSource(
        name="tiles_web", provider=None, url_template=f"{base}/{{z}}/{{x}}/{{y}}.jpg", bbox=BBOX, zooms=[12]
    ),
}


@pytest.mark.parametrize(
    ("kind", "settings"),
    [("dog_ceo", FAST), ("picsum", FAST), ("openverse", FAST), ("dog_ceo", HttpSettings())],
    ids=["dog_ceo", "picsum", "openverse", "dog_ceo-default-retries"],
)
def test_refused_connection_fails_fast(kind: str, settings: HttpSettings) -> None:
    """A listing API that refuses connections is named within seconds, even with the default retries.

    (xyz_tiles lists without the network; its unreachable server is caught by ingestion instead.)
    """
    src = WEB_SOURCES[kind](f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailable, match=rf"source '{src.name}'.*connection refused"):
        _take(src, 1, _ctx(settings))
    assert time.monotonic() - t0 < 6


@pytest.mark.parametrize("kind", sorted(WEB_SOURCES))
def test_unresolvable_host_fails_fast_and_suggests_offline_use(kind: str) -> None:
    """Offline, every web source stops at once and points to the local sources."""
    src = WEB_SOURCES[kind]("http://nohost.invalid")
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailable, match=rf"source '{src.name}'.*nohost\.invalid") as err:
        _take(src, 1, _ctx(HttpSettings()))
    assert time.monotonic() - t0 < 5
    assert "offline" in str(err.value).lower() and "local_dir" in str(err.value)
