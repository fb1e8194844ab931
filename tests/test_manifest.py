"""Manifests written before the ``attempts`` column existed: read as one attempt per URL, resumed as such."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq

from pipelines import manifest as mf
from pipelines.fetch import Fetcher
from pipelines.ingest import ingest_partition
from pipelines.sources.local import UrlListSource
from pipelines.storage import LocalStorage
from tests.fakeweb import FakeWeb
from tests.test_ingest import FETCH

DAY = date(2024, 5, 1)


def _old_manifest(storage: LocalStorage, rows: list[dict]) -> str:
    """Write ``rows`` as a manifest of the previous schema, without ``attempts``."""
    key = mf.manifest_key("null", DAY.isoformat())
    table = mf.to_table(rows).drop_columns(["attempts"])
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.put_bytes(key, buf.getvalue())
    return key


def _row(url: str, status: str, retryable: bool) -> dict:
    return {"source": "urls", "url": url, "status": status, "reason": "HTTP 503", "retryable": retryable, "meta": "{}"}


def test_an_old_manifest_reads_as_one_attempt_per_url(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    key = _old_manifest(storage, [_row("http://a/1.jpg", "http_error", True)])
    [row] = mf.read_rows(storage, [key])
    assert row["attempts"] == 1 and set(row) == set(mf.COLUMNS)
    assert mf.read_exhausted(storage, key) == {}


def test_a_retryable_row_of_an_old_manifest_counts_as_its_first_attempt(tmp_path: Path, fakeweb: FakeWeb) -> None:
    storage = LocalStorage(tmp_path / "store")
    url = fakeweb.url("/fault/status/503")
    _old_manifest(storage, [_row(url, "http_error", True)])
    listing = tmp_path / "urls.txt"
    listing.write_text(url + "\n")
    fetcher = Fetcher(storage, FETCH)
    try:
        ingest_partition(storage, fetcher, "null", DAY, [(UrlListSource(str(listing), name="urls"), 5)], max_attempts=2)
    finally:
        fetcher.close()
    [row] = mf.read_table(storage, mf.manifest_key("null", DAY.isoformat())).to_pylist()
    assert (row["attempts"], row["retryable"]) == (2, False) and row["reason"].endswith("(gave up after 2 attempts)")
