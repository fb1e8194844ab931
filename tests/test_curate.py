"""Curation decisions on generated images with planted duplicates, incremental runs, and dataset versions."""

from __future__ import annotations

import io
import json
import os
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from pipelines.curate import STATE_KEY, CurateSettings, cross_class_conflicts, curate, read_decisions
from pipelines.dataset import DatasetSettings, build_dataset, in_holdout, load_index, preprocess, verify_shard
from pipelines.fetch import Fetcher
from pipelines.ingest import ingest_partition
from pipelines.sources.local import LocalDirSource
from pipelines.storage import LocalStorage, S3Storage, Storage
from tests.fakeweb import make_image_bytes

DAY1, DAY2, DAY0 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 19)


def photo(name: str, size: tuple[int, int] = (160, 160)) -> Image.Image:
    return Image.open(io.BytesIO(make_image_bytes(name, size, "PNG"))).convert("RGB")


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def flat(colour: tuple[int, int, int] = (20, 60, 120), speck: bool = False) -> bytes:
    img = Image.new("RGB", (160, 160), colour)
    if speck:  # a tiny island in an open ocean: varied enough overall, texture in one block only
        ImageDraw.Draw(img).rectangle([70, 70, 78, 78], fill=(200, 180, 90))
    return encode(img, "PNG")


def ingest_folder(storage: Storage, tmp: Path, class_name: str, day: date, files: dict[str, bytes]) -> None:
    """Put files in a folder and ingest it as a raw_images partition, as a local_dir source would."""
    folder = tmp / "src" / class_name / day.isoformat()
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    fetcher = Fetcher(storage)
    try:
        ingest_partition(storage, fetcher, class_name, day, [(LocalDirSource(str(folder), name="local"), 1000)])
    finally:
        fetcher.close()


def by_name(storage: Storage) -> dict[str, dict]:
    return {json.loads(r["meta"])["path"] + "@" + r["class"]: r for r in read_decisions(storage)}


@pytest.fixture
def planted(tmp_path: Path) -> LocalStorage:
    """Day 1: dogs with every kind of duplicate and junk; null with a dog in disguise; satellite tiles."""
    storage = LocalStorage(tmp_path / "data")
    dog = photo("dog/a")
    ingest_folder(
        storage,
        tmp_path,
        "dogs",
        DAY1,
        {
            "a.jpg": encode(dog, quality=90),
            "a_copy.jpg": encode(dog, quality=90),  # same bytes: already_seen at ingest
            "a_q35.jpg": encode(dog, quality=35),  # re-encoded: near duplicate
            "a_half.jpg": encode(dog.resize((80, 80), Image.Resampling.LANCZOS), quality=90),  # downscaled
            "b.png": encode(photo("dog/b"), "PNG", compress_level=1),
            "b_resaved.png": encode(photo("dog/b"), "PNG", compress_level=9),  # same pixels, other bytes
            "c.jpg": encode(photo("dog/c"), quality=90),
            "wide.jpg": encode(photo("dog/wide", (300, 100)), quality=90),
        },
    )
    ingest_folder(
        storage,
        tmp_path,
        "null",
        DAY1,
        {
            "cat.jpg": encode(photo("cat/x"), quality=90),
            "dog_in_null.jpg": encode(photo("dog/c"), quality=60),  # a dog photo scraped as "not a dog"
        },
    )
    ingest_folder(
        storage,
        tmp_path,
        "satellite",
        DAY1,
        {"land.jpg": encode(photo("tile/land"), quality=90), "ocean.png": flat(), "island.png": flat(speck=True)},
    )
    return storage


