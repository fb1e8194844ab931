"""``gan_evaluation`` and ``training_timelapse`` on a real Dagster instance: scores, checks, lineage, reuse
of the real-image statistics, and automation that re-runs exactly what a new checkpoint makes stale."""

from __future__ import annotations

import math
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from assets.launch import TrainingLauncher
from assets.resources import FIDResource, StorageResource
from assets.training import build_training_assets
from ganmodels.checkpoint import file_sha256
from pipelines.storage import LocalStorage
from tests.tiny_dataset import tiny_experiment, write_dataset

pytestmark = pytest.mark.slow

TINY = tiny_experiment(steps=3, frame_every=1)
COND = {**TINY, "net": {**TINY["net"], "num_classes": 2}, "classes": ["dog", "null"], "steps": 2}
EVAL = {"num_samples": 8, "batch_size": 8, "kid_subsets": 5, "kid_subset_size": 6}
TIMELAPSE = {"size": 64, "gif_size": 32, "fps": 4}
GEN, EVA, TL = dg.AssetKey("gan_generator"), dg.AssetKey("gan_evaluation"), dg.AssetKey("training_timelapse")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fid_weights: Path) -> dict:
    root = tmp_path / "data"
    write_dataset(root, n=48, holdout=24)  # 8 holdout images per class
    experiments = tmp_path / "experiments.yaml"
    experiments.write_text(yaml.safe_dump({"tiny": TINY, "cond": COND}, sort_keys=False))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("GAN_S3_ENDPOINT_URL", raising=False)
    assets = build_training_assets(experiments)
    resources = {
        "storage": StorageResource(root_url=root.as_uri()),
        "training_launcher": TrainingLauncher(),
        "fid": FIDResource(weights_path=str(fid_weights), allow_download=False, device="cpu"),
    }
    return {"root": root, "assets": assets, "resources": resources}


def _run(env: dict, instance: dg.DagsterInstance, keys: list[dg.AssetKey], partition: str, assets=None, **gen):
    assets = assets or env["assets"]
    config = {
        "gan_generator": {"config": {"workers": 0, **gen}},
        "gan_evaluation": {"config": EVAL},
        "training_timelapse": {"config": TIMELAPSE},
    }
    names = {k.to_user_string() for k in keys}
    result = dg.materialize(
        assets,
        selection=keys,
        partition_key=partition,
        instance=instance,
        resources=env["resources"],
        run_config={"ops": {k: v for k, v in config.items() if k in names}},
    )
    assert result.success
    return result


def _md(result: dg.ExecuteInProcessResult, node: str) -> dict:
    [mat] = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def test_scores_checks_lineage_and_reuse(env, instance):
    store = LocalStorage(env["root"])
    gen = _md(_run(env, instance, [GEN], "tiny"), "gan_generator")
    result = _run(env, instance, [EVA, TL], "tiny")
    md = _md(result, "gan_evaluation")

    # the scores of every saved step (0, 2, 3), the final ones at the top
    assert [s["step"] for s in md["scores"]] == [0, 2, 3] and md["scored_now"] == 3
    assert md["fid"] == md["scores"][-1]["fid"] and math.isfinite(md["fid"]) and md["fid"] > 0
    assert math.isfinite(md["kid"]) and md["kid_std"] >= 0
    assert md["num_samples"] == 8 and md["num_real"] == 8 and md["kid_subset_size"] == 6
    assert md["fid_over_steps"].startswith("![FID over steps](data:image/png;base64,")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["scores_finite"].passed
    assert checks["beats_step_zero"].metadata["fid_step_0"].value == md["scores"][0]["fid"]

    # lineage: the checkpoint the generator reported, its dataset, and the table of the dataset's images
    assert md["checkpoint_sha256"] == gen["checkpoint_sha256"] == file_sha256(gen["checkpoint"])
    assert md["dataset_version"] == gen["dataset_version"] == "v1"
    assert md["dataset_samples"] == store.uri("datasets/versions/v1/samples.parquet")
    assert md["real_stats"] == {
        "dog": {"key": store.uri("eval/real/v1/" + md["fid_weights_sha256"][:16] + "/dog.npz"), "reused": False}
    }

    # the time-lapse: one frame per step, in storage, with the checkpoint it shows
    tl = _md(result, "training_timelapse")
    assert tl["frame_count"] == 3 and tl["checkpoint_sha256"] == gen["checkpoint_sha256"]
    video = store.local_path(f"timelapse/tiny/{gen['checkpoint_sha256']}.mp4")
    assert tl["video"] == store.uri(f"timelapse/tiny/{gen['checkpoint_sha256']}.mp4") and video.stat().st_size > 0
    assert tl["duration_s"] == pytest.approx(3 / 4, abs=0.05)

    # Again: every score and the real statistics come from storage; same data version.
    again = _run(env, instance, [EVA], "tiny")
    md2 = _md(again, "gan_evaluation")
    assert md2["scored_now"] == 0 and md2["real_stats"]["dog"]["reused"] is True
    assert md2["scores"] == md["scores"]
    data_version = [m.tags["dagster/data_version"] for m in again.asset_materializations_for_node("gan_evaluation")]
    assert data_version == [
        m.tags["dagster/data_version"] for m in result.asset_materializations_for_node("gan_evaluation")
    ]


