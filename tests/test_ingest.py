"""Partition ingestion end to end: FakeWeb over real sockets, real storage (local disk and moto S3).

What matters here is the partition, not one download (tests/test_fetch.py covers each fault): one
manifest row per attempted URL, quotas, skipping what other partitions decided, idempotent re-runs,
retrying only transient failures and at most ``max_attempts`` times, surviving a SIGKILL, failing fast
on an unreachable source (and not on bad lines of a URL list), and one writer per partition.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from pipelines import manifest as mf
from pipelines.fetch import Fetcher, FetchSettings
from pipelines.httpclient import HttpSettings
from pipelines.ingest import IngestReport, ingest_partition
from pipelines.lease import LeaseHeld, LeaseLost
from pipelines.sources.base import Candidate, Source, SourceContext, SourceUnavailable
from pipelines.sources.dog_ceo import DogCeoSource
from pipelines.sources.local import UrlListSource
from pipelines.sources.picsum import PicsumSource
from pipelines.sources.xyz_tiles import XyzTilesSource
from pipelines.storage import LocalStorage, S3Storage, Storage, StorageError, content_key
from tests.fakeweb import FakeWeb, free_port, make_image_bytes

REPO = Path(__file__).resolve().parents[1]
DAY = date(2024, 5, 1)
FETCH = FetchSettings(
    http=HttpSettings(connect_timeout=1, read_timeout=1, backoff_factor=0.01, retries=1),
    per_host_concurrency=8,
    per_host_rate=0,
)
LISTING_PREFIXES = ("/robots.txt", "/dogceo/api/", "/picsum/v2/list", "/openverse/v1/images")


# -- helpers ----------------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same ingestion code must behave identically on disk and on S3."""
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    endpoint = request.getfixturevalue("moto_s3")
    s3 = S3Storage("ingest-" + os.urandom(4).hex(), "data", endpoint_url=endpoint)
    s3.client.create_bucket(Bucket=s3.bucket)
    return s3


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def _ingest(
    storage: Storage, sources: list[tuple[Source, int]], day: date = DAY, class_name: str = "null", **kwargs
) -> IngestReport:
    """One run as the asset does it: a fresh Fetcher (fresh robots cache), closed afterwards."""
    fetcher = Fetcher(storage, FETCH)
    try:
        return ingest_partition(storage, fetcher, class_name, day, sources, concurrency=4, **kwargs)
    finally:
        fetcher.close()


def _url_list(tmp_path: Path, fakeweb: FakeWeb, paths: list[str], name: str = "urls") -> UrlListSource:
    """A url_list source of FakeWeb paths: any mix of good and faulty URLs, in a stable order."""
    fd, f = tempfile.mkstemp(suffix=".txt", prefix=f"{name}-", dir=tmp_path)
    with os.fdopen(fd, "w") as out:
        out.write("".join(fakeweb.url(p) + "\n" for p in paths))
    return UrlListSource(f, name=name, license="CC0")


def _dogs(fakeweb: FakeWeb) -> DogCeoSource:
    return DogCeoSource(base_url=fakeweb.url("/dogceo/api"))


def _manifest(storage: Storage, class_name: str = "null", day: date = DAY) -> list[dict]:
    return mf.read_table(storage, mf.manifest_key(class_name, day.isoformat())).to_pylist()


def _parts(storage: Storage, class_name: str = "null", day: date = DAY) -> list[str]:
    return list(storage.list(mf.parts_prefix(class_name, day.isoformat())))


def _statuses(rows: list[dict]) -> dict[str, str]:
    """URL path -> status, the shape most assertions want."""
    return {urlsplit(r["url"]).path: r["status"] for r in rows}


def _image_requests(fakeweb: FakeWeb, since: int = 0) -> list[str]:
    """Paths of the downloads (not listings or robots.txt) the server saw after request number ``since``."""
    return [r.path for r in fakeweb.requests[since:] if not r.path.startswith(LISTING_PREFIXES)]


