"""``gan_generator``: one trained GAN per experiment of ``config/experiments.yaml``, via Dagster Pipes.

Each experiment (name -> TrainConfig mapping) is a partition. A materialisation resolves the latest
dataset version (the data version of ``webdataset_shards``), writes the experiment's config into its run
directory and runs ``python -m ganmodels.train`` through Dagster Pipes with the ``training_launcher``
resource (a local subprocess or a Kubernetes pod, one process or torchrun; see ``assets/launch.py``): the
training logs stream into Dagster and the trainer reports the materialisation itself (losses,
throughput, sample grid...), with the checkpoint's sha256 as the data version. The final checkpoint is
then copied into storage at ``models/<experiment>/<sha256>.pt``.

Run directory: ``runs/<experiment>/<dataset version>-<config hash>/`` (checkpoints/, frames/,
tensorboard/, config.yaml). With a local storage root it sits in that directory (``<root>/runs/...``).
With S3 it is local -- ``$GAN_RUNS_DIR`` or ``<project>/runs`` -- since the trainer writes checkpoints to
a filesystem; only the final checkpoint goes to S3 (``models/...`` above), so keep the run directory on a
persistent volume if you want resumes across machines. The config hash leaves out ``steps``: raising
``steps`` (in the file or with the run config override) resumes the same run from its last checkpoint,
while a new dataset version or any other change of settings starts a fresh run instead of resuming
weights trained on something else.

Materialising again with nothing changed (the run dir's newest checkpoint is at the target step and is
the very file the partition's last materialisation reported) launches no training: the trainer would
resume at the final step, train nothing and re-save the same state, but ``torch.save`` output is not
byte-stable, so the sha256 -- the data version -- would change for identical weights. Instead the
previous materialisation's metadata and data version are reported again (``reused_previous: true``).
To retrain from scratch, delete the run directory.
"""

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from dagster._core.errors import DagsterPipesExecutionError  # not exported by dagster 1.13
from pydantic import Field

from assets.curated import webdataset_shards
from assets.evaluation import build_evaluation_assets
from assets.launch import TrainingLauncher
from assets.metadata import latest_metadata
from assets.resources import StorageResource
from assets.settings import project_dir
from ganmodels.cli import FAILURE_FILE
from ganmodels.train import TrainConfig
from pipelines.dataset import load_index
from pipelines.storage import LocalStorage, Storage, upload_file

__all__ = [
    "TrainingConfig",
    "build_training_assets",
    "default_experiments_file",
    "experiment_partitions",
    "load_experiments",
    "retrain_on_new_data",
]

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def default_experiments_file() -> Path:
    return Path(os.environ.get("GAN_EXPERIMENTS_FILE") or project_dir() / "config" / "experiments.yaml")


#: Keys of an experiment that steer Dagster, not the trainer (they are not part of the TrainConfig).
ORCHESTRATION_KEYS = frozenset({"retrain_on_new_data"})


def _read_experiments(path: str | Path | None) -> tuple[Path, dict[str, dict[str, Any]]]:
    path = Path(path) if path is not None else default_experiments_file()
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty mapping of experiment name -> training config")
    for name, spec in data.items():
        if not isinstance(name, str) or not name or not set(name) <= _NAME_OK or name.startswith("."):
            raise ValueError(f"{path}: experiment name {name!r} must be letters, digits, '_', '-' or '.'")
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: experiment {name!r}: expected a mapping of training settings")
    return path, data


