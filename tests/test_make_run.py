"""``make run``'s own settings end green: the shipped experiments at the Makefile's TRAIN_STEPS and
EVAL_SAMPLES, through ``gan-pipelines run``, on a tiny air-gapped dataset and without FID weights (a
newcomer's machine has none): every asset materialises, each time-lapse has frames although
``frame_every`` exceeds the steps, and each evaluation says plainly that FID was skipped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets.training import load_experiments
from tests.instance_records import latest_metadata
from tests.test_raw_images_asset import DAY, IMAGES, REPO, _env, local_classes

pytestmark = pytest.mark.slow


def make_variable(name: str) -> str:
    """A ``NAME ?= value`` default of the Makefile: the test follows whatever ``make run`` uses."""
    match = re.search(rf"^{name} \?= *(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile has no {name} ?= default"
    return match.group(1).strip()


def shrunk(spec: dict) -> dict:
    """The experiment with a narrow net and tiny batches: less compute, the same schedule (steps, frames,
    checkpoints), tricks and classes."""
    return {**spec, "net": {**spec["net"], "width": 4}, "batch_size": 4, "threads": 1}


def test_make_run_settings_end_green_without_fid_weights(tmp_path: Path) -> None:
    steps, samples = int(make_variable("TRAIN_STEPS")), int(make_variable("EVAL_SAMPLES"))
    experiments = make_variable("EXPERIMENTS").split()
    shipped = load_experiments(REPO / "config" / "experiments.yaml")
    assert set(experiments) <= set(shipped)
    assert all(shipped[e]["frame_every"] > steps for e in experiments)  # the case that used to fail
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump({e: shrunk(shipped[e]) for e in shipped}))
    env = _env(tmp_path, local_classes(tmp_path))
    env.update(
        GAN_EXPERIMENTS_FILE=str(tmp_path / "experiments.yaml"),
        GAN_FID_WEIGHTS_CACHE=str(tmp_path / "no-weights"),  # and no GAN_FID_WEIGHTS: _env drops GAN_*
    )
    command = [str(Path(sys.executable).parent / "gan-pipelines"), "run", "--date", DAY]
    command += ["--train-steps", str(steps), "--eval-samples", str(samples), "--experiments", *experiments]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pipeline finished" in proc.stdout

    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        assert all(r.is_success for r in instance.get_runs())

        for name in ("dogs", "null", "satellite"):
            assert latest_metadata(instance, "raw_images", f"{name}|{DAY}")["ok"] == IMAGES
        latest_metadata(instance, "curated_images")
        latest_metadata(instance, "webdataset_shards")
        for experiment in experiments:
            assert latest_metadata(instance, "gan_generator", experiment)["steps"] == steps
            video = latest_metadata(instance, "training_timelapse", experiment)
            assert video["frame_count"] == 2 and video["steps"] == f"0..{steps}"  # step 0 and the final step
            evaluation = latest_metadata(instance, "gan_evaluation", experiment)
            assert evaluation["summary"].startswith("FID skipped") and evaluation["num_samples"] == samples
            assert not any(k.startswith("fid (") for k in evaluation)  # no number pretends to be a FID
            report = Path(evaluation["report_latest"].removeprefix("file://"))
            assert report.is_file() and "FID skipped" in report.read_text()