def _assert_store_consistent(storage: Storage, rows: list[dict], *, allow_temp_files: bool = False) -> None:
    """Every stored image is complete and content-addressed; every ok row points at one; no part files left."""
    stored = list(storage.list("raw/images/"))
    for key in stored:
        data = storage.get_bytes(key)
        sha = hashlib.sha256(data).hexdigest()
        assert key == content_key(sha, key.rsplit(".", 1)[1]), f"{key} holds bytes with sha256 {sha}"
        Image.open(io.BytesIO(data)).load()  # raises on a partial object
    for r in rows:
        if r["status"] in ("ok", "already_seen"):
            ext = r["storage_key"].rsplit(".", 1)[1]
            assert r["storage_key"] in stored and r["storage_key"] == content_key(r["sha256"], ext)
    assert list(storage.list("raw/_parts/")) == []
    if isinstance(storage, LocalStorage) and not allow_temp_files:
        assert [p for p in storage.root.rglob("*") if p.is_file() and p.name.endswith(".tmp")] == []


# -- one row per attempted URL ----------------------------------------------------------------------

MIXED = {
    "/img/a.jpg": "ok",
    "/img/b.png": "ok",
    "/fault/status/404": "http_error",
    "/fault/html": "not_an_image",
    "/fault/truncated.jpg": "truncated",
    "/fault/bomb.png": "too_large",
    "/fault/animated.gif": "unsupported",
    "/fault/small.jpg": "too_small",
    "/fault/xrobots/noai/x": "opted_out",
    "/private/secret.jpg": "robots_disallowed",
}


def test_one_manifest_row_per_attempted_url(storage: Storage, fakeweb: FakeWeb, tmp_path: Path) -> None:
    """Every URL is accounted for with the right status; only valid images (and thumbnails) are stored, by sha256."""
    fakeweb.robots_txt = "User-agent: *\nDisallow: /private/\n"
    rep = _ingest(storage, [(_url_list(tmp_path, fakeweb, list(MIXED)), 100)])

    table = mf.read_table(storage, rep.manifest_key)
    assert table.schema.equals(mf.SCHEMA), table.schema
    rows = table.to_pylist()
    assert _statuses(rows) == MIXED and len(rows) == len(MIXED)
    assert rep.counts == dict(Counter(MIXED.values())) and rep.version == mf.content_version(rows)
    assert all(r["class"] == "null" and r["partition_date"] == "2024-05-01" for r in rows)
    assert all(r["source"] == "urls" and r["license"] == "CC0" and r["reason"] for r in rows if r["status"] != "ok")

    ok = {urlsplit(r["url"]).path: r for r in rows if r["status"] == "ok"}
    served = {"/img/a.jpg": make_image_bytes("img/a"), "/img/b.png": make_image_bytes("img/b", fmt="PNG")}
    for path, data in served.items():
        sha = hashlib.sha256(data).hexdigest()
        assert ok[path]["sha256"] == sha and ok[path]["storage_key"] == content_key(sha, path.rsplit(".", 1)[1])
        assert storage.get_bytes(ok[path]["storage_key"]) == data
    kept = [r["storage_key"] for r in rows if r["status"] in ("ok", "too_small")]  # a thumbnail is kept for curation
    assert sorted(storage.list("raw/images/")) == sorted(kept) and len(kept) == 3
    _assert_store_consistent(storage, rows)


# -- quotas -----------------------------------------------------------------------------------------


def test_quota_per_source(local: LocalStorage, fakeweb: FakeWeb) -> None:
    """A source stops at its quota of new images, without extra downloads; each source has its own."""
    rep = _ingest(local, [(_dogs(fakeweb), 5)], class_name="dogs")
    assert rep.counts == {"ok": 5} and len(rep.rows) == 5
    assert len(_image_requests(fakeweb)) == 5

    picsum = PicsumSource(base_url=fakeweb.url("/picsum"), size=128)
    unused = PicsumSource(name="unused", base_url=fakeweb.url("/picsum-unused"))
    rep = _ingest(local, [(_dogs(fakeweb), 3), (picsum, 4), (unused, 0)], class_name="null")
    assert rep.per_source_ok == {"dog_ceo": 3, "picsum": 4, "unused": 0}
    assert Counter(r["source"] for r in _manifest(local)) == {"dog_ceo": 3, "picsum": 4}
    assert fakeweb.hits("/picsum-unused") == 0, "a source with quota 0 is not even listed"


