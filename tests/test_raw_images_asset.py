"""The Dagster layer: ``raw_images`` materialised on a temporary instance against the loopback web.

These run the real asset, resources and check through ``dg.materialize`` (and once through the
``dagster`` and ``gan-pipelines`` command lines), so what is tested is what a user runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml

from assets.curated import curated_images, webdataset_shards
from assets.definitions import defs
from assets.errors import cause_line, run_error, user_error
from assets.raw_images import raw_images
from assets.resources import FetchResource, SourcesResource, StorageResource
from pipelines import manifest as mf
from pipelines.dataset import DatasetSettings, in_holdout
from pipelines.httpclient import ALLOWED_NETWORKS_ENV
from pipelines.manifest import COLUMNS
from pipelines.storage import LocalStorage
from tests.fakeweb import FakeWeb, free_port, make_image_bytes

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-11-20"
IMAGES = 10  # per class in the air-gapped whole-pipeline run: enough for a few training batches


def web_sources(fw: FakeWeb, quota: int = 6) -> dict:
    """A sources file whose every class is served by the loopback web, in the real APIs' formats."""
    return {
        "max_new_per_source": quota,
        "classes": {
            "dogs": [{"name": "dog_ceo", "kind": "dog_ceo", "base_url": fw.url("/dogceo/api")}],
            "null": [
                {"name": "picsum", "kind": "picsum", "base_url": fw.url("/picsum"), "size": 300},
                {"name": "openverse", "kind": "openverse", "base_url": fw.url("/openverse/v1"), "queries": ["cat"]},
            ],
            "satellite": [
                {
                    "name": "tiles",
                    "kind": "xyz_tiles",
                    "url_template": fw.url("/tiles/{z}/{x}/{y}.jpg"),
                    "bbox": [-10.0, -10.0, 10.0, 10.0],
                    "zooms": [7],
                    "license": "public domain",
                }
            ],
        },
    }


def write_sources(path: Path, spec: dict) -> str:
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def resources(tmp_path: Path, sources_file: str) -> dict[str, dg.ConfigurableResource]:
    """Fast, unthrottled settings: the loopback server is one host standing in for many."""
    return {
        "storage": StorageResource(root_url=(tmp_path / "data").as_uri()),
        "fetch": FetchResource(
            connect_timeout=1, read_timeout=2, retries=1, backoff_factor=0.01, per_host_concurrency=8, per_host_rate=0
        ),
        "sources": SourcesResource(path=sources_file),
    }


def materialise(
    res: dict, instance: dg.DagsterInstance, class_name: str, config: dict | None = None
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [raw_images],
        partition_key=dg.MultiPartitionKey({"class": class_name, "date": DAY}),
        instance=instance,
        resources=res,
        run_config={"ops": {"raw_images": {"config": config}}} if config else None,
        raise_on_error=False,
    )


def manifest(tmp_path: Path, class_name: str) -> list[dict]:
    return pq.read_table(tmp_path / "data" / "raw" / "manifests" / class_name / f"{DAY}.parquet").to_pylist()


def test_every_class_materialises_with_metadata_check_and_version(tmp_path, fakeweb, instance):
    res = resources(tmp_path, write_sources(tmp_path / "s.yaml", web_sources(fakeweb)))
    for class_name, ok_expected in (("dogs", 6), ("null", 12), ("satellite", 6)):
        result = materialise(res, instance, class_name)
        assert result.success, class_name
        [mat] = result.asset_materializations_for_node("raw_images")
        md = mat.metadata
        assert md["ok"].value == ok_expected
        assert md["counts_by_status"].value == {"ok": ok_expected}
        assert md["dagster/row_count"].value == ok_expected
        assert md["preview"].value.startswith("![preview](data:image/png;base64,")
        assert md["images_per_s"].value > 0
        assert md["manifest"].value.endswith(f"raw/manifests/{class_name}/{DAY}.parquet")
        [check] = result.get_asset_check_evaluations()
        assert check.passed and check.check_name == "failure_rate"
        rows = manifest(tmp_path, class_name)
        assert len(rows) == ok_expected and set(rows[0]) == set(COLUMNS)
        assert {r["class"] for r in rows} == {class_name}

    record = instance.get_latest_materialization_event(dg.AssetKey("raw_images"))
    assert record is not None and record.asset_materialization.tags["dagster/data_version"]
    assert {r["source"] for r in manifest(tmp_path, "null")} == {"picsum", "openverse"}


