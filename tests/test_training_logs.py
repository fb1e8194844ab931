"""The trainer's log lines, run through Dagster Pipes, reach the terminal once and Dagster's event log once.

The trainer used to log both to stderr (which ``PipesSubprocessClient`` forwards to the terminal) and
through Pipes (which Dagster's console logger prints again), so every line appeared twice.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets.launch import TrainingLauncher
from assets.resources import StorageResource
from assets.run import run_all
from assets.training import build_training_assets
from tests.tiny_dataset import tiny_experiment, write_dataset

LINE = "training on cpu from step 0 to 2"


@pytest.fixture
def training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    """``gan_generator`` with one tiny experiment on a tiny local dataset."""
    root = tmp_path / "data"
    write_dataset(root)
    experiments = tmp_path / "experiments.yaml"
    experiments.write_text(yaml.safe_dump({"tiny": tiny_experiment()}))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("GAN_S3_ENDPOINT_URL", raising=False)
    return dg.Definitions(
        assets=build_training_assets(experiments)[:1],  # gan_generator
        resources={"storage": StorageResource(root_url=root.as_uri()), "training_launcher": TrainingLauncher()},
    )


def _event_log_count(instance: dg.DagsterInstance) -> int:
    [run] = instance.get_runs()
    return sum(LINE in (e.user_message or "") for e in instance.all_logs(run.run_id))


def test_each_trainer_line_once_with_dagsters_console_logger(training, instance, capfd):
    """``dagster asset materialize`` and UI runs: Dagster's default console logger."""
    job = training.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        partition_key="tiny",
        run_config={"ops": {"gan_generator": {"config": {"workers": 0}}}},
    )
    assert result.success
    captured = capfd.readouterr()  # file descriptors: the trainer subprocess writes to them directly
    assert (captured.out + captured.err).count(LINE) == 1, captured.err[-3000:]
    assert _event_log_count(instance) == 1


def test_each_trainer_line_once_with_gan_pipelines_run(training, instance, capfd):
    overrides = {"gan_generator": {"config": {"workers": 0}}}
    assert run_all(training, instance, "2026-11-20", {"gan_generator"}, overrides)
    captured = capfd.readouterr()
    assert (captured.out + captured.err).count(LINE) == 1, captured.err[-3000:]
    assert _event_log_count(instance) == 1
