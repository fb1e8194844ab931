"""Reading what a finished command recorded in a Dagster instance, for the end-to-end tests."""

from __future__ import annotations

import dagster as dg


def latest_metadata(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> dict:
    """The raw metadata values of an asset (partition)'s latest materialisation; fails when there is none."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    assert records, f"{key}[{partition}] was not materialised"
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