# -- incremental ------------------------------------------------------------------------------------


def test_next_partition_skips_decided_urls_and_seen_images(storage: Storage, fakeweb: FakeWeb, tmp_path: Path) -> None:
    """The next day fetches only new URLs; the same bytes at a new URL are recorded as already_seen."""
    first_list = _url_list(tmp_path, fakeweb, ["/img/a.jpg", "/img/b.jpg"])
    first = _ingest(storage, [(_dogs(fakeweb), 5), (first_list, 10)], class_name="dogs")
    assert first.counts == {"ok": 7}

    day2 = DAY + timedelta(days=1)
    urls2 = ["/img/a.jpg", "/img/a", "/img/c.jpg"]  # /img/a serves the very bytes of /img/a.jpg
    second = _ingest(storage, [(_dogs(fakeweb), 5), (_url_list(tmp_path, fakeweb, urls2), 10)], day2, class_name="dogs")
    rows = _manifest(storage, "dogs", day2)
    dogs1 = {r["url"] for r in first.rows if r["source"] == "dog_ceo"}
    dogs2 = {r["url"] for r in rows if r["source"] == "dog_ceo"}
    assert len(dogs2) == 5 and not dogs1 & dogs2
    assert {p: s for p, s in _statuses(rows).items() if p.startswith("/img/")} == {
        "/img/a": "already_seen",
        "/img/c.jpg": "ok",
    }
    seen = next(r for r in rows if r["url"].endswith("/img/a"))
    assert seen["sha256"] == next(r["sha256"] for r in first.rows if r["url"].endswith("/img/a.jpg"))
    assert second.per_source_ok == {"dog_ceo": 5, "urls": 1} and second.skipped_seen_urls == 5 + 1
    assert Counter(_image_requests(fakeweb))["/img/a.jpg"] == 1
    assert mf.content_version(_manifest(storage, "dogs", DAY)) == first.version  # day 1 untouched
    _assert_store_consistent(storage, rows + first.rows)


# -- idempotent -------------------------------------------------------------------------------------


def test_rerun_of_a_finished_partition_fetches_nothing(storage: Storage, fakeweb: FakeWeb, tmp_path: Path) -> None:
    """Materialising the same partition again downloads nothing and yields the same manifest and version."""
    sources: list[tuple[Source, int]] = [
        (_dogs(fakeweb), 4),
        (_url_list(tmp_path, fakeweb, ["/img/a.jpg", "/fault/status/404", "/fault/html"]), 10),
    ]
    first = _ingest(storage, sources)
    rows = _manifest(storage)
    assert Counter(r["status"] for r in rows) == {"ok": 5, "http_error": 1, "not_an_image": 1}

    n = len(fakeweb.requests)
    again = _ingest(storage, sources)
    assert _image_requests(fakeweb, n) == []
    assert again.attempted == 0 and again.run_counts == {}
    assert _manifest(storage) == rows and again.version == first.version
    _assert_store_consistent(storage, rows)


# -- transient failures -----------------------------------------------------------------------------


def test_transient_failures_are_retried_on_the_next_run(local: LocalStorage, fakeweb: FakeWeb, tmp_path: Path) -> None:
    """A 500 or a timeout is worth another try later; a 404 or a good image is not fetched again."""
    paths = ["/fault/flaky/2/x", "/fault/stall/2/3/y", "/fault/status/404", "/img/fine.jpg"]
    source = _url_list(tmp_path, fakeweb, paths)
    first = _ingest(local, [(source, 10)])
    rows = {urlsplit(r["url"]).path: r for r in first.rows}
    assert {p: (r["status"], r["http_status"], r["retryable"]) for p, r in rows.items()} == {
        "/fault/flaky/2/x": ("http_error", 500, True),
        "/fault/stall/2/3/y": ("timeout", None, True),
        "/fault/status/404": ("http_error", 404, False),
        "/img/fine.jpg": ("ok", 200, False),
    }

    n = len(fakeweb.requests)
    second = _ingest(local, [(source, 10)])
    assert sorted(_image_requests(fakeweb, n)) == ["/fault/flaky/2/x", "/fault/stall/2/3/y"]
    assert second.run_counts == {"ok": 2}
    assert _statuses(_manifest(local)) == {p: "ok" for p in paths} | {"/fault/status/404": "http_error"}
    _assert_store_consistent(local, second.rows)


