"""Day-to-day operation: the daily refresh, retraining on new data, and failures where users look.

- **Daily refresh** (``daily_refresh`` schedule, cron ``$GAN_REFRESH_CRON``, default 03:00, in
  ``$GAN_TIMEZONE``, default UTC): one ``ingest`` run per class for that day's ``raw_images``
  partition. ``curated_images`` and ``webdataset_shards`` follow by declarative automation
  (``assets.curated.AFTER_INGEST``): they run once the day's raw runs are all done, not once per class. A job for
  the whole chain is not possible: ``raw_images`` is partitioned (class x day) and the curated set is
  not, and one Dagster run covers one partition. The schedule starts switched off unless
  ``GAN_SCHEDULES_RUNNING=1``: scraping public APIs should start when the user says so.
- **Retraining** (``retrain_on_new_data`` sensor, on): when ``webdataset_shards`` materialises a new
  dataset version, a ``gan_generator`` run for every experiment marked ``retrain_on_new_data: true``
  in the experiments file (run key = experiment + dataset version, so each version trains once).
  Evaluation and time-lapse follow through their own eager conditions.
- **Failures** (``record_run_failures`` sensor, on): each failed run becomes an asset observation on
  every asset it targeted (shown on the asset's page in the UI with the run id and the error) and a
  JSON record under ``ops/failures/<day>/<run id>.json`` in storage.
"""

import json
import os
from datetime import UTC, datetime

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.errors import describe
from assets.partitions import daily_partitions
from assets.resources import StorageResource
from pipelines.sources import CLASSES

__all__ = ["build_automation", "record_run_failures"]


def _on(env: str, default: bool) -> bool:
    return os.environ.get(env, "1" if default else "0") == "1"


def _sensor_status(env: str, default: bool) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if _on(env, default) else dg.DefaultSensorStatus.STOPPED


def daily_refresh_schedule(ingest_job: UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    cron = os.environ.get("GAN_REFRESH_CRON", "0 3 * * *")
    timezone = os.environ.get("GAN_TIMEZONE", "UTC")
    on = _on("GAN_SCHEDULES_RUNNING", False)  # scraping public APIs starts when the user says so
    status = dg.DefaultScheduleStatus.RUNNING if on else dg.DefaultScheduleStatus.STOPPED

    @dg.schedule(
        name="daily_refresh",
        job=ingest_job,
        cron_schedule=cron,
        execution_timezone=timezone,
        default_status=status,
        description=f"Scrape the day's raw_images for every class ({cron}, {timezone}); curation and shards follow.",
    )
    def daily_refresh(context: dg.ScheduleEvaluationContext):
        day = context.scheduled_execution_time.date().isoformat()
        if not daily_partitions.has_partition_key(day):
            return dg.SkipReason(f"{day} is outside the daily partitions (GAN_PARTITIONS_START)")
        return [
            dg.RunRequest(
                run_key=f"{cls}|{day}",
                partition_key=dg.MultiPartitionKey({"class": cls, "date": day}),
                tags={"gan-pipelines/trigger": "daily_refresh"},
            )
            for cls in CLASSES
        ]

    return daily_refresh


def retrain_sensor(experiments: list[str], train_job: UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    @dg.asset_sensor(
        name="retrain_on_new_data",
        asset_key=dg.AssetKey("webdataset_shards"),
        job=train_job,
        default_status=_sensor_status("GAN_SENSORS_RUNNING", True),
        description="Train the experiments marked retrain_on_new_data when a new dataset version appears.",
    )
    def retrain_on_new_data(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        mat = asset_event.asset_materialization
        version = str(mat.metadata["dataset_version"].value) if mat and "dataset_version" in mat.metadata else None
        if version is None or not experiments:
            return dg.SkipReason("no dataset version in the materialisation, or no experiment to retrain")
        return [
            dg.RunRequest(
                run_key=f"{name}|{version}",
                partition_key=name,
                tags={"gan-pipelines/trigger": "retrain_on_new_data", "gan-pipelines/dataset_version": version},
            )
            for name in experiments
        ]

    return retrain_on_new_data


@dg.run_failure_sensor(
    name="record_run_failures",
    default_status=_sensor_status("GAN_SENSORS_RUNNING", True),
    monitor_all_code_locations=False,
    description="Record each failed run on the assets it targeted and in storage (ops/failures/).",
)
def record_run_failures(context: dg.RunFailureSensorContext, storage: StorageResource) -> None:
    run = context.dagster_run
    error = context.failure_event.message or "run failed"
    partition = run.tags.get("dagster/partition")
    planned = context.instance.get_records_for_run(
        run_id=run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    ).records
    targets = sorted({r.event_log_entry.dagster_event.asset_key for r in planned} | set(run.asset_selection or ()))
    record = {
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": partition,
        "assets": [k.to_user_string() for k in targets],
        "error": error,
        "step_failures": [
            {"step": e.step_key, "error": describe(e.event_specific_data.error)}
            for e in context.get_step_failure_events()
            if e.event_specific_data and e.event_specific_data.error
        ],
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    store = storage.open()
    key = f"ops/failures/{record['at'][:10]}/{run.run_id}.json"
    store.put_bytes(key, json.dumps(record, indent=1).encode())
    for asset_key in targets:
        context.instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key=asset_key,
                partition=partition,
                metadata={
                    "failed_run": dg.MetadataValue.dagster_run(run.run_id),
                    "error": dg.MetadataValue.text(error[:2000]),
                    "failure_record": dg.MetadataValue.path(store.uri(key)),
                },
            )
        )
    context.log.info(f"recorded failure of run {run.run_id} ({record['assets']})")


def build_automation(
    ingest_job: UnresolvedAssetJobDefinition, train_job: UnresolvedAssetJobDefinition, retrain: list[str]
) -> tuple[list[dg.ScheduleDefinition], list[dg.SensorDefinition]]:
    """The schedule and sensors of the code location (module docstring)."""
    return [daily_refresh_schedule(ingest_job)], [retrain_sensor(retrain, train_job), record_run_failures]