def test_conditional_model_gets_per_class_scores(env, instance):
    _run(env, instance, [GEN], "cond")
    md = _md(_run(env, instance, [EVA], "cond"), "gan_evaluation")
    assert set(md["per_class"]) == {"dog", "null"}
    assert all(math.isfinite(v["fid"]) for v in md["per_class"].values())
    assert md["num_real"] == 16 and set(md["real_stats"]) == {"dog", "null"}


def test_missing_weights_fail_with_instructions(env, instance, tmp_path):
    env["resources"]["fid"] = FIDResource(cache_dir=str(tmp_path / "empty"), allow_download=False)
    _run(env, instance, [GEN], "tiny")
    with pytest.raises(Exception, match="GAN_FID_WEIGHTS"):
        dg.materialize(
            env["assets"],
            selection=[EVA],
            partition_key="tiny",
            instance=instance,
            resources=env["resources"],
            run_config={"ops": {"gan_evaluation": {"config": EVAL}}},
        )


def _stale(assets, instance) -> set[tuple[str, str]]:
    resolver = get_stale_status_resolver(instance, assets)  # what the UI's "stale" badges show
    return {
        (a.key.to_user_string(), p)
        for a in assets
        for p in a.partitions_def.get_partition_keys()
        if resolver.get_status(a.key, p) == StaleStatus.STALE
    }


def _requested(env, assets, instance, cursor):
    defs = dg.Definitions(assets=assets, resources=env["resources"])
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    wanted = {(k.to_user_string(), p) for k in (EVA, TL) for p in result.get_requested_partitions(k)}
    return wanted, result.cursor


def test_a_new_checkpoint_reruns_only_its_evaluation_and_timelapse(env, instance):
    assets = env["assets"]
    wanted, cursor = _requested(env, assets, instance, None)  # the sensor's first tick: no generator yet
    assert wanted == set()
    _run(env, instance, [GEN], "tiny")
    _run(env, instance, [GEN], "cond")
    # Both experiments' generators are new: their evaluation and time-lapse are requested.
    wanted, cursor = _requested(env, assets, instance, cursor)
    assert wanted == {
        ("gan_evaluation", "tiny"),
        ("training_timelapse", "tiny"),
        ("gan_evaluation", "cond"),
        ("training_timelapse", "cond"),
    }
    for p in ("tiny", "cond"):
        _run(env, instance, [EVA, TL], p)
    assert _stale(assets, instance) == set()
    wanted, cursor = _requested(env, assets, instance, cursor)
    assert wanted == set()  # nothing changed: nothing runs

    # Retrain one experiment further: only its evaluation and time-lapse are stale and get requested.
    _run(env, instance, [GEN], "tiny", steps=4)
    assert _stale(assets, instance) == {("gan_evaluation", "tiny"), ("training_timelapse", "tiny")}
    wanted, cursor = _requested(env, assets, instance, cursor)
    assert wanted == {("gan_evaluation", "tiny"), ("training_timelapse", "tiny")}
    md = _md(_run(env, instance, [EVA, TL], "tiny"), "gan_evaluation")
    assert [s["step"] for s in md["scores"]] == [0, 2, 3, 4] and md["scored_now"] == 1  # older steps reused
    assert _stale(assets, instance) == set()
    wanted, cursor = _requested(env, assets, instance, cursor)
    assert wanted == set()

    # A new evaluation code version: the evaluations are stale, the time-lapses not; automation leaves it
    # to the user (eager conditions react to new upstream data, not to code).
    bumped = [
        a.map_asset_specs(lambda s: s.replace_attributes(code_version="2")) if a.key == EVA else a for a in assets
    ]
    assert _stale(bumped, instance) == {("gan_evaluation", "tiny"), ("gan_evaluation", "cond")}
    wanted, cursor = _requested(env, bumped, instance, cursor)
    assert wanted == set()
