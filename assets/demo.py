"""``gan-pipelines demo``: the whole pipeline offline, on the NASA Blue Marble tiles the repository ships.

A loopback tile server (``pipelines/tileserver.py``) serves ``demo/tiles``; a sources file points the real
``xyz_tiles`` source at it (one source per complete block of tiles, plus a URL list of the scattered
ones), so the real scraper runs end to end (robots.txt, validation, manifests). Then curation, shards,
the ``satellite`` experiment trained for a few minutes on the CPU, its evaluation and time-lapse.

Everything goes to its own Dagster instance and data root (``.demo/`` in the project by default), never
mixed with ``make run``'s; the environment variables are set before the code location is imported,
since it reads them at import.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shlex
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import mercantile
import yaml

from assets.resources import FetchResource
from assets.run import run_all
from assets.settings import ensure_dagster_home, project_dir
from pipelines.storage import open_storage
from pipelines.tileserver import TileServer

EXPERIMENT = "satellite"
TILE_NAME = "bluemarble_z{z}_x{x}_y{y}.jpg"
_TILE_FILE = re.compile(r"bluemarble_z([0-9]+)_x([0-9]+)_y([0-9]+)\.jpg")
#: The complete blocks of demo/tiles (see its ATTRIBUTION.md): name -> (zoom, x0, x1, y0, y1), inclusive.
BLOCKS: dict[str, tuple[int, int, int, int, int]] = {
    "bluemarble_europe_z6": (6, 30, 37, 18, 25),
    "bluemarble_sw_usa_z7": (7, 21, 28, 48, 53),
    "bluemarble_himalaya_z8": (8, 184, 191, 105, 108),
}
LICENSE = "public domain (NASA Blue Marble)"
ATTRIBUTION = "NASA Blue Marble, via freetiler/nasa-bluemarble"
#: Training steps: 3-4 minutes on 2 CPU cores (measured: 185-250 s, 63-47 images/s, the cores shared).
DEFAULT_TRAIN_STEPS = 180
DEFAULT_EVAL_SAMPLES = 128
#: The tile server's port when free. The port is part of every tile URL, and URLs are what ingestion
#: remembers and the shards record, so the same port makes a re-run fetch nothing and gives a fresh run the
#: same dataset version as the last one.
PORT = 8654
#: A progress frame every this many steps, so a few minutes of training make a time-lapse worth watching.
FRAME_EVERY = 10

Tile = tuple[int, int, int]


def fetch_resource() -> FetchResource:
    """How the demo downloads, in one place: from its own loopback server, so without pacing, and from nowhere
    else that is not public (whatever ``$GAN_ALLOWED_NETWORKS`` says)."""
    return FetchResource(per_host_rate=0.0, allowed_networks=["127.0.0.1/32"])


@contextlib.contextmanager
def tile_server(tiles_dir: Path, port: int = PORT) -> Iterator[TileServer]:
    """The tile server on ``port``, else on any free port (at the cost of new URLs, see PORT)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(TileServer(tiles_dir, TILE_NAME, port=port))
        except OSError:
            server = stack.enter_context(TileServer(tiles_dir, TILE_NAME))
        yield server


def shipped_tiles(tiles_dir: Path) -> set[Tile]:
    """The (z, x, y) of every tile in the folder."""
    found = (_TILE_FILE.fullmatch(p.name) for p in tiles_dir.iterdir())
    return {(int(m[1]), int(m[2]), int(m[3])) for m in found if m}


def block_tiles(block: tuple[int, int, int, int, int]) -> set[Tile]:
    z, x0, x1, y0, y1 = block
    return {(z, x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)}


