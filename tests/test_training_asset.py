"""``gan_generator``: one experiment partition trained through Dagster Pipes on a tiny dataset, and the
shipped experiments file."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets.launch import TrainingLauncher
from assets.resources import StorageResource
from assets.settings import project_dir
from assets.training import build_training_assets, load_experiments, model_key
from ganmodels.checkpoint import file_sha256, load_checkpoint
from ganmodels.train import TrainConfig
from pipelines.storage import LocalStorage
from tests.tiny_dataset import tiny_experiment, write_dataset

TINY = tiny_experiment(negatives_class="null", steps=3, frame_every=3)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    root = tmp_path / "data"
    version = write_dataset(root)  # 64 random 32 px images, classes cat/dog/null, datasets/latest.json
    experiments = tmp_path / "experiments.yaml"
    experiments.write_text(yaml.safe_dump({"tiny": TINY, "other": {**TINY, "classes": ["satellite"]}}, sort_keys=False))
    monkeypatch.setenv("GAN_EXPERIMENTS_FILE", str(experiments))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("GAN_S3_ENDPOINT_URL", raising=False)
    asset = build_training_assets()[0]  # reads $GAN_EXPERIMENTS_FILE; [0] is gan_generator
    resources = {
        "storage": StorageResource(root_url=root.as_uri()),
        "training_launcher": TrainingLauncher(),
    }
    return {"root": root, "version": version, "asset": asset, "resources": resources}


def _materialise(setup: dict, instance: dg.DagsterInstance, steps: int | None = None) -> dg.ExecuteInProcessResult:
    config = {"workers": 0} | ({"steps": steps} if steps is not None else {})
    return dg.materialize(
        [setup["asset"]],
        partition_key="tiny",
        instance=instance,
        resources=setup["resources"],
        run_config={"ops": {"gan_generator": {"config": config}}},
    )


def test_partitions_come_from_the_experiments_file(setup):
    assert setup["asset"].partitions_def.get_partition_keys() == ["tiny", "other"]


def test_train_one_experiment_through_pipes(setup, instance):
    root, version = setup["root"], setup["version"]
    result = _materialise(setup, instance)
    assert result.success
    [mat] = result.asset_materializations_for_node("gan_generator")
    md = mat.metadata
    assert mat.partition == "tiny"
    assert md["dataset_version"].value == version
    assert md["steps"].value == 3
    assert next(iter(md)) == "summary" and md["summary"].value.startswith("step 3 on dataset v1, ")
    sha = md["checkpoint_sha256"].value
    assert isinstance(md["d_loss"].value, float) and isinstance(md["g_loss"].value, float)
    assert md["images_per_s"].value > 0 and md["device"].value == "cpu"
    assert md["experiment_config"].value["net"]["width"] == 8
    assert md["samples"].value.startswith("![samples step-00000003](data:image/png;base64,")
    assert mat.tags["dagster/data_version"] == sha

    # the run dir (config written by the asset) and the checkpoint in storage
    ckpt = Path(md["checkpoint"].value)
    run_dir = Path(md["run_dir"].value)
    assert run_dir.parent == root / "runs" / "tiny" and ckpt.parent == run_dir / "checkpoints"
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == TINY
    store = LocalStorage(root)
    assert store.exists(model_key("tiny", sha))
    assert file_sha256(store.local_path(model_key("tiny", sha))) == sha == file_sha256(ckpt)
    assert md["model"].value == store.uri(model_key("tiny", sha))

    # training progress streamed into Dagster's event log as log records
    logs = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    assert any("step 3/3" in m for m in logs), logs

    # Again, unchanged: the run is complete and its checkpoint is the one reported, so nothing is
    # relaunched (a re-save would change the sha for identical weights); same metadata, same data version.
    mtime = ckpt.stat().st_mtime_ns
    again = _materialise(setup, instance)
    [mat2] = again.asset_materializations_for_node("gan_generator")
    assert mat2.metadata["reused_previous"].value is True and md["reused_previous"].value is False
    assert mat2.metadata["checkpoint_sha256"].value == sha and mat2.metadata["d_loss"] == md["d_loss"]
    assert mat2.tags["dagster/data_version"] == sha
    assert ckpt.stat().st_mtime_ns == mtime

    # Raising steps (run config) resumes the same run from step 3 and trains on to 5.
    longer = _materialise(setup, instance, steps=5)
    [mat3] = longer.asset_materializations_for_node("gan_generator")
    assert mat3.metadata["resumed_from"].value == 3 and mat3.metadata["steps"].value == 5
    sha5 = mat3.metadata["checkpoint_sha256"].value
    assert sha5 != sha and store.exists(model_key("tiny", sha5))
    assert load_checkpoint(Path(mat3.metadata["checkpoint"].value))["step"] == 5
    assert Path(mat3.metadata["run_dir"].value) == run_dir


def test_failed_training_fails_the_step(setup, instance):
    # "other" wants a class the dataset lacks: the trainer exits 1, the step fails, nothing materialises
    result = dg.materialize(
        [setup["asset"]],
        partition_key="other",
        instance=instance,
        resources=setup["resources"],
        raise_on_error=False,
    )
    assert not result.success
    assert not result.asset_materializations_for_node("gan_generator")
    logs = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    assert any("not in dataset" in m for m in logs), logs
    # the step's error is the trainer's own, not just "the external process failed with code 1"
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    assert "training other failed: " in error.message + (error.cause.message if error.cause else "")
    assert "not in dataset" in error.message + (error.cause.message if error.cause else "")


def test_shipped_experiments_file():
    path = project_dir() / "config" / "experiments.yaml"
    experiments = load_experiments(path)
    assert {"dogs", "satellite", "conditional_all"} <= set(experiments)
    configs = {name: TrainConfig.from_dict(spec) for name, spec in experiments.items()}
    dogs = configs["dogs"]
    assert dogs.classes == ("dogs",) and dogs.loss == "hinge" and dogs.net.spectral_norm and not dogs.net.conditional
    assert configs["satellite"].classes == ("satellite",)
    cond = configs["conditional_all"]
    assert cond.net.num_classes == 3 and cond.classes == ("dogs", "null", "satellite")
    built = build_training_assets(path)
    assert [a.key.to_user_string() for a in built] == ["gan_generator", "gan_evaluation", "training_timelapse"]
    assert all(set(a.partitions_def.get_partition_keys()) == set(experiments) for a in built)


def test_bad_experiment_is_named(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"broken": {"loss": "nope"}}))
    with pytest.raises(ValueError, match="broken"):
        load_experiments(path)


def test_training_asset_loads_in_definitions():
    """The shipped code location has the asset, its experiment partitions and the training launcher."""
    from assets.definitions import defs

    defs.validate_loadable(defs)
    asset = defs.resolve_assets_def("gan_generator")
    assert {"dogs", "satellite", "conditional_all"} <= set(asset.partitions_def.get_partition_keys())
    assert {"storage", "training_launcher"} <= asset.required_resource_keys
    assert dg.AssetKey("webdataset_shards") in asset.asset_deps[dg.AssetKey("gan_generator")]