def test_rematerialising_fetches_nothing_and_keeps_the_version(tmp_path, fakeweb, instance):
    res = resources(tmp_path, write_sources(tmp_path / "s.yaml", web_sources(fakeweb)))
    first = materialise(res, instance, "dogs")
    images_before = fakeweb.hits("/dogimg/")
    second = materialise(res, instance, "dogs")
    assert first.success and second.success
    assert fakeweb.hits("/dogimg/") == images_before
    [m1], [m2] = (r.asset_materializations_for_node("raw_images") for r in (first, second))
    assert m2.metadata["attempted_this_run"].value == 0
    assert m1.metadata["manifest_version"] == m2.metadata["manifest_version"]
    assert m1.tags["dagster/data_version"] == m2.tags["dagster/data_version"]


def test_failure_rate_check_fails_on_a_broken_source(tmp_path, fakeweb, instance):
    urls = tmp_path / "urls.txt"
    bad = ["/fault/html", "/fault/truncated.jpg", "/fault/status/404", "/fault/empty", "/fault/bomb.png"]
    urls.write_text("\n".join(fakeweb.url(p) for p in [*bad, "/img/good.jpg"]))
    spec = {"classes": {"dogs": [{"name": "mirror", "kind": "url_list", "path": str(urls)}]}}
    res = resources(tmp_path, write_sources(tmp_path / "s.yaml", spec))
    result = materialise(res, instance, "dogs", {"max_failure_rate": 0.5})
    [mat] = result.asset_materializations_for_node("raw_images")  # the manifest is kept for inspection
    assert mat.metadata["failure_rate"].value == pytest.approx(5 / 6, abs=1e-3)
    [check] = result.get_asset_check_evaluations()
    assert not check.passed
    assert set(check.metadata["example_reasons"].value) == {"not_an_image", "truncated", "http_error", "too_large"}
    assert not result.success  # blocking: nothing downstream would run on this partition


@pytest.mark.parametrize("host", ["refused", "nohost.invalid"])
def test_unreachable_source_fails_fast_naming_it(tmp_path, instance, host):
    base = f"http://127.0.0.1:{free_port()}/api" if host == "refused" else f"http://{host}/api"
    spec = {"classes": {"dogs": [{"name": "dog_ceo", "kind": "dog_ceo", "base_url": base}]}}
    res = resources(tmp_path, write_sources(tmp_path / "s.yaml", spec))
    t0 = time.monotonic()
    result = materialise(res, instance, "dogs")
    assert time.monotonic() - t0 < 20
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "source 'dog_ceo'" in message
    if host != "refused":
        assert "offline" in message.lower()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("classes: {dogs: [{name: a, kind: nope}]}", "classes.dogs.0 Input tag 'nope' found using 'kind'"),
        ("classes: {dogs: [{kind: dog_ceo}]}", "classes.dogs.0.dog_ceo.name Field required"),
        ("classes: {dogs: [{name: t, kind: xyz_tiles, zooms: [3]}]}", "classes.dogs.0.xyz_tiles.bbox Field required"),
        (
            "classes: {dogs: [{name: t, kind: xyz_tiles, url_template: 'http://x/{z}/{x}/{y}', bbox: [9, 0, 1, 1], "
            "zooms: [3]}]}",
            "source 't': bbox must be (west, south, east, north) in degrees, got (9.0, 0.0, 1.0, 1.0)",
        ),
    ],
)
def test_a_bad_sources_file_is_the_runs_one_line_error(tmp_path, instance, text, field):
    """What the UI and ``gan-pipelines run`` show: the file and the field at fault, one line, no traceback."""
    (tmp_path / "s.yaml").write_text(text)
    res = resources(tmp_path, str(tmp_path / "s.yaml"))
    result = materialise(res, instance, "dogs")
    assert not result.success
    error = user_error(run_error(result.all_events, step_key="raw_images"))
    assert error.cls_name == "Failure" and error.cause is None and error.context is None
    assert "\n" not in error.message.rstrip("\n")  # Dagster records "module.Failure: <description>\n"
    line = cause_line(error)
    assert line.startswith(f"sources file {tmp_path / 's.yaml'}") and field in line
    assert "For further information" not in line