def block_bbox(block: tuple[int, int, int, int, int]) -> list[float]:
    """(west, south, east, north) of a block, inset by 1% of a tile so that no neighbouring tile is requested."""
    z, x0, x1, y0, y1 = block
    ul, lr = mercantile.bounds(x0, y0, z), mercantile.bounds(x1, y1, z)
    dx = (ul.east - ul.west) / 100
    return [
        round(ul.west + dx, 6),
        round(lr.south + (lr.north - lr.south) / 100, 6),
        round(lr.east - dx, 6),
        round(ul.north - (ul.north - ul.south) / 100, 6),
    ]


def write_sources(folder: Path, url_template: str, tiles: set[Tile]) -> Path:
    """The demo's sources file: an xyz_tiles source per block, a url_list of the other tiles, all on the server.

    Raises ValueError when a block is incomplete, since the scraper would then record failed downloads.
    """
    blocks: set[Tile] = set()
    specs: list[dict[str, Any]] = []
    for name, block in BLOCKS.items():
        wanted = block_tiles(block)
        if missing := wanted - tiles:
            raise ValueError(f"demo tiles: block {name} lacks {len(missing)} tiles, e.g. {min(missing)}")
        blocks |= wanted
        specs.append(
            {
                "name": name,
                "kind": "xyz_tiles",
                "url_template": url_template,
                "bbox": block_bbox(block),
                "zooms": [block[0]],
                "license": LICENSE,
                "attribution": ATTRIBUTION,
            }
        )
    scattered = folder / "bluemarble_scattered.txt"
    lines = [url_template.format(z=z, x=x, y=y) for z, x, y in sorted(tiles - blocks)]
    scattered.write_text("# the demo tiles outside the blocks, served by the demo's tile server\n" + "\n".join(lines))
    specs.append({"name": "bluemarble_scattered", "kind": "url_list", "path": scattered.name, "license": LICENSE})
    path = folder / "sources.yaml"
    header = "# Written by `gan-pipelines demo`: the tiles of demo/tiles, served on 127.0.0.1 while the demo runs.\n"
    body = {"max_new_per_source": len(tiles), "classes": {"satellite": specs}}
    path.write_text(header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None))
    return path


def write_experiments(folder: Path) -> Path:
    """The ``satellite`` experiment of config/experiments.yaml, with frames often enough for a short run."""
    shipped = yaml.safe_load((project_dir() / "config" / "experiments.yaml").read_text())
    spec = {**shipped[EXPERIMENT], "frame_every": FRAME_EVERY}
    path = folder / "experiments.yaml"
    header = f"# Written by `gan-pipelines demo`: config/experiments.yaml's {EXPERIMENT}, frame_every {FRAME_EVERY}.\n"
    path.write_text(header + yaml.safe_dump({EXPERIMENT: spec}, sort_keys=False, default_flow_style=None))
    return path


