"""The copies a scraper meets that a plain perceptual hash misses or mislabels, on generated photo-like images:
mirrored, letterboxed and pillarboxed copies, PNG and WebP re-saves, thumbnails, small crops, captions and
rotations, and keeping the best copy whatever order the copies arrive in."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from datetime import date
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from pipelines import manifest as mf
from pipelines.curate import STATE_KEY, CurateSettings, curate, read_decisions
from pipelines.dataset import DatasetSettings, build_dataset, load_index
from pipelines.features import content_box, hash_to_int, image_features, phash_pair
from pipelines.hamming import hamming
from pipelines.storage import LocalStorage
from tests.test_curate import encode, ingest_folder

DAY1, DAY2, DAY3 = date(2026, 12, 1), date(2026, 12, 2), date(2026, 12, 3)


def textured(name: str, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like picture: smooth colour regions, shapes with edges, and fine texture, distinct per name."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big"))
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB").resize(size, Image.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(8):
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = sorted(rng.integers(0, h, 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1 + 8, y1 + 8], fill=fill)
    grain = rng.normal(0, 12, (h // 2, w // 2, 3)).repeat(2, 0).repeat(2, 1)
    return Image.fromarray(np.clip(np.asarray(base, np.float32) + grain, 0, 255).astype(np.uint8), "RGB")


def pad(img: Image.Image, ratio: float, bars: str) -> Image.Image:
    """``img`` centred in a frame of aspect ``ratio`` filled with black, white or a blurred enlargement of it."""
    w, h = img.size
    size = (round(h * ratio), h) if w / h < ratio else (w, round(w / ratio))
    if bars == "blurred":
        frame = img.resize(size).filter(ImageFilter.GaussianBlur(max(size) / 20))
    else:
        frame = Image.new("RGB", size, {"black": (0, 0, 0), "white": (255, 255, 255)}[bars])
    frame.paste(img, ((size[0] - w) // 2, (size[1] - h) // 2))
    return frame


def shard_images(storage: LocalStorage, version: str) -> dict[str, bytes]:
    """The training split's images of a dataset version, by sample key, read back from its tar shards."""
    out = {}
    for shard in load_index(storage, version).index["splits"]["train"]:
        with tarfile.open(fileobj=io.BytesIO(storage.get_bytes(shard["key"]))) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                if ext == "jpg":
                    out[key] = tar.extractfile(member).read()
    return out


def decisions(storage: LocalStorage) -> dict[str, dict]:
    return {json.loads(r["meta"])["path"]: r for r in read_decisions(storage)}


def one_day(tmp_path: Path, files: dict[str, bytes], class_name: str = "dogs", day: date = DAY1) -> LocalStorage:
    storage = LocalStorage(tmp_path / "data")
    ingest_folder(storage, tmp_path, class_name, day, files)
    return storage


# ---- features -------------------------------------------------------------------------------------------------


def test_phash_pair_is_imagehash_phash_of_the_image_and_of_its_mirror():
    for k in range(12):
        img = textured(f"mirror/{k}").convert("L")
        direct, mirror = phash_pair(img)
        assert direct == hash_to_int(imagehash.phash(img))
        assert hamming(np.uint64(mirror), np.uint64(hash_to_int(imagehash.phash(ImageOps.mirror(img))))) <= 2


@pytest.mark.parametrize("bars", ["black", "white", "blurred"])
@pytest.mark.parametrize("ratio", [4 / 3, 16 / 9, 9 / 16])
def test_bars_are_trimmed_back_to_the_picture(bars: str, ratio: float):
    picture = textured(f"bars/{bars}/{ratio}", (240, 240))
    framed = pad(picture, ratio, bars)
    f, g = image_features(encode(picture, quality=92)), image_features(encode(framed, quality=90))
    assert f.box is None and g.box is not None
    assert abs(g.width - 240) <= 6 and abs(g.height - 240) <= 6
    assert hamming(np.uint64(f.hash), np.uint64(g.hash)) <= 4