def load_experiments(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Experiment name -> TrainConfig mapping (orchestration keys removed), each validated by building the
    TrainConfig (errors name the experiment)."""
    path, data = _read_experiments(path)
    experiments: dict[str, dict[str, Any]] = {}
    for name, spec in data.items():
        training = {k: v for k, v in spec.items() if k not in ORCHESTRATION_KEYS}
        try:
            TrainConfig.from_dict(training)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: experiment {name!r}: {e}") from e
        experiments[name] = training
    return experiments


def retrain_on_new_data(path: str | Path | None = None) -> list[str]:
    """The experiments marked ``retrain_on_new_data: true``: retrained when a new dataset version appears."""
    _, data = _read_experiments(path)
    flagged = []
    for name, spec in data.items():
        value = spec.get("retrain_on_new_data", False)
        if not isinstance(value, bool):
            raise ValueError(f"experiment {name!r}: retrain_on_new_data must be true or false, got {value!r}")
        if value:
            flagged.append(name)
    return flagged


def experiment_partitions(path: str | Path | None = None) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(list(load_experiments(path)))


class TrainingConfig(dg.Config):
    steps: int | None = Field(
        None, ge=0, description="override the experiment's steps (total, not additional: a higher value resumes)"
    )
    workers: int = Field(2, ge=0, description="data loader worker processes")


def _config_hash(spec: dict[str, Any]) -> str:
    """Identity of a run's settings apart from its length (``steps``), so raising steps resumes."""
    blob = json.dumps({k: v for k, v in spec.items() if k != "steps"}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_dir(store: Storage, experiment: str, dataset_version: str, spec: dict[str, Any]) -> Path:
    """Local run directory (see the module docstring): inside a local storage root, else ``$GAN_RUNS_DIR``."""
    if isinstance(store, LocalStorage):
        base = store.root / "runs"
    else:
        base = Path(os.environ.get("GAN_RUNS_DIR") or project_dir() / "runs")
    return base / experiment / f"{dataset_version}-{_config_hash(spec)}"


def model_key(experiment: str, sha256: str) -> str:
    return f"models/{experiment}/{sha256}.pt"


def _upload(store: Storage, path: Path, key: str) -> None:
    """Copy a checkpoint into storage, skipped when its content-addressed key is already there."""
    if not store.exists(key):
        upload_file(store, path, key)


def _previous_if_unchanged(
    context: dg.AssetExecutionContext, out: Path, target_steps: int
) -> dg.AssetMaterialization | None:
    """The partition's last materialisation when the run is complete and its checkpoint is still that one."""
    from ganmodels.checkpoint import file_sha256, list_checkpoints

    checkpoints = list_checkpoints(out / "checkpoints")
    if not checkpoints or checkpoints[-1][0] != target_steps:
        return None
    previous = latest_metadata(context, context.asset_key)
    if previous is None:
        return None
    md = previous.metadata
    path = checkpoints[-1][1]
    same = (
        "checkpoint" in md
        and "checkpoint_sha256" in md
        and Path(str(md["checkpoint"].value)) == path
        and md["checkpoint_sha256"].value == file_sha256(path)
    )
    return previous if same else None


def build_training_assets(experiments_path: str | Path | None = None) -> list[dg.AssetsDefinition]:
    """The training assets for an experiments file (default: ``$GAN_EXPERIMENTS_FILE`` or the shipped one).

    A factory so that the partitions (the experiment names) are read when definitions are built, from
    the file the caller names; tests point it at their own file.
    """
    experiments = load_experiments(experiments_path)
    partitions = dg.StaticPartitionsDefinition(list(experiments))

    @dg.asset(
        name="gan_generator",
        deps=[webdataset_shards],
        partitions_def=partitions,
        code_version="1",
        group_name="train",
        pool="gpu",  # at most as many concurrent trainings as the pool has slots (the GPUs; default 1)
        kinds={"pytorch"},
    )
    def gan_generator(
        context: dg.AssetExecutionContext,
        config: TrainingConfig,
        storage: StorageResource,
        training_launcher: TrainingLauncher,
    ) -> dg.MaterializeResult:
        """A GAN generator trained on the latest dataset version with one experiment's settings (the
        partition); the trainer reports losses, throughput and samples; data version = checkpoint sha256."""
        experiment = context.partition_key
        spec = experiments[experiment]
        store = storage.open()
        version = load_index(store).version
        out = run_dir(store, experiment, version, spec)
        out.mkdir(parents=True, exist_ok=True)
        config_path = out / "config.yaml"
        config_path.write_text(yaml.safe_dump(spec, sort_keys=False))

        command = [
            sys.executable,
            "-m",
            "ganmodels.train",
            "--config",
            str(config_path),
            "--data-root",
            storage.root_url,
            "--dataset-version",
            version,
            "--out",
            str(out),
            "--workers",
            str(config.workers),
        ]
        if config.steps is not None:
            command += ["--steps", str(config.steps)]
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(project_dir()), os.environ.get("PYTHONPATH")]))}
        if storage.endpoint_url:
            command += ["--endpoint-url", storage.endpoint_url]
        if storage.region_name:
            env["AWS_DEFAULT_REGION"] = storage.region_name
        target = config.steps if config.steps is not None else TrainConfig.from_dict(spec).steps
        previous = _previous_if_unchanged(context, out, target)
        if previous is not None:
            sha = previous.metadata["checkpoint_sha256"].value
            context.log.info(f"{experiment}: already trained to step {target} on {version} ({sha}); not relaunched")
            _upload(store, Path(previous.metadata["checkpoint"].value), model_key(experiment, sha))
            return dg.MaterializeResult(
                metadata={**previous.metadata, "reused_previous": True},
                data_version=dg.DataVersion(sha),
            )

        context.log.info(f"experiment {experiment} on dataset {version}; run dir {out}")
        failure = out / FAILURE_FILE
        failure.unlink(missing_ok=True)
        try:
            result = training_launcher.run(
                command=command,
                context=context,
                env=env,
                cwd=str(project_dir()),
                extras={"experiment": experiment, "dataset_version": version},
            ).get_materialize_result()
        except DagsterPipesExecutionError as e:
            if not failure.is_file():  # the process died without a word (killed, out of memory...)
                raise
            raise dg.Failure(f"training {experiment} failed: {failure.read_text().strip()}") from e

        metadata = dict(result.metadata or {})
        sha = metadata["checkpoint_sha256"].value
        checkpoint = Path(metadata["checkpoint"].value)
        key = model_key(experiment, sha)
        _upload(store, checkpoint, key)
        context.log.info(f"checkpoint {checkpoint} -> {store.uri(key)}")
        metadata["model"] = dg.MetadataValue.path(store.uri(key))
        metadata["run_dir"] = dg.MetadataValue.path(str(out))
        metadata["reused_previous"] = False
        return dg.MaterializeResult(
            asset_key=result.asset_key,
            metadata=metadata,
            data_version=result.data_version,
            check_results=result.check_results,
        )

    return [gan_generator, *build_evaluation_assets(partitions)]
