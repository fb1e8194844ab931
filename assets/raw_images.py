"""The ``raw_images`` asset: one partition per image class and day, fetched from the configured sources."""

import json
from datetime import date
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.metadata import preview
from assets.partitions import raw_partitions
from assets.resources import FetchResource, SourcesResource, StorageResource
from pipelines.fetchpool import FetchWorkerError
from pipelines.ingest import ingest_partition
from pipelines.lease import LeaseError
from pipelines.sources import SourceUnavailable


class RawImagesConfig(dg.Config):
    max_new_per_source: int | None = Field(None, ge=0, description="override every source's per-partition quota")
    max_failure_rate: float = Field(0.5, ge=0, le=1, description="the failure_rate check fails above this share")
    preview_count: int = Field(16, ge=0, le=64)
    max_attempts: int = Field(
        3, ge=1, description="tries per URL over all runs of a partition; then a failure is final (retryable=false)"
    )
    lease_wait_s: float = Field(
        0.0, ge=0, description="wait this long for another writer of the partition; 0: fail at once naming it"
    )
    lease_ttl_s: float = Field(
        60.0, gt=0, description="S3 only: a writer not heard from for this long is presumed dead and replaced"
    )


@dg.asset(
    partitions_def=raw_partitions,
    code_version="1",
    group_name="ingest",
    kinds={"python", "parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            "failure_rate",
            asset="raw_images",
            blocking=True,
            description="Share of attempted URLs that failed (errors, not policy skips) is below the threshold",
        )
    ],
)
def raw_images(
    context: dg.AssetExecutionContext,
    config: RawImagesConfig,
    storage: StorageResource,
    fetch: FetchResource,
    sources: SourcesResource,
) -> dg.MaterializeResult:
    """Images of one class fetched on one day, stored by sha256, with a Parquet manifest row per URL.

    Incremental: URLs and images ingested by other partitions are skipped. Resumable: a killed run
    picks up where it stopped. One writer at a time: a second run of the same partition fails at once
    naming the first (or waits ``lease_wait_s``), wherever it runs.
    """
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    class_name, day = keys["class"], date.fromisoformat(keys["date"])
    store = storage.open()
    try:
        srcs = sources.load().sources(class_name, base_dir=Path(sources.path).resolve().parent)
    except ValueError as e:  # the file and field at fault: that line is the run's error, not a traceback
        raise dg.Failure(description=_one_line(str(e), sources.path), allow_retries=False) from None
    if config.max_new_per_source is not None:
        srcs = [(s, config.max_new_per_source) for s, _ in srcs]
    if not srcs:
        raise dg.Failure(f"no sources configured for class {class_name!r} in {sources.path}")
    context.log.info(f"{class_name}/{day}: sources {[s.name for s, _ in srcs]}, quotas {[q for _, q in srcs]}")

    fetcher = fetch.fetcher(store)
    try:
        report = ingest_partition(
            store,
            fetcher,
            class_name,
            day,
            srcs,
            concurrency=fetch.concurrency,
            processes=fetch.fetch_processes(),
            max_attempts=config.max_attempts,
            holder=f"Dagster run {context.run.run_id}",
            lease_ttl_s=config.lease_ttl_s,
            lease_wait_s=config.lease_wait_s,
            log=context.log.info,
        )
    except (SourceUnavailable, LeaseError, FetchWorkerError) as e:
        raise dg.Failure(description=str(e), allow_retries=False) from e
    finally:
        fetcher.close()

    failed = report.failure_rate
    metadata: dict[str, object] = {
        "dagster/row_count": len(report.rows),
        "manifest": dg.MetadataValue.path(store.uri(report.manifest_key)),
        "manifest_version": report.version,
        "counts_by_status": dg.MetadataValue.json(report.counts),
        "this_run_by_status": dg.MetadataValue.json(report.run_counts),
        "ok_by_source": dg.MetadataValue.json(report.per_source_ok),
        "ok": report.counts.get("ok", 0),
        "attempted_this_run": report.attempted,
        "skipped_seen_urls": report.skipped_seen_urls,
        "bytes_ok": report.bytes_ok,
        "images_per_s": round(report.images_per_s, 2),
        "elapsed_s": round(report.elapsed_s, 2),
        "failure_rate": round(failed, 4),
        "user_agent": fetch.user_agent,
    }
    ok = [r for r in report.rows if r["status"] == "ok"][: config.preview_count]
    sheet = preview([store.get_bytes(r["storage_key"]) for r in ok])
    if sheet:
        metadata["preview"] = sheet
    reasons = {}
    for r in report.rows:
        if r["status"] not in ("ok", "already_seen"):
            reasons.setdefault(r["status"], r["reason"])
    check = dg.AssetCheckResult(
        check_name="failure_rate",
        passed=failed <= config.max_failure_rate,
        metadata={
            "failure_rate": round(failed, 4),
            "threshold": config.max_failure_rate,
            "example_reasons": dg.MetadataValue.json(reasons),
        },
        description=json.dumps(reasons)[:500] if reasons else None,
    )
    return dg.MaterializeResult(
        metadata=metadata,  # type: ignore[arg-type]
        data_version=dg.DataVersion(report.version),
        check_results=[check],
    )


def _one_line(message: str, path: str) -> str:
    """A sources-file error on one line, naming the file (pydantic's "For further information" links dropped)."""
    lines = [line.strip() for line in message.splitlines()]
    line = " ".join(line for line in lines if line and not line.startswith("For further information"))
    return line if str(Path(path)) in line else f"sources file {path}: {line}"
