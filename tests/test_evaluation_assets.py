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
EVAL = {"num_samples": 8, "batch_size": 8, "kid_subsets": 5, "kid_subset_size": 6, "memorization_train_samples": 6}
TIMELAPSE = {"size": 64, "gif_size": 32, "fps": 4}
GEN, EVA, TL = dg.AssetKey("gan_generator"), dg.AssetKey("gan_evaluation"), dg.AssetKey("training_timelapse")
SERIES = "(8 samples, unofficial weights)"
COPY_SERIES = "(8 samples, 6 train, unofficial weights)"  # 6 of the 16 training images of "dog"


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
        "fid": FIDResource(
            weights_path=str(fid_weights), allow_download=False, allow_unofficial_weights=True, device="cpu"
        ),
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
    # one metadata series per sample count and weights, so the UI's history plot never mixes them
    fid, kid = md[f"fid {SERIES}"], md[f"kid {SERIES}"]
    assert fid == md["scores"][-1]["fid"] and math.isfinite(fid) and fid > 0
    assert math.isfinite(kid) and md["kid_std"] >= 0
    assert md["num_samples"] == 8 and md["num_real"] == 8 and md["kid_subset_size"] == 6
    assert md["scores_over_steps"].startswith("![FID and KID over steps](data:image/png;base64,")
    # the summary comes first and says what the numbers are worth: counts, and not comparable (test weights)
    assert next(iter(md)) == "summary" and md["summary"].startswith(f"FID {fid:.1f} (8 generated vs 8 real)")
    assert "not comparable" in md["summary"] and md["fid_status"] == "unofficial weights: not comparable"
    assert "Inception feature dimension" in md["warnings"]  # 8 real images are far too few
    report = Path(md["report"].removeprefix("file://"))
    assert report == store.local_path(f"reports/tiny/{gen['checkpoint_sha256']}.html") and report.is_file()
    assert store.local_path("reports/tiny/latest.html").read_bytes() == report.read_bytes()
    page = report.read_text()
    assert "<video" in page  # the time-lapse ran first and is embedded

    # precision/recall beside FID/KID, named like them; the memorisation check of the final step
    precision, recall = md[f"precision {SERIES}"], md[f"recall {SERIES}"]
    assert (precision, recall) == (md["scores"][-1]["precision"], md["scores"][-1]["recall"])
    assert 0 <= precision <= 1 and 0 <= recall <= 1
    assert 0 <= md[f"copy_rate {COPY_SERIES}"] <= 1 and 0 <= md["holdout_copy_rate"] <= 1
    assert md["memorization_train"] == 6 and md["memorization_status"].startswith("step 3: ")
    assert md["memorization"].startswith(
        "![most copy-like samples, each followed by its nearest training images](data:"
    )
    assert md["train_stats"] == {
        "dog": {"key": store.uri(f"eval/train/v1/{md['fid_weights_sha256'][:16]}/dog.npz"), "reused": False}
    }
    assert 'id="memorization-grid"' in page and "Copy rate " in page and "<th>precision</th>" in page
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
    assert tl["frame_count"] == 4 and tl["checkpoint_sha256"] == gen["checkpoint_sha256"]  # steps 0..3
    video = store.local_path(f"timelapse/tiny/{gen['checkpoint_sha256']}.mp4")
    assert tl["video"] == store.uri(f"timelapse/tiny/{gen['checkpoint_sha256']}.mp4") and video.stat().st_size > 0
    assert tl["duration_s"] == pytest.approx(4 / 4, abs=0.05)
    # ... and the final generator's latent space beside it: an interpolation clip and truncation grids
    assert tl["interpolation_video"] == store.uri(f"timelapse/tiny/{gen['checkpoint_sha256']}-interpolation.mp4")
    assert store.local_path(f"timelapse/tiny/{gen['checkpoint_sha256']}-interpolation.mp4").stat().st_size > 0
    assert tl["truncation_psi"] == [1.0, 0.7, 0.5] and set(tl["truncation_grids"]) == {"1", "0.7", "0.5"}

    # Again: every score and the real statistics come from storage; same data version.
    again = _run(env, instance, [EVA], "tiny")
    md2 = _md(again, "gan_evaluation")
    assert md2["scored_now"] == 0 and md2["real_stats"]["dog"]["reused"] is True
    assert md2["scores"] == md["scores"] and md2["memorization"] == md["memorization"]
    assert md2["train_stats"]["dog"]["reused"] is True
    data_version = [m.tags["dagster/data_version"] for m in again.asset_materializations_for_node("gan_evaluation")]
    assert data_version == [
        m.tags["dagster/data_version"] for m in result.asset_materializations_for_node("gan_evaluation")
    ]