# -- at most max_attempts tries per URL, and a finished partition is finished -------------------------

STALL = "/fault/stall/999/2/forever"  # stalls past the read timeout on every request: a timeout each time


def test_failures_become_final_after_max_attempts_then_a_rerun_makes_no_request(tmp_path: Path) -> None:
    """A transient failure is tried again on each run, at most max_attempts (3) times in all, then kept as
    final (retryable false, the reason says so). Then nothing is left to do: the sources ran out of
    candidates, so a re-run lists nothing, reads no robots.txt and downloads nothing."""
    store = LocalStorage(tmp_path / "store")
    with FakeWeb(dog_breeds={"pug": []}, images_per_breed=3) as fw:  # 3 dogs for a quota of 5: it runs out
        sources: list[tuple[Source, int]] = [
            (_dogs(fw), 5),
            (_url_list(tmp_path, fw, ["/img/fine.jpg", "/fault/status/404", STALL]), 5),
        ]
        for run in (1, 2, 3):
            n = len(fw.requests)
            rep = _ingest(store, sources)
            rows = {urlsplit(r["url"]).path: r for r in _manifest(store)}
            stall = rows[STALL]
            assert (stall["status"], stall["attempts"], stall["retryable"]) == ("timeout", run, run < 3)
            assert {p: r["attempts"] for p, r in rows.items() if p != STALL} == {p: 1 for p in rows if p != STALL}
            if run > 1:  # only the stalled URL again: neither the listing nor the URLs already decided
                assert {r.path for r in fw.requests[n:]} == {"/robots.txt", STALL}
        assert stall["reason"].endswith("(gave up after 3 attempts)")
        assert rep.counts == {"ok": 4, "http_error": 1, "timeout": 1}

        n = len(fw.requests)
        again = _ingest(store, sources)
        assert fw.requests[n:] == []
        assert again.attempted == 0 and again.version == rep.version and _manifest(store) == list(rows.values())


def test_max_attempts_one_makes_the_first_failure_final(local: LocalStorage, fakeweb: FakeWeb, tmp_path: Path) -> None:
    source = _url_list(tmp_path, fakeweb, ["/fault/status/503", "/img/fine.jpg"])
    first = _ingest(local, [(source, 5)], max_attempts=1)
    [failed] = [r for r in first.rows if r["status"] != "ok"]
    assert (failed["http_status"], failed["attempts"], failed["retryable"]) == (503, 1, False)
    assert failed["reason"] == "HTTP 503 Service Unavailable (gave up after 1 attempts)"
    n = len(fakeweb.requests)
    _ingest(local, [(source, 5)], max_attempts=1)
    assert fakeweb.requests[n:] == []


def test_lowering_max_attempts_finalises_failures_already_tried_that_often(
    local: LocalStorage, fakeweb: FakeWeb, tmp_path: Path
) -> None:
    source = _url_list(tmp_path, fakeweb, ["/fault/status/503"])
    for _ in range(2):
        _ingest(local, [(source, 5)])
    [row] = _manifest(local)
    assert (row["attempts"], row["retryable"]) == (2, True)
    n = len(fakeweb.requests)
    _ingest(local, [(source, 5)], max_attempts=2)
    assert fakeweb.requests[n:] == []
    [row] = _manifest(local)
    assert (row["attempts"], row["retryable"]) == (2, False) and row["reason"].endswith("(gave up after 2 attempts)")