def test_planted_duplicates_and_junk_get_the_right_reasons(planted):
    report = curate(planted, CurateSettings(workers=2))
    d = by_name(planted)
    expect = {
        "a.jpg@dogs": "",
        "a_copy.jpg@dogs": "exact_duplicate",
        "a_q35.jpg@dogs": "near_duplicate",
        "a_half.jpg@dogs": "near_duplicate",
        "b.png@dogs": "",
        "b_resaved.png@dogs": "pixel_duplicate",
        "c.jpg@dogs": "",
        "wide.jpg@dogs": "extreme_aspect",
        "cat.jpg@null": "",
        "dog_in_null.jpg@null": "label_conflict",
        "land.jpg@satellite": "",
        "ocean.png@satellite": "near_uniform",
        "island.png@satellite": "low_detail",
    }
    assert {k: r["reason"] for k, r in d.items()} == expect
    assert {k for k, r in d.items() if r["decision"] == "accept"} == {k for k, v in expect.items() if v == ""}
    # lineage: every rejected duplicate names what it duplicates, with the distance
    assert (
        d["a_q35.jpg@dogs"]["duplicate_of"] == d["a.jpg@dogs"]["sha256"] and 0 <= d["a_q35.jpg@dogs"]["distance"] <= 8
    )
    assert d["a_copy.jpg@dogs"]["duplicate_of"] == d["a.jpg@dogs"]["sha256"]
    conflict = d["dog_in_null.jpg@null"]
    assert (conflict["duplicate_of"], conflict["duplicate_class"]) == (d["c.jpg@dogs"]["sha256"], "dogs")
    assert all(r["raw_partition"] == f"{r['class']}|2026-11-20" and r["url"].startswith("file://") for r in d.values())
    assert report.accepted == 5 and report.hashed == 12 and report.mode == "full: first run"
    assert cross_class_conflicts(read_decisions(planted), 8) == 0


def test_a_later_dog_drops_an_earlier_null_image(planted, tmp_path):
    """Class priority, not arrival order, settles a conflict: the null image accepted on day 1 is dropped."""
    curate(planted, CurateSettings(workers=2))
    ingest_folder(planted, tmp_path, "dogs", DAY2, {"cat_as_dog.jpg": encode(photo("cat/x"), quality=50)})
    report = curate(planted, CurateSettings(workers=2))
    d = by_name(planted)
    assert report.mode == "incremental" and report.hashed == 1
    assert d["cat_as_dog.jpg@dogs"]["decision"] == "accept"
    assert d["cat.jpg@null"]["reason"] == "label_conflict"
    assert d["cat.jpg@null"]["duplicate_of"] == d["cat_as_dog.jpg@dogs"]["sha256"]


def test_incremental_equals_full_recompute(planted, tmp_path):
    curate(planted, CurateSettings(workers=2))
    ingest_folder(
        planted,
        tmp_path,
        "dogs",
        DAY2,
        {
            "d.jpg": encode(photo("dog/d"), quality=90),
            "a_again.jpg": encode(photo("dog/a"), quality=70),
            "c_crop.jpg": encode(photo("dog/c").crop((4, 4, 156, 156)), quality=90),
        },
    )
    ingest_folder(planted, tmp_path, "null", DAY2, {"d_as_null.jpg": encode(photo("dog/d"), quality=80)})
    incremental = curate(planted, CurateSettings(workers=2))
    assert incremental.mode == "incremental" and incremental.hashed == 4
    assert incremental.new_partitions == ["dogs|2026-11-21", "null|2026-11-21"]

    planted.delete(STATE_KEY)  # forget everything but the feature cache: a full recompute
    full = curate(planted, CurateSettings(workers=2))
    assert full.mode == "full: first run" and full.hashed == 0
    assert full.version == incremental.version
    by = by_name(planted)
    assert (
        by["d_as_null.jpg@null"]["reason"] == "label_conflict" and by["a_again.jpg@dogs"]["reason"] == "near_duplicate"
    )


def test_backfill_of_an_earlier_day_and_new_settings_start_over(planted, tmp_path):
    first = curate(planted, CurateSettings(workers=2))
    ingest_folder(planted, tmp_path, "dogs", DAY0, {"early.jpg": encode(photo("dog/a"), quality=95)})
    report = curate(planted, CurateSettings(workers=2))
    assert report.mode.startswith("full: an earlier partition") and report.hashed == 1
    d = by_name(planted)
    assert d["early.jpg@dogs"]["decision"] == "accept"  # day 0 comes first (and is no worse)
    assert d["a.jpg@dogs"]["reason"] == "near_duplicate"
    strict = curate(planted, CurateSettings(workers=2, radius=0, min_texture=0.0))
    assert strict.mode == "full: settings changed" and strict.hashed == 0 and strict.version != first.version
    assert by_name(planted)["island.png@satellite"]["decision"] == "accept"