def test_a_flat_band_on_one_side_or_an_object_on_a_plain_ground_is_not_a_bar():
    sky = np.asarray(textured("sky"), np.float32).mean(axis=2)
    sky[:80] = np.linspace(150, 200, 80)[:, None]  # a smooth sky over the top third only
    assert content_box(sky) is None
    ground = np.full((240, 320), 235.0, np.float32)  # a studio shot: one round object centred on a white ground
    yy, xx = np.mgrid[:240, :320]
    inside = ((yy - 120) / 70) ** 2 + ((xx - 160) / 50) ** 2 <= 1
    ground[inside] = np.asarray(textured("object"), np.float32).mean(axis=2)[inside]
    assert content_box(ground) is None


# ---- curation ---------------------------------------------------------------------------------------------------


def test_a_mirrored_copy_is_a_near_duplicate_flagged_mirrored(tmp_path):
    a, b = textured("dog/a"), textured("dog/b")
    storage = one_day(
        tmp_path,
        {"a.jpg": encode(a, quality=90), "a_flipped.jpg": encode(ImageOps.mirror(a), quality=90), "b.jpg": encode(b)},
    )
    curate(storage, CurateSettings(workers=2))
    d = decisions(storage)
    flipped = d["a_flipped.jpg"]
    assert (flipped["reason"], flipped["duplicate_of"], flipped["mirrored"]) == (
        "near_duplicate",
        d["a.jpg"]["sha256"],
        True,
    )
    assert d["b.jpg"]["reason"] == "" and d["a.jpg"]["mirrored"] is None


def test_letterboxed_copies_are_caught_and_the_shard_is_the_picture(tmp_path):
    a = textured("dog/a", (240, 240))
    files = {"a.jpg": encode(a, quality=92)}
    files |= {f"a_{bars}.jpg": encode(pad(a, 16 / 9, bars), quality=90) for bars in ("black", "white", "blurred")}
    files["lone_black.jpg"] = encode(pad(textured("dog/lone", (240, 240)), 16 / 9, "black"), quality=92)
    files["panorama.jpg"] = encode(pad(textured("dog/pano", (480, 150)), 16 / 9, "white"), quality=92)
    storage = one_day(tmp_path, files)
    curate(storage, CurateSettings(workers=2))
    d = decisions(storage)
    for bars in ("black", "white", "blurred"):
        row = d[f"a_{bars}.jpg"]
        assert (row["reason"], row["duplicate_of"]) == ("near_duplicate", d["a.jpg"]["sha256"]), bars
    assert d["panorama.jpg"]["reason"] == "extreme_aspect"  # 3.2:1 inside a 16:9 frame
    lone = d["lone_black.jpg"]
    assert lone["decision"] == "accept" and lone["box"] is not None
    assert (lone["width"], lone["picture_width"]) == (427, pytest.approx(240, abs=6))

    accepted = [r for r in read_decisions(storage) if r["decision"] == "accept"]
    index = build_dataset(storage, accepted, DatasetSettings(classes=("dogs",), resolution=32, holdout_fraction=0.0))
    px = np.asarray(
        Image.open(io.BytesIO(shard_images(storage, index.version)[lone["sha256"]])).convert("L"), np.float32
    )
    assert px[:, :2].mean() > 20 and px[:, -2:].mean() > 20  # no black bar left at the sides of the 32 px sample


def test_a_png_resave_of_a_large_jpeg_is_a_pixel_duplicate(tmp_path):
    """The JPEG is hashed from a 1/4-scale draft decode and the PNG in full: the pixels are compared in full."""
    jpeg = encode(textured("dog/big", (1024, 768)), quality=90)
    png = encode(Image.open(io.BytesIO(jpeg)).convert("RGB"), "PNG")
    storage = one_day(tmp_path, {"a.jpg": jpeg, "a.png": png, "b.jpg": encode(textured("dog/b"), quality=90)})
    report = curate(storage, CurateSettings(workers=2))
    d = decisions(storage)
    assert (d["a.png"]["reason"], d["a.png"]["duplicate_of"]) == ("pixel_duplicate", d["a.jpg"]["sha256"])
    assert d["a.png"]["pixel_sha256"] == d["a.jpg"]["pixel_sha256"]
    assert report.pixel_checked == 2  # only the matched pair was decoded in full, once each
    again = curate(storage, CurateSettings(workers=2))
    assert again.pixel_checked == 0