def test_a_source_that_ran_out_is_listed_again_once_its_settings_change(local: LocalStorage) -> None:
    with FakeWeb(dog_breeds={"pug": [], "shiba": []}, images_per_breed=2) as fw:
        pugs = DogCeoSource(base_url=fw.url("/dogceo/api"), breeds=["pug"])
        assert _ingest(local, [(pugs, 5)], class_name="dogs").counts == {"ok": 2}
        n = len(fw.requests)
        _ingest(local, [(pugs, 5)], class_name="dogs")
        assert fw.requests[n:] == []  # ran out, same settings: not listed again

        both = DogCeoSource(base_url=fw.url("/dogceo/api"), breeds=["pug", "shiba"])
        rep = _ingest(local, [(both, 5)], class_name="dogs")
        assert rep.counts == {"ok": 4} and rep.run_counts == {"ok": 2}
        assert fw.hits("/dogceo/api/breed/shiba/images") == 1


# -- kill and resume --------------------------------------------------------------------------------

KILL_QUOTA = 30


def resumable_dog_run(root: str, base_url: str) -> IngestReport:
    """The run that gets SIGKILLed (in a child process) and then resumed (in the test process)."""
    source = DogCeoSource(base_url=f"{base_url}/dogceo/api")
    store = LocalStorage(root)
    fetcher = Fetcher(store, FETCH)
    try:
        return ingest_partition(
            store, fetcher, "dogs", DAY, [(source, KILL_QUOTA)], concurrency=2, flush_every=3, flush_seconds=0.3
        )
    finally:
        fetcher.close()


def _start_and_kill(root: Path, fakeweb: FakeWeb, stderr: Path, min_parts: int = 2) -> None:
    """Run ``resumable_dog_run`` in a child and SIGKILL it once ``min_parts`` part files exist."""
    code = f"from tests.test_ingest import resumable_dog_run; resumable_dog_run({str(root)!r}, {fakeweb.base_url!r})"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    store = LocalStorage(root)
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while len(_parts(store, "dogs")) < min_parts:
            assert proc.poll() is None, f"child ended ({proc.returncode}) before the kill: {stderr.read_text()}"
            assert time.monotonic() < deadline, "child wrote no part files within 60 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"child ended on its own: {stderr.read_text()}"


def test_kill_and_resume(fakeweb: FakeWeb, tmp_path: Path) -> None:
    """A SIGKILLed run loses nothing that reached a part file: the next run completes without refetching it."""
    root = tmp_path / "store"
    fakeweb.latency = 0.1  # ~2 s of downloads at concurrency 2: long enough to kill mid-run
    _start_and_kill(root, fakeweb, tmp_path / "child.err")
    store = LocalStorage(root)
    assert not store.exists(mf.manifest_key("dogs", DAY.isoformat()))
    saved = mf.read_rows(store, _parts(store, "dogs"))
    assert saved and all(r["status"] == "ok" for r in saved)
    child_requests = set(_image_requests(fakeweb))

    fakeweb.latency = 0.0
    n = len(fakeweb.requests)
    rep = resumable_dog_run(str(root), fakeweb.base_url)

    rows = _manifest(store, "dogs")
    assert len(rows) == len({r["url"] for r in rows}) == KILL_QUOTA
    assert rep.counts == {"ok": KILL_QUOTA} and {r["url"] for r in saved} <= {r["url"] for r in rows}
    resumed = set(_image_requests(fakeweb, n))
    assert not resumed & {urlsplit(r["url"]).path for r in saved}, "refetched rows that were already saved"
    # Only what was in flight or not yet flushed at the kill is fetched twice.
    assert len(resumed & child_requests) <= 3 + 2 * 2
    _assert_store_consistent(store, rows, allow_temp_files=True)  # a kill mid-write may leave a hidden temp file


# -- unreachable sources ----------------------------------------------------------------------------

UNREACHABLE: dict[str, tuple[Callable[[], Source], str]] = {
    "listing-refused": (
        lambda: DogCeoSource(name="down", base_url=f"http://127.0.0.1:{free_port()}/api"),
        r"'down'.*connection refused",
    ),
    "listing-dns": (
        lambda: DogCeoSource(name="down", base_url="http://nohost.invalid/api"),
        r"'down'.*nohost\.invalid.*offline",
    ),
    "downloads-refused": (
        lambda: XyzTilesSource(
            name="down",
            provider=None,
            url_template=f"http://127.0.0.1:{free_port()}/{{z}}/{{x}}/{{y}}.jpg",
            bbox=(-122.55, 37.60, -122.30, 37.85),
            zooms=[14],
        ),
        r"'down' is unreachable.*no answer",
    ),
}


