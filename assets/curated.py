"""``curated_images`` (what the model may see, and why not) and ``webdataset_shards`` (the versioned dataset)."""

import tarfile
from collections import Counter

import dagster as dg
from pydantic import Field

from assets.metadata import preview
from assets.raw_images import raw_images
from assets.resources import StorageResource
from pipelines.curate import (
    DECISIONS_KEY,
    CurateSettings,
    cross_class_conflicts,
    curate,
    decisions_version,
    read_decisions,
)
from pipelines.dataset import DatasetSettings, build_dataset, verify_shard
from pipelines.sources import CLASSES
from pipelines.storage import Storage

#: The curated set and the shards run when an upstream has new data, at most once while upstream runs are
#: still queued or running (so a refresh of three classes curates once), and despite the days never scraped
#: (``raw_images`` has a partition per past day, most of them empty by design). See assets/automation.py.
AFTER_INGEST = (
    dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()).with_label("eager_after_ingest")
)


class CurateConfig(dg.Config):
    hash_kind: str = Field("phash", description="imagehash kind: phash or dhash (64-bit; queried mirrored too)")
    radius: int = Field(4, ge=0, le=16, description="Hamming radius for near duplicates (see benchmarks/README.md)")
    class_priority: list[str] = Field(
        list(CurateSettings().class_priority), description="in a cross-class conflict the earlier class keeps it"
    )
    min_side: int = Field(64, description="reject images whose shorter side is below this (the training resolution)")
    max_aspect: float = Field(2.0, description="reject images more elongated than this (long side / short side)")
    min_gray_std: float = Field(3.0, description="reject near-uniform images (grey-level std at 64 px)")
    min_texture: float = Field(0.1, description="reject images with texture in less than this share of 8x8 blocks")

    def settings(self) -> CurateSettings:
        return CurateSettings(**{**self.model_dump(), "class_priority": tuple(self.class_priority)})


def _md_table(counts: dict[str, dict[str, int]]) -> str:
    reasons = sorted({r for c in counts.values() for r in c}, key=lambda r: (r != "accept", r))
    lines = ["| class | " + " | ".join(reasons) + " |", "|---" * (len(reasons) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(n.get(r, 0)) for r in reasons) + " |" for c, n in counts.items()]
    return "\n".join(lines)


def _pairs_preview(store: Storage, rows: list[dict], count: int = 8) -> dg.MetadataValue | None:
    """Rejected near duplicates next to the image they duplicate: the picture that justifies the radius."""
    by_sha = {r["sha256"]: r for r in rows}
    pairs = [r for r in rows if r["reason"] in ("near_duplicate", "superseded", "label_conflict")][:count]
    return preview([store.get_bytes(x["storage_key"]) for r in pairs for x in (by_sha[r["duplicate_of"]], r)])


@dg.asset(
    deps=[raw_images],
    code_version="2",
    group_name="curate",
    automation_condition=AFTER_INGEST,
    kinds={"python", "parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            "no_cross_class_near_duplicates",
            asset="curated_images",
            blocking=True,
            description="No two accepted images of different classes are within the near-duplicate radius",
        )
    ],
)
def curated_images(context: dg.AssetExecutionContext, config: CurateConfig, storage: StorageResource):
    """Accept or reject every ingested image: exact, pixel and perceptual duplicates (mirrored and letterboxed
    copies too, keeping the best copy), label conflicts across classes, and quality filters; thumbnails are
    linked to the picture they show. Incremental: a refresh only hashes new raw partitions."""
    store = storage.open()
    settings = config.settings()
    report = curate(store, settings, log=context.log.info)
    rows = read_decisions(store)

    conflicts = cross_class_conflicts(rows, settings.radius)
    reasons = Counter(r["reason"] or "accept" for r in rows)
    metadata = {
        "dagster/row_count": len(rows),
        "decisions": dg.MetadataValue.path(store.uri(DECISIONS_KEY)),
        "decisions_version": report.version,
        "mode": report.mode,
        "new_raw_partitions": dg.MetadataValue.json(report.new_partitions),
        "raw_manifest_versions": dg.MetadataValue.json(report.raw_versions),
        "hashed_this_run": report.hashed,
        "pixel_compared_this_run": report.pixel_checked,
        "mirrored_duplicates": sum(1 for r in rows if r["mirrored"]),
        "letterboxed": sum(1 for r in rows if r["box"] is not None),
        "thumbnails_linked": sum(1 for r in rows if r["thumbnail"] and r["duplicate_of"]),
        "accepted": report.accepted,
        "by_reason": dg.MetadataValue.json(dict(reasons)),
        "by_class_and_reason": dg.MetadataValue.md(_md_table(report.counts)),
        "settings": dg.MetadataValue.json(config.model_dump()),
        "elapsed_s": round(report.elapsed_s, 2),
    }
    pairs = _pairs_preview(store, rows)
    if pairs:
        metadata["near_duplicate_pairs"] = pairs
    yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(report.version))
    yield dg.AssetCheckResult(
        check_name="no_cross_class_near_duplicates", passed=conflicts == 0, metadata={"conflicting_pairs": conflicts}
    )


