"""End to end through the UI's server: ``dagster dev`` (webserver, daemon, code server) on a loopback port.

A backfill of two ``gan_generator`` experiment partitions is launched through the webserver's GraphQL API,
the way the UI's "Materialize" dialog launches one, and carried out by the daemon (backfill loop, queued
run coordinator, run workers, training subprocesses through Pipes). A headless Chromium then opens the
asset graph and checks that every asset renders; the screenshot is kept in ``tests/artifacts/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from assets.settings import project_dir
from assets.training import model_key
from pipelines.storage import LocalStorage
from tests.chromium import chromium_binary
from tests.dagster_dev import DagsterDev, group_alive
from tests.tiny_dataset import tiny_experiment, write_dataset

# Generous: the internal waits below fail first, with the server's log; typical total is about two minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ASSETS = ["raw_images", "curated_images", "webdataset_shards", "gan_generator", "gan_evaluation", "training_timelapse"]
GROUPS = ["ingest", "curate", "train", "evaluate"]
ARTIFACTS = Path(os.environ.get("PYTEST_ARTIFACTS") or project_dir() / "tests" / "artifacts")

TINY = tiny_experiment(negatives_class="null")
EXPERIMENTS = {"tiny_a": TINY, "tiny_b": {**TINY, "seed": 1}}

BACKFILL_TIMEOUT = 360.0  # two tiny trainings, but through the daemon's 30 s backfill loop on two busy cores
TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
AUTOMATION_TIMEOUT = 150.0  # the automation sensor evaluates every 30 s

LAUNCH = """mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""

BACKFILL = """query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      isAssetBackfill
      partitionNames
      error { message }
      runs { runId status tags { key value } }
    }
    ... on Error { message }
  }
}"""

MATERIALIZATIONS = """query Materializations($partitions: [String!]) {
  assetOrError(assetKey: {path: ["gan_generator"]}) {
    __typename
    ... on Asset {
      assetMaterializations(partitions: $partitions) {
        partition
        runId
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on IntMetadataEntry { intValue }
          ... on PathMetadataEntry { path }
          ... on BoolMetadataEntry { boolValue }
        }
      }
    }
  }
}"""

AUTOMATION_RUNS = """{
  runsOrError(filter: {tags: [{key: "dagster/from_automation_condition", value: "true"}]}) {
    __typename
    ... on Runs { results { runId status tags { key value } assetSelection { path } } }
    ... on Error { message }
  }
}"""


@dataclasses.dataclass
class Server:
    dev: DagsterDev
    data_root: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fid_weights: Path) -> Iterator[Server]:
    """One ``dagster dev`` for the module (it takes a while to start), on a tiny dataset and two tiny experiments.

    Stopping it kills its whole process group; the teardown then checks that nothing it started survived.
    """
    base = tmp_path_factory.mktemp("dagster_dev")
    root = base / "data"
    write_dataset(root, n=24, holdout=6)
    experiments = base / "experiments.yaml"
    experiments.write_text(yaml.safe_dump(EXPERIMENTS, sort_keys=False))
    env: dict[str, str | None] = {
        "GAN_DATA_ROOT": root.as_uri(),
        "GAN_EXPERIMENTS_FILE": str(experiments),
        "GAN_RUNS_DIR": str(base / "runs"),
        "GAN_FID_WEIGHTS": str(fid_weights),
        "GAN_FID_ALLOW_UNOFFICIAL_WEIGHTS": "1",
        "GAN_S3_ENDPOINT_URL": None,
        "OMP_NUM_THREADS": "1",
    }
    dev = DagsterDev(cwd=project_dir(), home=base / "dagster_home", env=env, log_path=base / "dagster-dev.log")
    with dev:
        yield Server(dev=dev, data_root=root)
    assert dev.pgid is not None and not group_alive(dev.pgid), f"dagster dev's group {dev.pgid} outlived the test"
    assert not dev.leftovers, f"processes of dagster dev left its group and outlived it: {dev.leftovers}"


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def _value(entry: dict[str, Any]) -> Any:
    """The value of a metadata entry as queried in MATERIALIZATIONS (None for the kinds not asked for)."""
    for field in ("intValue", "text", "path", "boolValue"):
        if field in entry:
            return entry[field]
    return None


def _wait_for_backfill(dev: DagsterDev, backfill_id: str, timeout: float) -> dict[str, Any]:
    """Poll the backfill until the daemon marks it finished; its last state."""
    deadline = time.monotonic() + timeout
    while True:
        backfill = dev.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        if backfill["status"] in TERMINAL:
            return backfill
        if time.monotonic() > deadline:
            runs = [(r["runId"], r["status"]) for r in backfill["runs"]]
            pytest.fail(f"backfill still {backfill['status']} after {timeout:g} s, runs {runs}\n{dev.log_tail()}")
        time.sleep(2)