class _AfterFirstRequest:
    """Lists ``inner`` only once FakeWeb has seen a request: another source's download is then surely
    running (not merely queued) when this one fails, which makes "running downloads are saved" testable.
    """

    def __init__(self, inner: Source, fakeweb: FakeWeb) -> None:
        self.inner, self.fakeweb, self.name = inner, fakeweb, inner.name

    def candidates(self, ctx: SourceContext) -> Iterator[Candidate]:
        deadline = time.monotonic() + 10
        while not self.fakeweb.requests and time.monotonic() < deadline:
            time.sleep(0.005)
        yield from self.inner.candidates(ctx)


@pytest.mark.parametrize("case", sorted(UNREACHABLE))
def test_unreachable_source_fails_fast_keeping_what_others_fetched(
    local: LocalStorage, fakeweb: FakeWeb, tmp_path: Path, case: str
) -> None:
    """The run stops within seconds naming the source; downloads already running finish and are saved
    in part files, so the next run (here without the broken source) does not fetch them again.
    """
    make_bad, message = UNREACHABLE[case]
    fakeweb.latency = 0.2  # the good source's first download is still running when the bad one fails
    good = _url_list(tmp_path, fakeweb, [f"/img/u{i}.jpg" for i in range(6)])
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailable, match=message):
        _ingest(local, [(good, 6), (_AfterFirstRequest(make_bad(), fakeweb), 5)])
    assert time.monotonic() - t0 < 8
    assert not local.exists(mf.manifest_key("null", DAY.isoformat()))
    saved = [r for r in mf.read_rows(local, _parts(local)) if r["source"] == "urls"]
    assert saved and all(r["status"] == "ok" and local.exists(r["storage_key"]) for r in saved)

    fakeweb.latency = 0.0
    n = len(fakeweb.requests)
    rep = _ingest(local, [(good, 6)])
    assert rep.per_source_ok == {"urls": 6}
    assert not set(_image_requests(fakeweb, n)) & {urlsplit(r["url"]).path for r in saved}
    _assert_store_consistent(local, rep.rows)


# The security engineer's fetcher turns each into a final error row; what matters here is that none of them
# counts as "no answer from the server".
BAD_LINES = [
    "not a url",
    "ftp://example.com/dog.jpg",
    "http://",
    "http://[::1",
    "javascript:alert(1)",
    "mailto:dogs@example.com",
    "//example.com/no-scheme.jpg",
    "data:image/png;base64,iVBORw0KGgo=",
    "htp:/typo.example/x.jpg",
    "file:///nonexistent/dir/x.jpg",
]


def test_bad_lines_of_a_url_list_are_error_rows_not_an_unreachable_source(
    local: LocalStorage, fakeweb: FakeWeb, tmp_path: Path
) -> None:
    """More bad lines before the first good one than ``unreachable_after`` (8): the partition still
    succeeds, with one final error row per bad line."""
    good = [f"/img/after-garbage-{i}.jpg" for i in range(3)]
    lines = tmp_path / "urls.txt"
    lines.write_text("\n".join([*BAD_LINES, *(fakeweb.url(p) for p in good)]) + "\n")
    rep = _ingest(local, [(UrlListSource(str(lines), name="urls"), 20)])

    rows = {r["url"]: r for r in _manifest(local)}
    assert len(rows) == len(BAD_LINES) + len(good)
    for line in BAD_LINES:
        row = rows[line]
        assert row["status"] != "ok" and not row["retryable"] and row["reason"], row
    assert rep.per_source_ok == {"urls": 3}
    assert sorted(_image_requests(fakeweb)) == sorted(good)