def _latest(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict[str, Any]:
    """Raw metadata values of an asset partition's latest materialisation ({} if none)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()} if records else {}


def _summary(instance: dg.DagsterInstance, day: str, data_root: str) -> list[str]:
    """Where the results are, read back from the instance."""
    store = open_storage(data_root)
    report = f"reports/{EXPERIMENT}/latest.html"
    raw = _latest(instance, "raw_images", f"{EXPERIMENT}|{day}")
    curated = _latest(instance, "curated_images")
    shards = _latest(instance, "webdataset_shards")
    gen = _latest(instance, "gan_generator", EXPERIMENT)
    evaluation = _latest(instance, "gan_evaluation", EXPERIMENT)
    video = _latest(instance, "training_timelapse", EXPERIMENT)
    fids = [f"{k} {v:.2f}" for k, v in evaluation.items() if k.startswith("fid (")]
    return [
        f"raw_images[{EXPERIMENT}|{day}]: {raw.get('counts_by_status')}",
        f"curated_images: {curated.get('accepted')} accepted, by reason {curated.get('by_reason')}",
        f"webdataset_shards: dataset {shards.get('dataset_version')}, {shards.get('counts')}",
        f"gan_generator[{EXPERIMENT}]: {gen.get('steps')} steps at {gen.get('images_per_s', 0):.1f} images/s",
        f"gan_evaluation[{EXPERIMENT}]: FID {', '.join(fids) or evaluation.get('fid_status')}, sample diversity "
        f"{evaluation.get('diversity', math.nan):.1f} (real images {evaluation.get('real_diversity', math.nan):.1f})",
        f"report: {store.uri(report) if store.exists(report) else 'none'}",
        f"time-lapse: {video.get('video')} and {video.get('gif')}",
        f"run directory (checkpoints, frames, TensorBoard): {gen.get('run_dir')}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gan-pipelines demo", description=__doc__)
    parser.add_argument("--dir", type=Path, help="the demo's folder, config files included (default: .demo)")
    parser.add_argument("--dagster-home", type=Path, help="its Dagster instance (default: <dir>/dagster_home)")
    parser.add_argument("--data-root", help="its data root, a folder or URL (default: <dir>/data)")
    parser.add_argument("--date", default=datetime.now(UTC).date().isoformat(), help="the day to fill (default: today)")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=DEFAULT_TRAIN_STEPS,
        help="training steps (default: %(default)s, 3-4 minutes on 2 CPU cores)",
    )
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=DEFAULT_EVAL_SAMPLES,
        help="generated images per checkpoint (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    project = project_dir()
    folder = (args.dir or project / ".demo").resolve()
    home = (args.dagster_home or folder / "dagster_home").resolve()
    data_root = args.data_root or str(folder / "data")
    if "://" not in data_root:
        data_root = Path(data_root).resolve().as_uri()
    tiles_dir = project / "demo" / "tiles"
    folder.mkdir(parents=True, exist_ok=True)
    tiles = shipped_tiles(tiles_dir)
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["GAN_DATA_ROOT"] = data_root
    os.environ["GAN_EXPERIMENTS_FILE"] = str(write_experiments(folder))
    for var in ("NO_PROXY", "no_proxy"):  # the tile server is on loopback: never through a proxy
        os.environ[var] = ",".join(filter(None, [os.environ.get(var), "127.0.0.1"]))
    ensure_dagster_home()
    print(f"demo: project {project}, {len(tiles)} tiles in {tiles_dir}", flush=True)

    with tile_server(tiles_dir) as server:
        os.environ["GAN_SOURCES_FILE"] = str(write_sources(folder, server.url_template, tiles))
        print(f"demo: tile server at {server.base_url}", flush=True)
        from assets.definitions import defs  # only now: the code location reads the environment at import

        demo_defs = dg.Definitions(assets=defs.assets, resources={**(defs.resources or {}), "fetch": fetch_resource()})
        run_config = {
            "gan_generator": {"config": {"steps": args.train_steps}},
            "gan_evaluation": {"config": {"num_samples": args.eval_samples}},
        }
        with dg.DagsterInstance.get() as instance:
            ok = run_all(
                demo_defs, instance, args.date, None, run_config, only={"class": {EXPERIMENT}, "": {EXPERIMENT}}
            )
            summary = _summary(instance, args.date, data_root)
    stats = server.stats
    print(
        f"demo: the tile server answered robots.txt {stats['robots_txt']}x, {stats['tiles']} tiles, "
        f"{stats['not_found']} not found",
        flush=True,
    )
    for line in summary:
        print(f"  {line}")
    ui = Path(sys.executable).with_name("gan-pipelines")
    command = str(ui) if ui.exists() else "gan-pipelines"
    env = " ".join(
        f"{k}={shlex.quote(os.environ[k])}"
        for k in ("DAGSTER_HOME", "GAN_DATA_ROOT", "GAN_SOURCES_FILE", "GAN_EXPERIMENTS_FILE")
    )
    print(f"The Dagster UI on the demo's instance:\n  {env} {shlex.quote(command)} dev", flush=True)
    print("demo finished: every asset materialised" if ok else "demo FAILED: see the messages above", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