def test_backfill_two_experiments_through_the_webserver(server: Server) -> None:
    """What the UI's backfill dialog does, end to end: the daemon must train both partitions in real runs."""
    dev = server.dev
    partitions = list(EXPERIMENTS)
    params = {
        "partitionNames": partitions,
        "assetSelection": [{"path": ["gan_generator"]}],
        "runConfigData": {"ops": {"gan_generator": {"config": {"workers": 0}}}},
        "title": "test_ui_backfill",
    }
    launched = dev.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    backfill = _wait_for_backfill(dev, backfill_id, BACKFILL_TIMEOUT)
    runs = backfill["runs"]
    assert backfill["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, (backfill, dev.log_tail())
    assert backfill["isAssetBackfill"] and backfill["error"] is None
    assert sorted(_tags(r)["dagster/partition"] for r in runs) == partitions
    assert all(r["status"] == "SUCCESS" for r in runs), runs
    assert all(_tags(r)["dagster/backfill"] == backfill_id for r in runs)

    # One materialisation per partition, each from its backfill run, with the trained checkpoint in storage.
    asset = dev.graphql(MATERIALIZATIONS, {"partitions": partitions})["assetOrError"]
    assert asset["__typename"] == "Asset", asset
    mats = {m["partition"]: m for m in asset["assetMaterializations"]}
    assert sorted(mats) == partitions
    run_ids = {_tags(r)["dagster/partition"]: r["runId"] for r in runs}
    store = LocalStorage(server.data_root)
    for partition, mat in mats.items():
        assert mat["runId"] == run_ids[partition]
        md = {e["label"]: _value(e) for e in mat["metadataEntries"]}
        assert md["steps"] == TINY["steps"] and md["dataset_version"] == "v1", md
        assert md["reused_previous"] is False  # trained in this run, not a replay of an earlier one
        sha = md["checkpoint_sha256"]
        assert isinstance(sha, str) and len(sha) == 64, md
        assert store.exists(model_key(partition, sha)), f"{partition}: no model {sha} in storage"
        assert md["model"] == store.uri(model_key(partition, sha))

    # The daemon's automation sensor reacts to the new generators by requesting their evaluations; this
    # instance holds automation runs in the queue (see tests/dagster_dev.py), so asking is all they do.
    deadline = time.monotonic() + AUTOMATION_TIMEOUT
    requested: set[str] = set()
    while requested != set(partitions):
        result = dev.graphql(AUTOMATION_RUNS)["runsOrError"]
        assert result["__typename"] == "Runs", result
        requested = {
            _tags(r).get("dagster/partition", "")
            for r in result["results"]
            if {"path": ["gan_evaluation"]} in (r["assetSelection"] or [])
        }
        assert all(r["status"] in {"QUEUED", "NOT_STARTED"} for r in result["results"]), result
        if time.monotonic() > deadline:
            pytest.fail(f"automation requested gan_evaluation for {sorted(requested)} only\n{dev.log_tail()}")
        time.sleep(3)


def test_asset_graph_renders_in_headless_chromium(server: Server) -> None:
    """The UI itself (its JavaScript, not just GraphQL) draws the whole lineage; the screenshot shows it."""
    chromium = chromium_binary()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from PIL import Image
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright

    # The UI greets a new instance with a "join the community" dialog over the graph; mark it seen, as
    # its "Skip" button does, so that the screenshot shows the graph.
    assert server.dev.graphql("mutation { setNuxSeen }")["setNuxSeen"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "ui-asset-graph.png"
    shot.unlink(missing_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{server.dev.url}/asset-groups", wait_until="domcontentloaded", timeout=60_000)
            graph = page.locator("svg foreignObject")  # the lineage graph's nodes, not the sidebar's list
            try:
                # The global lineage opens with every group collapsed; expand them (the graph's
                # "Expand all groups" menu item, keyboard shortcut Alt+E) to show every asset.
                for group in GROUPS:
                    graph.get_by_text(group, exact=True).first.wait_for(timeout=90_000)
                if not graph.get_by_text("gan_generator", exact=True).count():
                    page.keyboard.press("Alt+KeyE")
                for name in ASSETS:
                    graph.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
                with contextlib.suppress(PlaywrightTimeoutError):  # let the nodes' status queries land first
                    page.wait_for_load_state("networkidle", timeout=15_000)
            finally:
                page.screenshot(path=str(shot))  # also when the graph is incomplete: the artifact shows why
        finally:
            browser.close()

    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as img:
        assert img.width >= 1600 and img.height >= 1000
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"