def test_thumbnails_are_linked_to_the_picture_whichever_comes_first(tmp_path):
    a, b = textured("dog/a"), textured("dog/b")
    storage = LocalStorage(tmp_path / "data")
    ingest_folder(storage, tmp_path, "dogs", DAY1, {"b_thumb.jpg": encode(b.resize((48, 36)), quality=85)})
    ingest_folder(storage, tmp_path, "dogs", DAY2, {"a.jpg": encode(a, quality=90), "b.jpg": encode(b, quality=90)})
    ingest_folder(storage, tmp_path, "dogs", DAY3, {"a_thumb.jpg": encode(a.resize((60, 45)), quality=85)})
    raw = mf.read_table(storage, mf.manifest_key("dogs", DAY3.isoformat())).to_pylist()
    assert [(r["status"], bool(r["storage_key"])) for r in raw] == [("too_small", True)]
    curate(storage, CurateSettings(workers=2))
    d = decisions(storage)
    for thumb, original in (("a_thumb.jpg", "a.jpg"), ("b_thumb.jpg", "b.jpg")):
        row = d[thumb]
        assert (row["decision"], row["reason"], row["thumbnail"]) == ("reject", "too_small", True)
        assert row["duplicate_of"] == d[original]["sha256"], thumb
    assert {k for k, r in d.items() if r["decision"] == "accept"} == {"a.jpg", "b.jpg"}


