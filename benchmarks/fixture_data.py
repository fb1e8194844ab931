"""Benchmark datasets from ``../shared/fixtures``, built through the pipeline's own ingest and curation.

A benchmark that feeds fixture files straight to the dataset builder sees what the pipeline never
would: ``dogs-large/`` holds the same JPEG under two names, and the shard writer then stops on the
repeated key. So every benchmark dataset takes the pipeline's path: ``ingest_partition`` over a
``LocalDirSource`` per folder (validation, sha256, content-addressed store, manifest), ``curate``
with the pipeline's default settings (exact, pixel and perceptual duplicates, label conflicts across
classes, quality filters), then ``build_dataset`` on the accepted rows, all in a storage root the
caller owns (a temp dir). Fixture files are read in place, never copied into the repository.

A benchmark whose results are hours of compute pins its curation (``pin=``): the first run writes
the accepted rows to a parquet file, and later runs train on exactly those rows even after the
curation logic changes, so that a better dedup does not silently void every stored run.
"""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from pipelines import manifest as mf
from pipelines.curate import DECISIONS_KEY, CurateSettings, curate, read_decisions
from pipelines.dataset import DatasetSettings, build_dataset
from pipelines.fetch import Fetcher, FetchSettings
from pipelines.httpclient import HttpSettings
from pipelines.ingest import ingest_partition
from pipelines.sources.local import LocalDirSource
from pipelines.storage import LocalStorage, Storage, atomic_file

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
DOG_FOLDERS = ("dogs", "dogs-large", "dogs-photos")
NULL_FOLDERS = ("null", "null-photos")  # cats and other things that are not dogs
TILE_FOLDERS = ("tiles",)
INGEST_DAY = date(2026, 1, 1)  # one raw partition per class; the day only orders partitions


@dataclasses.dataclass(frozen=True)
class Curated:
    """Accepted decision rows of a curation run over fixture folders, and what curation decided."""

    storage: Storage
    accepted: list[dict]
    decisions: dict[str, dict[str, int]]  # class -> "accept" or reject reason -> count
    ingested: int  # image files read from the folders
    pinned: str = ""  # when the accepted rows came from a pin file: what differs from today's curation


@dataclasses.dataclass(frozen=True)
class FixtureDataset:
    """A dataset version in a storage root, as ``shard_batches`` takes it."""

    root_url: str
    version: str
    counts: dict[str, dict[str, int]]  # split -> class -> samples
    curated: Curated

    @property
    def train_images(self) -> int:
        return sum(self.counts.get("train", {}).values())


