"""``make demo``: the shipped tiles, the sources file the demo writes, and the demo itself run from a copy
of the repository with no ``../shared`` beside it and nothing but loopback."""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import requests

from assets.demo import BLOCKS, block_tiles, shipped_tiles, tile_server, write_sources
from pipelines.sources import load_sources_file
from pipelines.sources.base import SourceContext
from tests.instance_records import latest_metadata

REPO = Path(__file__).resolve().parents[1]
TILES = REPO / "demo" / "tiles"
_URL = re.compile(r"http://127\.0\.0\.1:1/([0-9]+)/([0-9]+)/([0-9]+)\.jpg")


def test_demo_tiles_are_exactly_the_attributed_blue_marble_tiles() -> None:
    """Only the Blue Marble tiles may be copied from the fixtures, each listed in the manifest."""
    with (TILES / "MANIFEST.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    listed = {r["filename"] for r in rows}
    assert len(rows) == len(listed) == 218
    assert all(r["source_repo"] == "freetiler/nasa-bluemarble" for r in rows)
    assert {p.name for p in TILES.iterdir()} == listed | {"MANIFEST.tsv", "ATTRIBUTION.md"}
    assert {(int(r["z"]), int(r["x"]), int(r["y"])) for r in rows} == shipped_tiles(TILES)


def tile_of(url: str) -> tuple[int, int, int]:
    match = _URL.fullmatch(url)
    assert match, url
    return int(match[1]), int(match[2]), int(match[3])


def test_sources_request_every_shipped_tile_once(tmp_path: Path) -> None:
    """The xyz_tiles sources (one per block) and the URL list together ask for each tile exactly once, and
    for nothing else, so no request 404s; every quota is large enough to take them all."""
    tiles = shipped_tiles(TILES)
    spec = load_sources_file(write_sources(tmp_path, "http://127.0.0.1:1/{z}/{x}/{y}.jpg", tiles))
    ctx = SourceContext(session=requests.Session(), timeout=(1.0, 1.0), partition_date=date(2026, 12, 1))
    requested: Counter[tuple[int, int, int]] = Counter()
    for source, quota in spec.sources("satellite", base_dir=tmp_path):
        urls = [c.url for c in source.candidates(ctx)]
        assert len(urls) <= quota
        points = [tile_of(url) for url in urls]
        if source.name in BLOCKS:
            assert set(points) == block_tiles(BLOCKS[source.name])
        requested.update(points)
    assert set(requested) == tiles and set(requested.values()) == {1}


def test_an_incomplete_block_is_refused(tmp_path: Path) -> None:
    tiles = shipped_tiles(TILES) - {(7, 24, 50)}
    with pytest.raises(ValueError, match="bluemarble_sw_usa_z7 lacks 1 tiles"):
        write_sources(tmp_path, "http://127.0.0.1:1/{z}/{x}/{y}.jpg", tiles)


def test_tile_server_takes_its_port_or_any_free_one() -> None:
    """The fixed port keeps tile URLs (and so dataset versions) stable across runs; a taken one is no failure."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with tile_server(TILES, port) as server:
            assert server.port != port
            assert (
                requests.get(server.base_url + "/6/30/18.jpg", timeout=5).content
                == (TILES / "bluemarble_z6_x30_y18.jpg").read_bytes()
            )
    with tile_server(TILES, port) as server:
        assert server.port == port


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a clone would have them (tracked, plus new files not yet committed; no
    .venv, .git, data or other ignored output)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("copying the repository as a clone needs git and a git checkout")
    for name in filter(None, listed.decode().split("\0")):
        src = REPO / name
        if src.is_file():  # not a tracked file deleted in the working tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_runs_green_from_a_fresh_copy_without_shared_fixtures(tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "clone")
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "GAN_"))}
    env.update(
        PYTHONPATH=str(clone),  # the venv's editable install points at the original checkout
        GAN_FID_WEIGHTS_CACHE=str(tmp_path / "no-fid-weights"),  # no weights, and no GAN_FID_WEIGHTS
        NO_PROXY="127.0.0.1",
    )
    command = [sys.executable, "-m", "assets.run", "demo", "--train-steps", "4", "--eval-samples", "16"]
    proc = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=840)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert f"demo: project {clone}," in out  # the copy's modules ran, not the original checkout's
    assert "demo finished: every asset materialised" in out
    tiles = len(shipped_tiles(clone / "demo" / "tiles"))
    served = re.search(r"robots\.txt (\d+)x, (\d+) tiles, (\d+) not found", out)
    assert served, out[-2000:]
    assert int(served[1]) >= 1 and int(served[2]) == tiles and int(served[3]) == 0

    day = re.search(r"raw_images\[satellite\|(\d{4}-\d\d-\d\d)\]", out)
    assert day, out[-2000:]
    with dg.DagsterInstance.from_config(str(clone / ".demo" / "dagster_home")) as instance:
        assert latest_metadata(instance, "raw_images", f"satellite|{day[1]}")["counts_by_status"] == {"ok": tiles}
        assert latest_metadata(instance, "curated_images")["accepted"] > 0
        assert set(latest_metadata(instance, "webdataset_shards")["counts"]["train"]) == {"satellite"}
        assert latest_metadata(instance, "gan_generator", "satellite")["steps"] == 4
        video = latest_metadata(instance, "training_timelapse", "satellite")
        evaluation = latest_metadata(instance, "gan_evaluation", "satellite")
        assert evaluation["summary"].startswith("FID skipped")
    data = clone / ".demo" / "data"
    assert (data / "reports" / "satellite" / "latest.html").is_file()
    assert Path(video["video"].removeprefix("file://")).is_file()
    assert str(video["video"]).startswith(data.as_uri())