def worse_copies(img: Image.Image) -> dict[str, bytes]:
    """Copies of ``img`` a scraper meets that are worse than the original (encoded at quality 92)."""
    return {
        "grayscale": encode(ImageOps.grayscale(img).convert("RGB"), quality=92),
        "blurred": encode(img.filter(ImageFilter.GaussianBlur(1.5)), quality=92),
        "smaller": encode(img.resize((img.width // 2, img.height // 2), Image.LANCZOS), quality=92),
        "letterboxed": encode(pad(img, 16 / 9, "black"), quality=92),
        "compressed": encode(img, quality=40),
    }


@pytest.mark.parametrize("kind", ["grayscale", "blurred", "smaller", "letterboxed", "compressed"])
def test_the_best_copy_is_kept_whichever_arrives_first(tmp_path, kind):
    img = textured(f"dog/{kind}")
    worse, original = worse_copies(img)[kind], encode(img, quality=92)
    storage = LocalStorage(tmp_path / "data")
    ingest_folder(storage, tmp_path, "dogs", DAY1, {"copy.jpg": worse})
    first = curate(storage, CurateSettings(workers=2))
    assert decisions(storage)["copy.jpg"]["decision"] == "accept"
    ingest_folder(storage, tmp_path, "dogs", DAY2, {"original.jpg": original})
    later = curate(storage, CurateSettings(workers=2))
    d = decisions(storage)
    assert later.mode == "incremental" and later.version != first.version
    assert d["original.jpg"]["decision"] == "accept"
    assert (d["copy.jpg"]["reason"], d["copy.jpg"]["duplicate_of"]) == ("superseded", d["original.jpg"]["sha256"])

    storage.delete(STATE_KEY)
    assert curate(storage, CurateSettings(workers=2)).version == later.version  # incremental == full

    # The other order: the original first, the worse copy is the near duplicate.
    other = LocalStorage(tmp_path / "other")
    ingest_folder(other, tmp_path / "o", "dogs", DAY1, {"original.jpg": original})
    ingest_folder(other, tmp_path / "o", "dogs", DAY2, {"copy.jpg": worse})
    curate(other, CurateSettings(workers=2))
    d = decisions(other)
    assert d["original.jpg"]["decision"] == "accept" and d["copy.jpg"]["reason"] == "near_duplicate"


def test_a_dataset_built_before_keeps_its_copy_the_next_has_the_better_one(tmp_path):
    img = textured("dog/versions")
    storage = LocalStorage(tmp_path / "data")
    settings = DatasetSettings(classes=("dogs",), resolution=32, holdout_fraction=0.0)
    ingest_folder(storage, tmp_path, "dogs", DAY1, {"gray.jpg": worse_copies(img)["grayscale"]})
    curate(storage, CurateSettings(workers=2))
    old = build_dataset(storage, [r for r in read_decisions(storage) if r["decision"] == "accept"], settings)
    ingest_folder(storage, tmp_path, "dogs", DAY2, {"colour.jpg": encode(img, quality=92)})
    curate(storage, CurateSettings(workers=2))
    new = build_dataset(storage, [r for r in read_decisions(storage) if r["decision"] == "accept"], settings)
    d = decisions(storage)
    assert list(shard_images(storage, old.version)) == [d["gray.jpg"]["sha256"]]  # still readable, unchanged
    assert list(shard_images(storage, new.version)) == [d["colour.jpg"]["sha256"]]


def test_hashing_in_worker_processes_gives_what_one_process_gives(tmp_path):
    files = {f"{k}.jpg": encode(textured(f"dog/many/{k}", (96, 96)), quality=85) for k in range(70)}
    files["0_flipped.jpg"] = encode(ImageOps.mirror(textured("dog/many/0", (96, 96))), quality=85)
    storage = one_day(tmp_path, files)
    pooled = curate(storage, CurateSettings(workers=2))  # 71 images: 2 chunks, 2 processes
    features = storage.get_bytes("curated/features.parquet")
    storage.delete(STATE_KEY)
    storage.delete("curated/features.parquet")
    alone = curate(storage, CurateSettings(workers=1))
    assert (pooled.hashed, alone.hashed) == (71, 71) and pooled.version == alone.version
    assert storage.get_bytes("curated/features.parquet") == features


def test_radius_8_catches_a_small_crop_that_4_misses(tmp_path):
    """What benchmarks/README.md measures on real photos, on a generated one: a 2% border crop moves the hash
    by 6 bits, so it is a near duplicate at radius 8 and a distinct image at 4; a corner watermark is caught
    at both, and a different picture at neither."""
    img = textured("dog/radius")
    w, h = img.size
    marked = img.copy()
    ImageDraw.Draw(marked).text((w * 0.6, h * 0.9), "(c) stockphoto", fill=(255, 255, 255))
    files = {
        "a.jpg": encode(img, quality=92),
        "a_crop.jpg": encode(img.crop((6, 5, w - 6, h - 5)), quality=92),
        "a_marked.jpg": encode(marked, quality=92),
        "b.jpg": encode(textured("dog/other"), quality=92),
    }
    storage = one_day(tmp_path, files)
    for radius, crop in ((4, ""), (8, "near_duplicate")):
        curate(storage, CurateSettings(workers=2, radius=radius))
        d = decisions(storage)
        assert (d["a_crop.jpg"]["reason"], d["a_marked.jpg"]["reason"]) == (crop, "near_duplicate"), radius
        assert d["a.jpg"]["reason"] == d["b.jpg"]["reason"] == ""


def test_a_webp_resave_is_caught_at_4_and_a_3_degree_rotation_at_8(tmp_path):
    """The other two copies benchmarks/README.md measures: a WebP re-save keeps the hash (recall 0.997 on real
    photos at radius 4); a 3 degree rotation moves it by 6 bits here, so only radius 8 catches it (0.73 of real
    photos at 8, 0.20 at 4)."""
    img = textured("dog/a")
    storage = one_day(tmp_path, {"a.jpg": encode(img, quality=92)})
    copies = {
        "a_resaved.webp": encode(img, "WEBP", quality=80),
        "a_rotated.jpg": encode(img.rotate(3, Image.BICUBIC), quality=92),
    }
    ingest_folder(storage, tmp_path / "copies", "dogs", DAY2, copies)
    for radius, rotated in ((4, ""), (8, "near_duplicate")):
        curate(storage, CurateSettings(workers=2, radius=radius))
        d = decisions(storage)
        assert (d["a_resaved.webp"]["reason"], d["a_rotated.jpg"]["reason"]) == ("near_duplicate", rotated), radius
        assert d["a.jpg"]["decision"] == "accept"
