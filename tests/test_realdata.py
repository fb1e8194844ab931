"""Ingestion of the real photographs and map tiles in ../shared/fixtures (skipped when absent).

Generated images exercise the error paths; these make sure real JPEGs of every size and shape, and a
real XYZ tile pyramid served over HTTP, go through the same code with nothing lost.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import date
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.fetch import Fetcher, FetchSettings
from pipelines.httpclient import HttpSettings
from pipelines.ingest import ingest_partition
from pipelines.sources.local import LocalDirSource
from pipelines.sources.xyz_tiles import XyzTilesSource
from pipelines.storage import LocalStorage

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
pytestmark = pytest.mark.realdata
DAY = date(2026, 11, 24)


@pytest.fixture(scope="module")
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"real-image fixtures not found at {FIXTURES}")
    return FIXTURES


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No per-request logging in tests."""


@pytest.fixture
def tile_server(fixtures: Path, tmp_path: Path) -> Iterator[str]:
    """The Blue Marble fixture tiles laid out as ``{z}/{x}/{y}.jpg`` behind a real loopback HTTP server."""
    root = tmp_path / "tiles"
    for f in (fixtures / "tiles").glob("bluemarble_z*_x*_y*.jpg"):
        z, x, y = re.fullmatch(r"bluemarble_z(\d+)_x(\d+)_y(\d+)\.jpg", f.name).groups()  # type: ignore[union-attr]
        (root / z / x).mkdir(parents=True, exist_ok=True)
        (root / z / x / f"{y}.jpg").symlink_to(f)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _fetcher(storage: LocalStorage) -> Fetcher:
    return Fetcher(storage, FetchSettings(http=HttpSettings(retries=1), per_host_concurrency=8, per_host_rate=0))


def test_real_xyz_tiles_over_http_keep_their_coordinates(tile_server, tmp_path):
    """z6 block x30-37, y18-25 (Europe): all 64 real tiles fetched, with z/x/y from the tile math."""
    storage = LocalStorage(tmp_path / "data")
    src = XyzTilesSource(
        name="bluemarble",
        provider=None,
        url_template=tile_server + "/{z}/{x}/{y}.jpg",
        bbox=(-11.2, 32.0, 33.7, 61.5),
        zooms=[6],
        license="public domain (NASA)",
    )
    report = ingest_partition(storage, _fetcher(storage), "satellite", DAY, [(src, 100)], concurrency=8)
    assert report.counts == {"ok": 64}
    coords = {(m["z"], m["x"], m["y"]) for m in (json.loads(r["meta"]) for r in report.rows)}
    assert coords == {(6, x, y) for x in range(30, 38) for y in range(18, 26)}
    for row in report.rows:
        meta = json.loads(row["meta"])
        assert row["url"].endswith(f"/6/{meta['x']}/{meta['y']}.jpg") and row["width"] == row["height"] == 256
        assert hashlib.sha256(storage.get_bytes(row["storage_key"])).hexdigest() == row["sha256"]


@pytest.mark.parametrize("folder", ["dogs-photos", "null-photos"])
def test_real_full_size_photos_are_all_accounted_for(fixtures, tmp_path, folder):
    """Every real photo ends in exactly one manifest row; nearly all are accepted, the rest say why."""
    storage = LocalStorage(tmp_path / "data")
    src = LocalDirSource(str(fixtures / folder), name=folder)
    files = sorted(p for p in (fixtures / folder).glob("*.jpg"))
    report = ingest_partition(storage, _fetcher(storage), "dogs", DAY, [(src, 10_000)], concurrency=4)
    assert len(report.rows) == len(files)
    counts = Counter(r["status"] for r in report.rows)
    assert counts["ok"] + counts["already_seen"] >= 0.95 * len(files), counts
    assert all(r["reason"] for r in report.rows if r["status"] not in ("ok",))
    stored = {r["sha256"] for r in report.rows if r["status"] == "ok"}
    assert len(stored) == counts["ok"] == len(list(storage.list("raw/images/")))
    assert min(r["width"] for r in report.rows if r["status"] == "ok") >= 64


def test_curation_of_real_photos_and_tiles(fixtures, tmp_path):
    """Real dogs, cats and tiles plus planted re-encodes: the re-encodes go, the open-ocean tiles go, the rest stays."""
    import io

    from PIL import Image

    from pipelines.curate import CurateSettings, cross_class_conflicts, curate, read_decisions

    storage = LocalStorage(tmp_path / "data")
    planted = tmp_path / "planted"
    planted.mkdir()
    originals = sorted((fixtures / "dogs").glob("*.jpg"))[:40]
    for p in originals:  # a second copy of each, re-encoded at low quality, scraped again the next day
        buf = io.BytesIO()
        Image.open(p).save(buf, "JPEG", quality=40)
        (planted / p.name).write_bytes(buf.getvalue())
    jobs = [
        ("dogs", DAY, LocalDirSource(str(fixtures / "dogs"), name="dogs")),
        ("null", DAY, LocalDirSource(str(fixtures / "null"), name="cats")),
        ("satellite", DAY, LocalDirSource(str(fixtures / "tiles"), name="tiles")),
        ("dogs", date(2026, 11, 25), LocalDirSource(str(planted), name="reencoded")),
    ]
    for class_name, day, src in jobs:
        ingest_partition(storage, _fetcher(storage), class_name, day, [(src, 10_000)], concurrency=4)
    report = curate(storage, CurateSettings(workers=2))
    rows = read_decisions(storage)
    reencoded = [r for r in rows if r["source"] == "reencoded"]
    assert len(reencoded) == 40 and all(r["reason"] == "near_duplicate" for r in reencoded)
    ocean = [r for r in rows if r["url"].endswith("bluemarble_z6_x32_y19.jpg")]
    assert [r["reason"] for r in ocean] == ["near_uniform"]
    assert report.counts["dogs"]["accept"] >= 490 and report.counts["null"].get("accept", 0) >= 490
    assert report.counts["satellite"]["accept"] >= 470
    assert cross_class_conflicts(rows, CurateSettings().radius) == 0