def test_a_finished_partition_is_materialised_again_without_a_request(tmp_path, instance):
    """Once every source ran out or met its quota and the failures are final (max_attempts=1 here), a
    re-run makes no HTTP request at all: no listing, no robots.txt, no download."""
    with FakeWeb(dog_breeds={"pug": []}, images_per_breed=3) as fw:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{fw.url('/img/one.jpg')}\n{fw.url('/fault/status/503')}\n")
        spec = {
            "max_new_per_source": 5,
            "classes": {
                "dogs": [
                    {"name": "dog_ceo", "kind": "dog_ceo", "base_url": fw.url("/dogceo/api")},
                    {"name": "mirror", "kind": "url_list", "path": str(urls)},
                ]
            },
        }
        res = resources(tmp_path, write_sources(tmp_path / "s.yaml", spec))
        first = materialise(res, instance, "dogs", {"max_attempts": 1, "max_failure_rate": 1.0})
        assert first.success
        rows = Counter((r["status"], r["retryable"]) for r in manifest(tmp_path, "dogs"))
        assert rows == {("ok", False): 4, ("http_error", False): 1}  # the 503 is final after one attempt
        n = len(fw.requests)
        second = materialise(res, instance, "dogs", {"max_attempts": 1, "max_failure_rate": 1.0})
        assert second.success and fw.requests[n:] == []
        [m1], [m2] = (r.asset_materializations_for_node("raw_images") for r in (first, second))
        assert m2.metadata["attempted_this_run"].value == 0
        assert m1.tags["dagster/data_version"] == m2.tags["dagster/data_version"]


def _slow_dogs(tmp_path: Path, fw: FakeWeb, quota: int) -> dict:
    """Resources for a dogs partition of ``quota`` images from a server answering each request after 1 s."""
    fw.latency = 1.0
    return resources(tmp_path, write_sources(tmp_path / "s.yaml", web_sources(fw, quota=quota)))


