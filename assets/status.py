"""``gan-pipelines status``: what happened to every asset and partition, read from the Dagster instance.

One line per partition with any activity (materialised, failed or running) and one line counting the
partitions never materialised, so a daily partitioned asset does not print hundreds of lines. The states
come from Dagster's own bookkeeping, the one the UI and the automation conditions read:

- ``running``: a run that targets the partition is in progress;
- ``FAILED``: the latest run that targeted it failed after its last materialisation; the line gives the
  user's error (:func:`assets.errors.cause_line`) and the run id;
- ``stale``: materialised, but Dagster's stale-status resolver finds a new upstream data version or a
  new code version since (the causes follow);
- ``materialised``: when, and its data version (short);
- ``missing``: never materialised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.asset_graph_view.entity_subset import EntitySubset
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleCause, StaleStatus
from dagster._time import get_current_datetime

from assets.errors import cause_line, run_error

__all__ = ["StatusRow", "asset_status", "format_status"]

RUNNING, FAILED, STALE, MATERIALISED, MISSING = "running", "FAILED", "stale", "materialised", "missing"
_VERSION_CHARS = 12
_MAX_CAUSES = 2


@dataclass(frozen=True)
class StatusRow:
    """One partition of an asset (``partition`` None: unpartitioned), or with ``count`` set, that many partitions
    never materialised."""

    asset: str
    partition: str | None
    state: str
    materialised_at: datetime | None = None
    data_version: str | None = None
    detail: str = ""
    count: int | None = None


@dataclass(frozen=True)
class _Activity:
    """The partitions of one asset that Dagster marks materialised, failed and running, out of ``total``."""

    materialised: frozenset[str | None]
    failed: frozenset[str | None]
    running: frozenset[str | None]
    total: int


async def _activity(view: AssetGraphView, key: dg.AssetKey) -> _Activity:
    """The asset graph view's subsets: the same ones the UI's partition bars and ``execution_failed()`` use."""
    full = view.get_full_subset(key=key)

    def keys(subset: EntitySubset[dg.AssetKey]) -> frozenset[str | None]:
        return frozenset(ap.partition_key for ap in subset.expensively_compute_asset_partitions())

    return _Activity(
        materialised=keys(await view.compute_materialized_asset_subset(key)),
        failed=keys(await view.compute_execution_failed_subset(key=key, from_subset=full)),
        running=keys(await view.compute_run_in_progress_subset(key=key, from_subset=full)),
        total=full.size,
    )


def _describe_causes(key: dg.AssetKey, causes: Sequence[StaleCause]) -> str:
    """Root causes in words, e.g. ``raw_images[dogs|2026-11-20] has a new data version``."""
    words = []
    for cause in causes[:_MAX_CAUSES]:
        if cause.asset_key == key:
            words.append(cause.reason)
        else:
            pk = f"[{cause.partition_key}]" if cause.partition_key else ""
            words.append(f"{cause.asset_key.to_user_string()}{pk} {cause.reason}")
    more = len(causes) - _MAX_CAUSES
    return "; ".join(words) + (f" (and {more} more)" if more > 0 else "")


def _run_line(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None) -> str:
    """The latest run that targeted the partition, with its error when it failed."""
    info = instance.get_latest_planned_materialization_info(key, partition)
    if info is None:
        return ""
    failures = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
    records = instance.get_records_for_run(info.run_id, of_type=failures).records
    events = [r.event_log_entry.dagster_event for r in records if r.event_log_entry.dagster_event]
    error = run_error(events, step_key=key.to_python_identifier())
    run = f"run {info.run_id[:8]}"
    return f"{cause_line(error)} ({run})" if error else run


def _partition_row(
    instance: dg.DagsterInstance,
    resolver: CachingStaleStatusResolver,
    key: dg.AssetKey,
    partition: str | None,
    activity: _Activity,
) -> StatusRow:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    record = records[0] if records else None
    when = datetime.fromtimestamp(record.timestamp).astimezone() if record else None
    version = record.asset_materialization.tags.get("dagster/data_version") if record else None
    row = StatusRow(key.to_user_string(), partition, MATERIALISED, when, version and version[:_VERSION_CHARS])
    if partition in activity.running:
        return replace(row, state=RUNNING, detail=_run_line(instance, key, partition))
    if partition in activity.failed:
        return replace(row, state=FAILED, detail=_run_line(instance, key, partition))
    if resolver.get_status(key, partition) == StaleStatus.STALE:
        return replace(row, state=STALE, detail=_describe_causes(key, resolver.get_stale_root_causes(key, partition)))
    return row


def asset_status(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[StatusRow]:
    """Rows for every materialisable asset of ``defs``, upstream first: its active partitions, then the rest."""
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(
            effective_dt=get_current_datetime(), last_event_id=instance.event_log_storage.get_maximum_record_id()
        ),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    keys = [k for k in graph.toposorted_asset_keys if graph.get(k).is_materializable]

    async def gather() -> list[_Activity]:
        return [await _activity(view, key) for key in keys]  # one event loop: the view caches loaders in it

    rows: list[StatusRow] = []
    for key, activity in zip(keys, asyncio.run(gather()), strict=True):
        active = activity.materialised | activity.failed | activity.running
        for partition in sorted(active, key=lambda pk: pk or ""):  # dates in order, by class for class|date
            rows.append(_partition_row(instance, resolver, key, partition, activity))
        never = activity.total - len(active)
        if never:
            count = never if graph.get(key).is_partitioned else None
            rows.append(StatusRow(key.to_user_string(), None, MISSING, count=count))
    return rows


def format_status(rows: Sequence[StatusRow]) -> str:
    """A compact table, one row per line; the detail column comes last and is never cut."""
    table = [("ASSET", "PARTITION", "STATE", "MATERIALISED", "DATA VERSION", "DETAIL")]
    for row in rows:
        partition = row.partition or "-"
        if row.count is not None:
            partition = f"({row.count} partition{'' if row.count == 1 else 's'})"
        when = row.materialised_at.strftime("%Y-%m-%d %H:%M") if row.materialised_at else ""
        table.append((row.asset, partition, row.state, when, row.data_version or "", row.detail))
    widths = [max(len(cells[i]) for cells in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in table)