class DatasetConfig(dg.Config):
    resolution: int = Field(64, ge=8, le=1024, description="side of the square training images")
    image_format: str = Field("jpg", description="jpg (quality jpeg_quality, 4:4:4) or png (lossless)")
    jpeg_quality: int = Field(95, ge=50, le=100)
    holdout_fraction: float = Field(0.05, ge=0, lt=1, description="share held out for evaluation, by hash of the key")
    seed: int = Field(0, description="shuffle seed: classes are mixed in an order derived from it")
    shard_max_count: int = Field(2_000, ge=1, description="samples per shard; more shards = more parallel readers")
    shard_max_bytes: int = Field(256 * 2**20, ge=10240)
    preview_count: int = Field(32, ge=0, le=128)

    def settings(self) -> DatasetSettings:
        return DatasetSettings(**self.model_dump(exclude={"preview_count"}), classes=CLASSES)


def _first_images(store: Storage, shard_key: str, count: int) -> list[bytes]:
    """The first images of a shard, streamed: a shard can be hundreds of MB."""
    images: list[bytes] = []
    with store.open_read(shard_key) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if member.name.endswith((".jpg", ".png")):
                images.append(tar.extractfile(member).read())  # type: ignore[union-attr]
                if len(images) == count:
                    break
    return images


@dg.asset(
    deps=[curated_images],
    code_version="2",
    group_name="curate",
    automation_condition=AFTER_INGEST,
    kinds={"python", "webdataset"},
    check_specs=[
        dg.AssetCheckSpec(
            "shards_intact",
            asset="webdataset_shards",
            blocking=True,
            description="Every shard in the index exists in storage with the sha256 and size the index records",
        )
    ],
)
def webdataset_shards(context: dg.AssetExecutionContext, config: DatasetConfig, storage: StorageResource):
    """Accepted images preprocessed (EXIF, letterbox bars trimmed, RGB, centre crop, LANCZOS resize) into
    seeded, class-mixed WebDataset tar shards with a fixed holdout split; the data version is the dataset version."""
    store = storage.open()
    decisions = read_decisions(store)
    accepted = [r for r in decisions if r["decision"] == "accept"]
    curated_version = decisions_version(decisions)
    ds = build_dataset(store, accepted, config.settings(), curated_version=curated_version, log=context.log.info)
    shards = [s for split in ds.index["splits"].values() for s in split]
    metadata = {
        "dataset_version": ds.version,
        "index": dg.MetadataValue.path(store.uri(ds.key)),
        "curated_version": curated_version,
        "samples": sum(s["count"] for s in shards),
        "counts": dg.MetadataValue.json(ds.counts),
        "shards": len(shards),
        "bytes": sum(s["bytes"] for s in shards),
        "preprocessing": dg.MetadataValue.json(ds.index["preprocessing"]),
        "dagster/row_count": sum(s["count"] for s in shards),
    }
    train = ds.index["splits"]["train"]
    if train and config.preview_count:
        sheet = preview(_first_images(store, train[0]["key"], config.preview_count))
        if sheet:
            metadata["preview"] = sheet
    yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(ds.version))
    bad = [s["key"] for s in shards if verify_shard(store, s) is not None]
    yield dg.AssetCheckResult(
        check_name="shards_intact", passed=not bad, metadata={"checked": len(shards), "bad": dg.MetadataValue.json(bad)}
    )