def _synthetic_folder(path: Path, count: int) -> Path:
    """``count`` random 128x128 JPEGs in ``path``: stand-ins when a fixture folder is absent."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        (path / f"synthetic.{i:05d}.jpg").write_bytes(buf.getvalue())
    return path


def curate_fixtures(
    root: Path,
    folders: Mapping[str, Sequence[str]],
    *,
    synthetic: int = 0,
    pin: Path | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> Curated:
    """Ingest ``{class: fixture folders}`` into a fresh local store under ``root`` and curate it.

    A missing folder is an error unless ``synthetic`` > 0, in which case that many random images
    (written under ``root``, outside the store) stand in for it. With ``pin``, see :func:`_pinned`.
    """
    storage = LocalStorage(root / "store", fsync=False)
    fetcher = Fetcher(storage, FetchSettings(http=HttpSettings(retries=1), per_host_concurrency=8, per_host_rate=0))
    ingested = 0
    for class_name, names in folders.items():
        sources = []
        for name in names:
            src = FIXTURES / name
            if not src.is_dir():
                if not synthetic:
                    raise FileNotFoundError(f"no fixture folder {src}")
                log(f"(no fixtures at {src}: using {synthetic} synthetic images)")
                src = _synthetic_folder(root / "synthetic" / name, synthetic)
            sources.append((LocalDirSource(str(src), name=name), 10**9))
        report = ingest_partition(storage, fetcher, class_name, INGEST_DAY, sources, concurrency=4, log=log)
        ingested += len(report.rows)
    default = CurateSettings().class_priority
    priority = tuple(c for c in default if c in folders) + tuple(c for c in folders if c not in default)
    report = curate(storage, CurateSettings(class_priority=priority, workers=2), log=log)
    accepted = [r for r in read_decisions(storage) if r["decision"] == "accept"]
    if pin is None:
        return Curated(storage=storage, accepted=accepted, decisions=report.counts, ingested=ingested)
    pinned, note = _pinned(pin, storage, accepted)
    decisions = {c: {"accept": n} for c, n in sorted(Counter(r["class"] for r in pinned).items())}
    return Curated(storage=storage, accepted=pinned, decisions=decisions, ingested=ingested, pinned=note)


def _pinned(pin: Path, storage: Storage, accepted: list[dict]) -> tuple[list[dict], str]:
    """The accepted rows stored in ``pin`` (written from ``accepted`` on first use), and how today's differ.

    Every pinned image must still be in the store (the fixtures are read again on each run): a pin
    whose images are gone is an error, not a smaller training set.
    """
    if not pin.exists():
        table = mf.read_table(storage, DECISIONS_KEY)  # its schema: hashes are unsigned 64-bit
        with atomic_file(pin) as f:
            pq.write_table(table.filter(pc.equal(table["decision"], "accept")), f)
        return accepted, f"curation pinned to {pin} ({len(accepted)} accepted images)"
    pinned = pq.read_table(pin).to_pylist()
    missing = [r["sha256"] for r in pinned if not storage.exists(r["storage_key"])]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} pinned images are not in the fixtures any more, e.g. {missing[0]}; "
            f"delete {pin} to curate again"
        )
    now, then = {r["sha256"] for r in accepted}, {r["sha256"] for r in pinned}
    note = f"curation pinned by {pin}: {len(pinned)} images"
    if now != then:
        note += f" (today's curation would add {len(now - then)} and drop {len(then - now)}; delete the pin to use it)"
    return pinned, note


def write_dataset(
    curated: Curated,
    classes: Sequence[str],
    resolution: int,
    *,
    exclude: Collection[str] = (),
    shard_max_count: int = 64,
) -> FixtureDataset:
    """Shard the accepted images of ``classes`` (minus the sha256s in ``exclude``) with the pipeline's builder.

    Small shards, so that loader workers each get some of a few-thousand-image set.
    """
    excluded = set(exclude)
    rows = [r for r in curated.accepted if r["sha256"] not in excluded]
    settings = DatasetSettings(classes=tuple(classes), resolution=resolution, shard_max_count=shard_max_count)
    index = build_dataset(curated.storage, rows, settings, log=lambda _msg: None)
    return FixtureDataset(curated.storage.root_url, index.version, index.counts, curated)


def build_fixture_dataset(
    root: Path,
    resolution: int,
    folders: Mapping[str, Sequence[str]],
    *,
    synthetic: int = 0,
    shard_max_count: int = 64,
    log: Callable[[str], None] = lambda _msg: None,
) -> FixtureDataset:
    """:func:`curate_fixtures` then :func:`write_dataset` of every class given."""
    curated = curate_fixtures(root, folders, synthetic=synthetic, log=log)
    return write_dataset(curated, list(folders), resolution, shard_max_count=shard_max_count)


def decisions_line(curated: Curated) -> str:
    """One line saying what curation kept and rejected, per class."""
    parts = []
    for class_name, counts in curated.decisions.items():
        if counts:
            rejected = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()) if reason != "accept")
            kept = f"{class_name}: {counts.get('accept', 0)} accepted"
            parts.append(f"{kept} ({rejected} rejected)" if rejected else kept)
    return f"curation of {curated.ingested} fixture images: " + "; ".join(parts)