def _dead(pid: int) -> bool:
    """Gone, or a zombie: either way its descriptors, and so its locks, are released."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_for_downloads(fw: FakeWeb, alive: threading.Thread | subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not fw.hits("/dogimg/"):
        running = alive.is_alive() if isinstance(alive, threading.Thread) else alive.poll() is None
        assert running and time.monotonic() < deadline, "the first run ended or never downloaded"
        time.sleep(0.02)


def test_two_materialisations_of_one_partition_never_fetch_a_url_twice(tmp_path, fakeweb, instance):
    """The second run fails at once naming the first (its host, pid and run id); the first ends as if alone."""
    res = _slow_dogs(tmp_path, fakeweb, 24)
    first: list[dg.ExecuteInProcessResult] = []
    thread = threading.Thread(target=lambda: first.append(materialise(res, instance, "dogs")))
    thread.start()
    try:
        _wait_for_downloads(fakeweb, thread)
        second = materialise(res, instance, "dogs")
        assert thread.is_alive(), "the second run waited for the first"
    finally:
        thread.join(timeout=120)
    assert not second.success and first[0].success
    line = cause_line(run_error(second.all_events, step_key="raw_images"))
    assert line.startswith(f"raw partition dogs/{DAY} is being written by host ")
    assert f"pid {os.getpid()}, Dagster run {first[0].run_id}, since " in line
    downloads = Counter(r.path for r in fakeweb.requests if r.path.startswith("/dogimg/"))
    assert len(downloads) == 24 and set(downloads.values()) == {1}, "a URL was fetched twice"
    assert len(manifest(tmp_path, "dogs")) == 24


def test_definitions_load_and_name_every_asset():
    defs.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("raw_images") in graph.get_all_asset_keys()
    assert set(defs.resources or {}) == {"storage", "fetch", "sources", "fid", "training_launcher"}


def _env(tmp_path: Path, sources_file: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "GAN_"))}
    env.update(
        DAGSTER_HOME=str(tmp_path / "home"),
        GAN_DATA_ROOT=(tmp_path / "data").as_uri(),
        GAN_SOURCES_FILE=sources_file,
        NO_PROXY="127.0.0.1,localhost",
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


@pytest.mark.slow
def _images_with_holdout(class_name: str, holdout: int = 2) -> list[bytes]:
    """IMAGES distinct images of which ``holdout`` fall in the default holdout split (evaluation needs them)."""
    held, train = [], []
    for i in range(10_000):
        data = make_image_bytes(f"cli/{class_name}/{i}", (96, 80))
        in_h = in_holdout(hashlib.sha256(data).hexdigest(), DatasetSettings().holdout_fraction)
        if in_h and len(held) < holdout:
            held.append(data)
        elif not in_h and len(train) < IMAGES - holdout:
            train.append(data)
        if len(held) + len(train) == IMAGES:
            return held + train
    raise AssertionError("not enough holdout images")


def local_classes(tmp_path: Path) -> str:
    """A sources file with a local_dir of IMAGES images (some in the holdout split) for every class."""
    for class_name in ("dogs", "null", "satellite"):
        folder = tmp_path / "images" / class_name
        folder.mkdir(parents=True)
        for i, data in enumerate(_images_with_holdout(class_name)):
            (folder / f"{i}.jpg").write_bytes(data)
    spec = {
        "classes": {
            c: [{"name": f"local_{c}", "kind": "local_dir", "path": f"images/{c}"}]
            for c in ("dogs", "null", "satellite")
        }
    }
    return write_sources(tmp_path / "s.yaml", spec)


def test_command_lines_run_the_workspace_and_the_whole_pipeline(tmp_path, fid_weights):
    """workspace.yaml loads, ``dagster asset materialize`` works from the repo root, and so does the README's
    ``gan-pipelines run`` (every asset, every class, evaluation and time-lapse included), air-gapped."""
    env = _env(tmp_path, local_classes(tmp_path))
    tiny = {"net": {"resolution": 64, "width": 4, "latent_dim": 16}, "classes": ["dogs"], "negatives_class": "null"}
    tiny |= {"batch_size": 4, "steps": 50, "threads": 1, "checkpoint_every": 1, "frame_every": 1, "log_every": 1}
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump({"tiny_dogs": tiny}))
    env.update(GAN_EXPERIMENTS_FILE=str(tmp_path / "experiments.yaml"), GAN_RUNS_DIR=str(tmp_path / "runs"))
    # offline: the weights cannot be downloaded; the test weights are not the official file
    env.update(GAN_FID_WEIGHTS=str(fid_weights), GAN_FID_ALLOW_UNOFFICIAL_WEIGHTS="1")
    bindir = Path(sys.executable).parent

    validate = [str(bindir / "dagster"), "definitions", "validate", "-w", "workspace.yaml"]
    proc = subprocess.run(validate, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "passed validation" in proc.stderr + proc.stdout, proc.stderr[-3000:]

    cli = [str(bindir / "dagster"), "asset", "materialize", "-m", "assets.definitions", "--select", "raw_images"]
    proc = subprocess.run(
        [*cli, "--partition", f"dogs|{DAY}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(manifest(tmp_path, "dogs")) == IMAGES

    proc = subprocess.run(
        [str(bindir / "gan-pipelines"), "run", "--date", DAY, "--train-steps", "2", "--eval-samples", "4"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pipeline finished" in proc.stdout
    for class_name in ("dogs", "null", "satellite"):
        rows = manifest(tmp_path, class_name)
        assert [r["status"] for r in rows] == ["ok"] * IMAGES
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as inst:  # runs recorded in the SQLite instance
        runs = inst.get_runs()
        # CLI + 3 raw partitions + curated + shards + GAN + evaluation + time-lapse
        assert len(runs) == 9 and all(r.is_success for r in runs)
        record = inst.get_latest_materialization_event(dg.AssetKey("gan_generator"))
        assert record.asset_materialization.metadata["steps"].value == 2  # --train-steps overrides the experiment
        evaluation = inst.get_latest_materialization_event(dg.AssetKey("gan_evaluation")).asset_materialization
        assert evaluation.metadata["num_samples"].value == 4 and evaluation.metadata["num_real"].value == 2
        assert inst.get_latest_materialization_event(dg.AssetKey("training_timelapse")) is not None
    assert (tmp_path / "data" / "datasets" / "latest.json").is_file()
    assert list((tmp_path / "data" / "runs").rglob("step-00000002.pt"))  # runs live in a local storage root


@pytest.mark.slow
def test_a_step_left_running_by_a_killed_command_keeps_the_partition_until_it_dies(tmp_path, fakeweb, instance):
    """``kill -9`` of ``dagster asset materialize`` leaves its step process ingesting. Running the partition
    again, as the README advises, fails naming that process; once it is gone too, the next run goes ahead
    at once and fetches only what the dead one had not saved."""
    res = _slow_dogs(tmp_path, fakeweb, 64)
    env = _env(tmp_path, res["sources"].path)
    env[ALLOWED_NETWORKS_ENV] = os.environ[ALLOWED_NETWORKS_ENV]
    cli = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "assets.definitions"]
    cmd = [*cli, "--select", "raw_images", "--partition", f"dogs|{DAY}"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    store = LocalStorage(tmp_path / "data")
    try:
        _wait_for_downloads(fakeweb, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

        blocked = materialise(res, instance, "dogs")
        assert not blocked.success
        line = cause_line(run_error(blocked.all_events, step_key="raw_images"))
        holder = int(re.search(r"is being written by host [^,]+, pid (\d+), Dagster run ", line)[1])
        assert holder != proc.pid and os.getpgid(holder) == proc.pid, "not the killed command's own step process"

        deadline = time.monotonic() + 30
        while not list(store.list(mf.parts_prefix("dogs", DAY))):  # the orphan saved some rows: kill it now
            assert time.monotonic() < deadline and not _dead(holder)
            time.sleep(0.02)
        os.kill(holder, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not _dead(holder):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not store.exists(mf.manifest_key("dogs", DAY)), "the orphan finished before it was killed"
        saved = {urlsplit(r["url"]).path for r in mf.read_rows(store, store.list(mf.parts_prefix("dogs", DAY)))}
        n = len(fakeweb.requests)
        fakeweb.latency = 0.0
        resumed = materialise(res, instance, "dogs")  # at once: no lease to wait for
        assert resumed.success
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert len(manifest(tmp_path, "dogs")) == 64
    [mat] = resumed.asset_materializations_for_node("raw_images")
    assert mat.metadata["attempted_this_run"].value == 64 - len(saved)
    assert not {r.path for r in fakeweb.requests[n:]} & saved, "fetched again what the orphan had saved"


def test_preview_image_is_a_real_png(tmp_path, fakeweb, instance):
    import base64

    from PIL import Image

    res = resources(tmp_path, write_sources(tmp_path / "s.yaml", web_sources(fakeweb, quota=3)))
    [mat] = materialise(res, instance, "satellite").asset_materializations_for_node("raw_images")
    b64 = mat.metadata["preview"].value.split("base64,", 1)[1].rstrip(")")
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG" and img.width > 3 * 90


def test_whole_run_stops_downstream_of_a_failed_ingest(tmp_path, instance, capsys):
    """``gan-pipelines run`` offline: every class is tried, nothing is curated from missing data."""
    from assets.run import run_all

    spec = {
        "classes": {
            c: [{"name": "gone", "kind": "dog_ceo", "base_url": "http://nohost.invalid/api"}]
            for c in ("dogs", "null", "satellite")
        }
    }
    res = resources(tmp_path, write_sources(tmp_path / "s.yaml", spec))
    pipeline = dg.Definitions(assets=[raw_images, curated_images, webdataset_shards], resources=res)
    assert run_all(pipeline, instance, DAY) is False
    out = capsys.readouterr().out
    assert out.count("FAILED") == 3 and "skipping curated_images" in out and "skipping webdataset_shards" in out
    assert instance.get_latest_materialization_event(dg.AssetKey("curated_images")) is None
