"""Day-to-day operation: the daily schedule, curation after ingest, retraining on new data, failure records,
and the instance limits (GPU pool, one raw run per class)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg
import pytest
import yaml

from assets.automation import build_automation, record_run_failures
from assets.curated import curated_images, webdataset_shards
from assets.definitions import defs as project_defs
from assets.raw_images import raw_images
from assets.resources import StorageResource
from assets.settings import LOCAL_DAGSTER_YAML, ensure_dagster_home
from assets.training import build_training_assets, load_experiments, retrain_on_new_data
from tests.test_raw_images_asset import DAY, materialise, resources, web_sources, write_sources

INGEST = dg.define_asset_job("ingest", selection=dg.AssetSelection.assets(raw_images))
TRAIN = dg.define_asset_job("train", selection=dg.AssetSelection.assets("gan_generator"))


def test_daily_schedule_requests_every_class_for_the_day(monkeypatch):
    monkeypatch.setenv("GAN_REFRESH_CRON", "30 4 * * *")
    monkeypatch.setenv("GAN_TIMEZONE", "Europe/Paris")
    [schedule], _ = build_automation(INGEST, TRAIN, [])
    assert schedule.cron_schedule == "30 4 * * *" and schedule.execution_timezone == "Europe/Paris"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED  # scraping starts when the user says so
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 20, 4, 30, tzinfo=UTC))
    requests = schedule(context)
    assert sorted(r.partition_key for r in requests) == [
        dg.MultiPartitionKey({"class": c, "date": DAY}) for c in ("dogs", "null", "satellite")
    ]
    assert len({r.run_key for r in requests}) == 3  # one run per class and day, never twice
    before = dg.build_schedule_context(scheduled_execution_time=datetime(2020, 1, 1, tzinfo=UTC))
    assert schedule(before).skip_message.startswith("2020-01-01 is outside")
    monkeypatch.setenv("GAN_SCHEDULES_RUNNING", "1")
    [running], _ = build_automation(INGEST, TRAIN, [])
    assert running.default_status == dg.DefaultScheduleStatus.RUNNING


def _requested(defs: dg.Definitions, instance: dg.DagsterInstance, cursor):
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    return {r.key.to_user_string() for r in result.results if r.true_subset.size}, result.cursor


def test_curation_and_shards_follow_new_raw_data_once(tmp_path, fakeweb, instance):
    res = resources(tmp_path, write_sources(tmp_path / "s.yaml", web_sources(fakeweb, quota=3)))
    defs = dg.Definitions(assets=[raw_images, curated_images, webdataset_shards], resources=res)
    wanted, cursor = _requested(defs, instance, None)
    assert wanted == set()  # no raw data yet; the never-scraped days do not block (or trigger) anything
    for c in ("dogs", "null", "satellite"):
        assert materialise(res, instance, c).success
    wanted, cursor = _requested(defs, instance, cursor)
    # one curation for the three new partitions, and the shards after it (one run; the daemon launches it)
    assert wanted == {"curated_images", "webdataset_shards"}
    config = {"ops": {"webdataset_shards": {"config": {"resolution": 32, "holdout_fraction": 0.2}}}}
    chain = [curated_images, webdataset_shards]
    assert dg.materialize([raw_images, *chain], selection=chain, instance=instance, resources=res, run_config=config)
    wanted, cursor = _requested(defs, instance, cursor)
    assert wanted == set()  # caught up: nothing runs


def test_new_dataset_version_retrains_the_marked_experiments(tmp_path, instance):
    spec = {"net": {"resolution": 32, "width": 8, "latent_dim": 16}, "classes": ["dog"], "steps": 2}
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump({"keep": spec, "fresh": {**spec, "retrain_on_new_data": True}}))
    assert retrain_on_new_data(path) == ["fresh"]
    assert "retrain_on_new_data" not in load_experiments(path)["fresh"]  # not a training setting
    _, sensors = build_automation(INGEST, TRAIN, retrain_on_new_data(path))
    sensor = next(s for s in sensors if s.name == "retrain_on_new_data")
    defs = dg.Definitions(
        assets=[webdataset_shards, *build_training_assets(path)],
        jobs=[TRAIN],
        sensors=[sensor],
        resources=project_defs.resources,  # the code location's own resources (not used: nothing runs)
    )

    def tick(cursor: str | None) -> dg.SensorExecutionData:
        context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
        return sensor.evaluate_tick(context)

    first = tick(None)
    assert not first.run_requests
    shards = dg.AssetKey("webdataset_shards")
    instance.report_runless_asset_event(dg.AssetMaterialization(shards, metadata={"dataset_version": "v7"}))
    second = tick(first.cursor)
    assert [(r.partition_key, r.run_key) for r in second.run_requests] == [("fresh", "fresh|v7")]
    assert second.run_requests[0].tags["gan-pipelines/dataset_version"] == "v7"
    assert not tick(second.cursor).run_requests  # the same version never trains twice


def test_failures_are_recorded_on_the_asset_and_in_storage(tmp_path, instance):
    @dg.asset
    def fragile() -> None:
        raise RuntimeError("disk full on purpose")

    result = dg.materialize([fragile], instance=instance, raise_on_error=False)
    assert not result.success
    storage = StorageResource(root_url=(tmp_path / "data").as_uri())
    run = instance.get_run_by_id(result.run_id)
    context = dg.build_run_status_sensor_context(
        sensor_name="record_run_failures",
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=run,
        resources={"storage": storage},
    ).for_run_failure()
    record_run_failures(context, storage=storage)

    [record_path] = (tmp_path / "data" / "ops" / "failures").rglob(f"{result.run_id}.json")
    record = json.loads(record_path.read_text())
    assert record["assets"] == ["fragile"] and record["run_id"] == result.run_id
    assert any("disk full on purpose" in f["error"] for f in record["step_failures"])
    [observation] = instance.fetch_observations(dg.AssetKey("fragile"), limit=1).records
    md = observation.asset_observation.metadata
    assert md["failed_run"].value == result.run_id and md["failure_record"].value == storage.open().uri(
        f"ops/failures/{record['at'][:10]}/{result.run_id}.json"
    )


def test_local_instance_limits_gpu_pool_and_raw_runs_per_class(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = ensure_dagster_home()
    assert (home / "dagster.yaml").read_text() == LOCAL_DAGSTER_YAML
    with dg.DagsterInstance.get() as inst:  # Dagster's own config schema accepts the file
        config = inst.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        [limit] = config.run_queue_config.tag_concurrency_limits
        assert limit["key"] == "dagster/partition/class" and limit["limit"] == 1
    (home / "dagster.yaml").write_text("# mine\n")
    ensure_dagster_home()
    assert (home / "dagster.yaml").read_text() == "# mine\n"  # a user's file is never overwritten
    [gen, *_] = build_training_assets()
    assert gen.op.pool == "gpu"


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch):
    for var in ("GAN_REFRESH_CRON", "GAN_TIMEZONE", "GAN_SCHEDULES_RUNNING", "GAN_SENSORS_RUNNING"):
        monkeypatch.delenv(var, raising=False)