def test_undecodable_stored_object_is_a_decision_not_a_crash(planted):
    curate(planted, CurateSettings(workers=2))
    victim = next(r for r in read_decisions(planted) if r["reason"] == "")
    planted.put_bytes(victim["storage_key"], b"rotted")  # the object rotted after ingestion
    planted.delete(STATE_KEY)
    planted.delete("curated/features.parquet")
    curate(planted, CurateSettings(workers=2))
    assert next(r for r in read_decisions(planted) if r["sha256"] == victim["sha256"])["reason"] == "undecodable"


# -- the dataset ----------------------------------------------------------------------------------------


def accepted(storage: Storage) -> list[dict]:
    return [r for r in read_decisions(storage) if r["decision"] == "accept"]


def test_dataset_version_is_stable_and_follows_settings(planted):
    curate(planted, CurateSettings(workers=2))
    settings = DatasetSettings(holdout_fraction=0.3, shard_max_count=2, workers=2)
    a = build_dataset(planted, accepted(planted), settings)
    b = build_dataset(planted, list(reversed(accepted(planted))), settings)
    assert a.version == b.version and a.index == b.index
    assert load_index(planted).version == a.version
    counts = {k: sum(v.values()) for k, v in a.counts.items()}
    assert counts["train"] + counts["holdout"] == 5
    assert sum(s["count"] for s in a.index["splits"]["train"]) == counts["train"]
    assert all(verify_shard(planted, s) is None for split in a.index["splits"].values() for s in split)
    other = build_dataset(planted, accepted(planted), DatasetSettings(holdout_fraction=0.3, resolution=32, workers=2))
    assert other.version != a.version
    assert load_index(planted, a.version).index == a.index  # the old version stays readable


def test_holdout_does_not_move_when_images_arrive(planted, tmp_path):
    curate(planted, CurateSettings(workers=2))
    before = {r["sha256"]: in_holdout(r["sha256"], 0.3) for r in accepted(planted)}
    ingest_folder(
        planted, tmp_path, "dogs", DAY2, {f"n{i}.jpg": encode(photo(f"dog/n{i}"), quality=90) for i in range(6)}
    )
    curate(planted, CurateSettings(workers=2))
    ds = build_dataset(planted, accepted(planted), DatasetSettings(holdout_fraction=0.3, workers=2))
    table = pq.read_table(io.BytesIO(planted.get_bytes(f"datasets/versions/{ds.version}/samples.parquet"))).to_pylist()
    split = {r["key"]: r["split"] == "holdout" for r in table}
    assert {k: split[k] for k in before} == before
    assert len(split) == 11 and {r["url"][:7] for r in table} == {"file://"}


def test_preprocess_orientation_transparency_and_crop():
    img = Image.new("RGBA", (300, 120), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([140, 0, 160, 120], fill=(255, 0, 0, 255))
    out = Image.open(io.BytesIO(preprocess(encode(img, "PNG"), 64, "png")))
    px = np.asarray(out)
    assert out.size == (64, 64) and out.mode == "RGB"
    assert tuple(px[5, 2]) == (255, 255, 255) and px[32, 32, 0] > 200 and px[32, 32, 1] < 60  # white bg, red centre
    rotated = Image.new("RGB", (200, 100), (0, 0, 255))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    jpeg = encode(rotated, "JPEG", exif=exif)
    assert Image.open(io.BytesIO(preprocess(jpeg, 32))).size == (32, 32)


def test_dataset_on_s3_round_trip(planted, moto_s3):
    from ganmodels.data import ShardImageDataset

    curate(planted, CurateSettings(workers=2))
    s3 = S3Storage("ds-" + os.urandom(4).hex(), "gan", endpoint_url=moto_s3)
    s3.client.create_bucket(Bucket=s3.bucket)
    for r in accepted(planted):  # the raw images, as if ingested into S3
        s3.put_bytes(r["storage_key"], planted.get_bytes(r["storage_key"]))
    ds = build_dataset(s3, accepted(planted), DatasetSettings(holdout_fraction=0.0, shard_max_count=4, workers=2))
    keys = [s["key"] for s in ds.index["splits"]["train"]]
    samples = list(ShardImageDataset(s3.root_url, keys, endpoint_url=moto_s3, shuffle_shards=False))
    assert len(samples) == 5
    assert samples[0][0].shape == (3, 64, 64) and float(samples[0][0].min()) >= -1.0
