"""The raw-image manifest: one Parquet row per attempted URL, the root of all lineage.

A partition's manifest is written once at the end (atomically); while it runs, rows are flushed to
numbered part files so a killed run resumes where it stopped instead of fetching everything again.
:func:`read_rows` reads manifests written before the ``attempts`` column existed as one attempt per URL.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import Storage

STATUSES = (
    "ok",
    "already_seen",
    "http_error",
    "timeout",
    "not_an_image",
    "truncated",
    "too_small",
    "too_large",
    "unsupported",
    "robots_disallowed",
    "opted_out",
    "invalid_url",
    "refused",
    "crashed",
)
# Outcomes that were not the server's or the image's fault: policy, not failure.
NOT_FAILURES = {"ok", "already_seen", "robots_disallowed", "opted_out"}

SCHEMA = pa.schema(
    [
        ("class", pa.string()),
        ("partition_date", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("http_status", pa.int32()),
        ("sha256", pa.string()),
        ("storage_key", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mode", pa.string()),
        ("format", pa.string()),
        ("bytes", pa.int64()),
        ("content_type", pa.string()),
        ("license", pa.string()),
        ("x_robots_tag", pa.string()),
        ("retryable", pa.bool_()),  # a failure that may succeed on a later run: it is tried again
        ("attempts", pa.int32()),  # times the URL was tried, over every run of the partition
        ("meta", pa.string()),  # JSON of per-source fields: breed, author, attribution, z/x/y, ...
        ("fetched_at", pa.timestamp("ms", tz="UTC")),
        ("elapsed_ms", pa.float32()),
    ]
)
COLUMNS = SCHEMA.names
# Parquet key-value metadata of a manifest: {source name: settings fingerprint} of the sources whose
# listing ran out in the run that wrote it. A re-run does not list them again.
EXHAUSTED_SOURCES = b"gan.exhausted_sources"


def is_transient(row: dict) -> bool:
    """True when a failed attempt may well succeed if tried again (timeouts, 429, 5xx, network)."""
    return bool(row.get("retryable"))


def manifest_key(class_name: str, date: str) -> str:
    return f"raw/manifests/{class_name}/{date}.parquet"


def parts_prefix(class_name: str, date: str) -> str:
    return f"raw/_parts/{class_name}/{date}/"


def lease_key(class_name: str, date: str) -> str:
    """Where the partition's writer lease lives (see pipelines/lease.py)."""
    return f"raw/_leases/{class_name}/{date}.lease"


def to_table(rows: Sequence[dict], exhausted: dict[str, str] | None = None) -> pa.Table:
    cols = {name: [r.get(name) for r in rows] for name in COLUMNS}
    table = pa.Table.from_pydict(cols, schema=SCHEMA)
    if exhausted:
        table = table.replace_schema_metadata({EXHAUSTED_SOURCES: json.dumps(exhausted, sort_keys=True).encode()})
    return table


def write_table(storage: Storage, key: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.put_bytes(key, buf.getvalue())


def read_table(storage: Storage, key: str, columns: Sequence[str] | None = None) -> pa.Table:
    with storage.open_read(key) as f:
        return pq.read_table(io.BytesIO(f.read()), columns=list(columns) if columns else None)


def read_exhausted(storage: Storage, key: str) -> dict[str, str]:
    """The manifest's :data:`EXHAUSTED_SOURCES`; empty when it has none (or was written before it existed)."""
    with storage.open_read(key) as f:
        meta = pq.ParquetFile(io.BytesIO(f.read())).schema_arrow.metadata or {}
    return json.loads(meta[EXHAUSTED_SOURCES]) if EXHAUSTED_SOURCES in meta else {}


def read_rows(storage: Storage, keys: Iterable[str]) -> list[dict]:
    """Rows of manifests or part files; one written before ``attempts`` existed counts one attempt per URL."""
    rows: list[dict] = []
    for key in keys:
        rows.extend({"attempts": 1} | row for row in read_table(storage, key).to_pylist())
    return rows


def class_manifests(storage: Storage, class_name: str) -> list[str]:
    return [k for k in storage.list(f"raw/manifests/{class_name}/") if k.endswith(".parquet")]


def finalize(rows: Iterable[dict]) -> list[dict]:
    """Last attempt per URL wins; sorted by (source, url) so the same rows give the same file."""
    latest: dict[str, dict] = {}
    for row in rows:
        latest[row["url"]] = row
    return sorted(latest.values(), key=lambda r: (r["source"], r["url"]))


def content_version(rows: Sequence[dict]) -> str:
    """Data version of a manifest: what was decided about which URL, not when it was fetched."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["source"], r["url"], r["status"], r["sha256"]]).encode())
    return h.hexdigest()[:16]


def now() -> datetime:
    return datetime.now(UTC)
