"""The Dagster code location: every asset, check, resource and job of gan-pipelines."""

from __future__ import annotations

import os

import dagster as dg

from assets.automation import build_automation
from assets.curated import curated_images, webdataset_shards
from assets.launch import TrainingLauncher, k8s_executor
from assets.raw_images import raw_images
from assets.resources import FetchResource, FIDResource, SourcesResource, StorageResource
from assets.settings import warn_if_temporary_instance
from assets.training import build_training_assets, retrain_on_new_data

warn_if_temporary_instance()


def _storage() -> StorageResource:
    # Show the environment variable in the UI when the deployment sets one.
    if os.environ.get("GAN_DATA_ROOT"):
        return StorageResource(
            root_url=dg.EnvVar("GAN_DATA_ROOT"),
            endpoint_url=dg.EnvVar("GAN_S3_ENDPOINT_URL") if os.environ.get("GAN_S3_ENDPOINT_URL") else None,
        )
    return StorageResource()


ingest_job = dg.define_asset_job(
    "ingest",
    selection=dg.AssetSelection.assets(raw_images),
    description="Fetch new raw images for one class and day.",
)
train_job = dg.define_asset_job(
    "train",
    selection=dg.AssetSelection.assets("gan_generator"),
    description="Train one experiment on the latest dataset version.",
)

# Evaluates every asset's automation condition (curation after ingest; evaluation and time-lapse after
# training); on by default, unlike the sensor Dagster would otherwise create switched off.
automation = dg.AutomationConditionSensorDefinition(
    "automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
schedules, sensors = build_automation(ingest_job, train_job, retrain_on_new_data())

_launcher = TrainingLauncher.from_env()

defs = dg.Definitions(
    assets=[raw_images, curated_images, webdataset_shards, *build_training_assets()],
    jobs=[ingest_job, train_job],
    schedules=schedules,
    sensors=[automation, *sensors],
    # GAN_EXECUTOR=k8s (deploy/k8s/values.yaml): every step in its own pod; gan_generator's gets the GPUs.
    executor=k8s_executor(_launcher) if os.environ.get("GAN_EXECUTOR") == "k8s" else None,
    resources={
        "storage": _storage(),
        "fetch": FetchResource(),
        "sources": SourcesResource(),
        "fid": FIDResource(),
        "training_launcher": _launcher,
    },
)