def test_conditional_model_gets_per_class_scores(env, instance):
    _run(env, instance, [GEN], "cond")
    md = _md(_run(env, instance, [EVA], "cond"), "gan_evaluation")
    assert set(md["per_class"]) == {"dog", "null"}
    assert all(math.isfinite(v["fid"]) for v in md["per_class"].values())
    assert set(md["scores"][-1]["per_class"]) == {"dog", "null"}
    assert md["num_real"] == 16 and set(md["real_stats"]) == {"dog", "null"}
    assert md["memorization_train"] == 6 and set(md["train_stats"]) == {"dog", "null"}  # 3 of each class


def test_without_weights_fid_is_skipped_and_said_so(env, instance, tmp_path):
    """No weights (a newcomer's offline machine): no number pretends to be a FID; the rest is computed."""
    env["resources"]["fid"] = FIDResource(cache_dir=str(tmp_path / "empty"), allow_download=False)
    _run(env, instance, [GEN], "tiny")
    result = _run(env, instance, [TL, EVA], "tiny")
    md = _md(result, "gan_evaluation")
    assert md["summary"].startswith("FID skipped: no FID Inception weights on this machine")
    assert md["fid_status"] == "skipped" and not any(k.startswith(("fid (", "kid (")) for k in md)
    assert all(s["fid"] is None and s["kid"] is None and s["precision"] is None for s in md["scores"])
    assert md["memorization_status"].startswith("skipped: no FID Inception weights on this machine")
    assert not any(k.startswith(("precision (", "recall (", "copy_rate (")) for k in md) and "memorization" not in md
    # computed without weights (the 3-step tiny G still draws near-constant images: diversity about 0)
    assert md["num_real"] == 8 and 0 <= md["diversity"] < md["real_diversity"]
    page = Path(md["report"].removeprefix("file://")).read_text()
    assert "GAN_FID_WEIGHTS" in page and "Memorisation check skipped: no FID Inception weights" in page
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["scores_finite"].passed and checks["scores_finite"].severity == dg.AssetCheckSeverity.WARN


def test_unofficial_weights_are_refused_unless_allowed(env, instance, fid_weights, monkeypatch):
    monkeypatch.delenv("GAN_FID_ALLOW_UNOFFICIAL_WEIGHTS", raising=False)
    env["resources"]["fid"] = FIDResource(weights_path=str(fid_weights), allow_download=False, device="cpu")
    _run(env, instance, [GEN, TL], "tiny")
    with pytest.raises(Exception, match=r"not the official .* \$GAN_FID_ALLOW_UNOFFICIAL_WEIGHTS=1"):
        dg.materialize(
            env["assets"],
            selection=[EVA],
            partition_key="tiny",
            instance=instance,
            resources=env["resources"],
            run_config={"ops": {"gan_evaluation": {"config": EVAL}}},
        )
    monkeypatch.setenv("GAN_FID_ALLOW_UNOFFICIAL_WEIGHTS", "1")  # the opt-in, from the environment
    md = _md(_run(env, instance, [EVA], "tiny"), "gan_evaluation")
    assert md["fid_status"] == "unofficial weights: not comparable" and f"fid {SERIES}" in md


def test_an_unattended_evaluation_keeps_the_sample_count_last_chosen(env, instance):
    """The automation sensor launches with default config: it reuses the user's count, and its scores."""
    _run(env, instance, [GEN, TL], "tiny")
    first = _md(_run(env, instance, [EVA], "tiny"), "gan_evaluation")
    result = dg.materialize(
        env["assets"], selection=[EVA], partition_key="tiny", instance=instance, resources=env["resources"]
    )
    again = _md(result, "gan_evaluation")
    assert again["num_samples"] == first["num_samples"] == 8 and again["scored_now"] == 0
    chosen = {k: v for k, v in EVAL.items() if k != "batch_size"}
    assert again["eval_settings"] == first["eval_settings"] == {**chosen, "seed": 0}
    assert again["memorization_train"] == 6


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

    # Re-materialising a generator with nothing changed records a new materialisation with the same data
    # version: eager() would re-run everything downstream; a data-version condition runs nothing.
    assert _md(_run(env, instance, [GEN], "tiny"), "gan_generator")["reused_previous"] is True
    assert _stale(assets, instance) == set()
    wanted, cursor = _requested(env, assets, instance, cursor)
    assert wanted == set()

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
        a.map_asset_specs(lambda s: s.replace_attributes(code_version="new")) if a.key == EVA else a for a in assets
    ]
    assert _stale(bumped, instance) == {("gan_evaluation", "tiny"), ("gan_evaluation", "cond")}
    wanted, cursor = _requested(env, bumped, instance, cursor)
    assert wanted == set()
