"""The Dagster code location: every asset, check, resource and job of gan-pipelines."""

from __future__ import annotations

import os

import dagster as dg

from assets.curated import curated_images, webdataset_shards
from assets.raw_images import raw_images
from assets.resources import FetchResource, FIDResource, SourcesResource, StorageResource
from assets.training import build_training_assets


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

# Runs gan_evaluation and training_timelapse when their experiment's generator changes (their eager
# automation conditions); on by default, unlike the sensor Dagster would otherwise create switched off.
model_automation = dg.AutomationConditionSensorDefinition(
    "model_automation",
    target=dg.AssetSelection.assets("gan_evaluation", "training_timelapse"),
    default_status=dg.DefaultSensorStatus.RUNNING,
)

defs = dg.Definitions(
    assets=[raw_images, curated_images, webdataset_shards, *build_training_assets()],
    jobs=[ingest_job],
    sensors=[model_automation],
    resources={
        "storage": _storage(),
        "fetch": FetchResource(),
        "sources": SourcesResource(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        "fid": FIDResource(),
    },
)
