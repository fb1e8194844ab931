"""Reliability on loopback: a refresh of every class against a flaky server that restarts mid-run, and a
training run SIGKILLed mid-way that resumes from its last checkpoint when launched again from the CLI."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from PIL import Image

from pipelines import manifest as mf
from pipelines.storage import LocalStorage, content_key
from tests.fakeweb import FakeWeb
from tests.test_ingest import _assert_store_consistent
from tests.test_raw_images_asset import DAY, materialise, resources, web_sources, write_sources
from tests.tiny_dataset import write_dataset

pytestmark = pytest.mark.slow
CLASSES = ("dogs", "null", "satellite")
REPO = Path(__file__).resolve().parents[1]


def _restart_after(fw: FakeWeb, image_requests: int, downtime: float) -> threading.Thread:
    """Stop the server once it has answered ``image_requests`` image downloads, and bring it back on the
    same port ``downtime`` seconds later."""

    def run() -> None:
        while sum(1 for r in fw.requests if r.path.startswith(("/dogimg/", "/picsum/id/", "/ovimg/"))) < image_requests:
            time.sleep(0.01)
        fw.stop()
        time.sleep(downtime)
        fw.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


IMAGE_PATHS = ("/dogimg/", "/picsum/id/", "/ovimg/", "/tiles/")
QUOTA = 12  # per source: dogs 12, null 24 (two sources), satellite 12


def test_refresh_survives_random_failures_and_a_restart(tmp_path, instance):
    # No spare dog or null candidates (12 dogs, 12 + 12 null images for quotas of 12 and 24): a failure is a gap.
    breeds = {"hound": ["afghan"], "pug": [], "shiba": []}
    fw = FakeWeb(fail_rate=0.2, seed=7, latency=0.01, dog_breeds=breeds, images_per_breed=4, picsum_count=12)
    fw.openverse_per_query = 12
    fw.start()
    try:
        res = resources(tmp_path, write_sources(tmp_path / "s.yaml", web_sources(fw, quota=QUOTA)))
        restarter = _restart_after(fw, image_requests=15, downtime=1.0)
        first = {c: materialise(res, instance, c, {"max_failure_rate": 1.0}) for c in CLASSES}
        restarter.join(timeout=30)
        assert not restarter.is_alive() and fw._server is not None  # the restart happened during the refresh
        for result in first.values():  # a class whose listing API was down at that moment fails, naming it
            if not result.success:
                [failure] = [e for e in result.all_events if e.is_step_failure]
                assert "source '" in failure.step_failure_data.error.cause.message
        store = LocalStorage(tmp_path / "data")

        def rows(c: str) -> list[dict]:
            """The manifest, or the part files a failed run saved before it stopped."""
            key = mf.manifest_key(c, DAY)
            keys = ([key] if store.exists(key) else []) + list(store.list(mf.parts_prefix(c, DAY)))
            return list({r["url"]: r for r in mf.read_rows(store, keys)}.values())

        # Every URL the server was asked for is in a manifest or part file, once, with a status; every stored
        # image is complete.
        after_first = [r for c in CLASSES for r in rows(c)]
        assert len(after_first) == len({r["url"] for r in after_first}) and all(r["status"] for r in after_first)
        asked = {fw.url(r.path) for r in fw.requests if r.path.startswith(IMAGE_PATHS)}
        assert asked <= {r["url"] for r in after_first}
        for key in store.list("raw/images/"):
            data = store.get_bytes(key)
            assert key == content_key(hashlib.sha256(data).hexdigest(), key.rsplit(".", 1)[1])
            Image.open(io.BytesIO(data)).load()
        failed = [r for r in after_first if r["status"] != "ok"]
        assert failed and all(r["retryable"] for r in failed), [(r["status"], r["reason"]) for r in failed]
        quota = {c: QUOTA * (2 if c == "null" else 1) for c in CLASSES}
        gaps = {c: quota[c] - sum(r["status"] == "ok" for r in rows(c)) for c in CLASSES}

        # The second refresh (the server healthy again) completes what the first left: the failed URLs and
        # those a failed run never reached, never an image it already has.
        fw.fail_rate = 0.0
        n = len(fw.requests)
        second = {c: materialise(res, instance, c) for c in CLASSES}
        assert all(r.success for r in second.values())
        assert {c: sum(r["status"] == "ok" for r in rows(c)) for c in CLASSES} == quota
        again = {fw.url(r.path) for r in fw.requests[n:] if r.path.startswith(IMAGE_PATHS)}
        assert not again & {r["url"] for r in after_first if r["status"] == "ok"}  # nothing fetched twice
        assert len(again) >= sum(gaps.values())
        _assert_store_consistent(store, [r for c in CLASSES for r in rows(c)])
    finally:
        fw.stop()


def test_training_killed_mid_run_resumes_from_its_checkpoint_via_the_cli(tmp_path):
    root = tmp_path / "data"
    write_dataset(root)
    spec = {"net": {"resolution": 32, "width": 8, "latent_dim": 16}, "classes": ["dog"], "batch_size": 8}
    spec |= {"steps": 400, "threads": 1, "checkpoint_every": 5, "frame_every": 0, "log_every": 5}
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump({"tiny": spec}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "GAN_"))}
    env |= {
        "DAGSTER_HOME": str(tmp_path / "home"),
        "GAN_DATA_ROOT": root.as_uri(),
        "GAN_EXPERIMENTS_FILE": str(tmp_path / "experiments.yaml"),
        "OMP_NUM_THREADS": "1",
    }
    (tmp_path / "home").mkdir()
    cmd = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "assets.definitions"]
    cmd += ["--select", "gan_generator", "--partition", "tiny"]
    checkpoints = root / "runs" / "tiny"
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(list(checkpoints.rglob("checkpoints/step-*.pt"))) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the Dagster run and the training subprocess
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    saved = max(int(p.stem.split("-")[1]) for p in checkpoints.rglob("checkpoints/step-*.pt"))
    assert 0 < saved < 400

    again = subprocess.run(
        [*cmd, "--config-json", '{"ops": {"gan_generator": {"config": {"steps": 60}}}}'],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as inst:
        md = inst.get_latest_materialization_event(dg.AssetKey("gan_generator")).asset_materialization.metadata
    assert md["resumed_from"].value == saved and md["steps"].value == max(60, saved)