def test_bad_lines_before_an_unreachable_host_do_not_hide_it(local: LocalStorage, tmp_path: Path) -> None:
    """Bad lines are no answer from a server either: a list whose URLs all point at a dead host still
    fails fast, naming the source."""
    dead = f"http://127.0.0.1:{free_port()}"
    lines = tmp_path / "urls.txt"
    lines.write_text("\n".join([*BAD_LINES, *(f"{dead}/img/{i}.jpg" for i in range(12))]) + "\n")
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailable, match=r"'urls' is unreachable: its first 8 downloads got no answer"):
        _ingest(local, [(UrlListSource(str(lines), name="urls"), 20)])
    assert time.monotonic() - t0 < 8


# -- one writer per partition -----------------------------------------------------------------------


def test_a_second_ingest_of_a_partition_being_ingested_fails_at_once_naming_the_first(
    storage: Storage, fakeweb: FakeWeb
) -> None:
    """Whatever started them: the second writer never fetches a URL, the first ends as if alone."""
    fakeweb.latency = 0.1
    first: list[IngestReport] = []
    thread = threading.Thread(target=lambda: first.append(_ingest(storage, [(_dogs(fakeweb), 12)], holder="one")))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not _image_requests(fakeweb):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(
            LeaseHeld, match=rf"^raw partition null/{DAY} is being written by host .*, pid {os.getpid()}, one"
        ):
            _ingest(storage, [(_dogs(fakeweb), 12)], holder="two")
        assert time.monotonic() - t0 < 2
    finally:
        thread.join(timeout=60)
    assert first and first[0].counts == {"ok": 12}
    requested = _image_requests(fakeweb)
    assert len(requested) == len(set(requested)) == 12, "a URL was fetched twice"


def test_a_writer_whose_s3_lease_was_taken_over_stops_writing(moto_s3: str, fakeweb: FakeWeb) -> None:
    """A writer that stalled past its TTL while another took the partition over: its next write raises,
    and the partition's manifest is never written by it."""
    storage = S3Storage("ingest-" + os.urandom(4).hex(), "data", endpoint_url=moto_s3)
    storage.client.create_bucket(Bucket=storage.bucket)
    fakeweb.latency = 0.1
    errors: list[BaseException] = []

    def run() -> None:
        fetcher = Fetcher(storage, FETCH)
        try:
            ingest_partition(
                storage, fetcher, "dogs", DAY, [(_dogs(fakeweb), 40)], concurrency=2, lease_ttl_s=1.5, flush_every=1
            )
        except BaseException as e:
            errors.append(e)
        finally:
            fetcher.close()

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 20
    while not _parts(storage, "dogs"):
        assert time.monotonic() < deadline and thread.is_alive(), errors
        time.sleep(0.02)
    storage.put_bytes(
        mf.lease_key("dogs", DAY.isoformat()), b'{"host": "elsewhere", "pid": 1, "holder": "", "since": ""}'
    )
    thread.join(timeout=30)
    assert [type(e) for e in errors] == [LeaseLost] and "another writer took it over" in str(errors[0])
    assert not storage.exists(mf.manifest_key("dogs", DAY.isoformat()))
    assert b"elsewhere" in storage.get_bytes(mf.lease_key("dogs", DAY.isoformat()))


# -- storage failure --------------------------------------------------------------------------------


class _FullDisk(LocalStorage):
    """Manifests and part files can be written, images cannot: a disk that filled up mid-run."""

    def put_bytes(self, key: str, data: bytes) -> None:
        if key.startswith("raw/images/"):
            raise StorageError(f"cannot write {key}: No space left on device")
        super().put_bytes(key, data)


def test_storage_failure_stops_the_run_keeping_finished_rows(fakeweb: FakeWeb, tmp_path: Path) -> None:
    """The storage error surfaces as itself, and rows already decided are still flushed to part files.

    Several downloads fail the same way at once; the later failures must not hide the first one nor
    skip the final flush.
    """
    store = _FullDisk(tmp_path / "store")
    paths = ["/fault/status/404", "/fault/html"] + [f"/img/full{i}.jpg" for i in range(4)]
    with pytest.raises(StorageError, match="No space left"):
        _ingest(store, [(_url_list(tmp_path, fakeweb, paths), 10)])
    saved = _statuses(mf.read_rows(store, _parts(store)))
    assert saved == {"/fault/status/404": "http_error", "/fault/html": "not_an_image"}
