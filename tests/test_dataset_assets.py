"""``curated_images`` and ``webdataset_shards`` materialised on a temporary instance after real ingestion."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.curated import curated_images, webdataset_shards
from assets.raw_images import raw_images
from pipelines.storage import LocalStorage
from tests.test_raw_images_asset import materialise, resources, web_sources, write_sources


def materialise_dataset(res: dict, instance: dg.DagsterInstance, config: dict | None = None):
    return dg.materialize(
        [raw_images, curated_images, webdataset_shards],
        selection=[curated_images, webdataset_shards],
        instance=instance,
        resources=res,
        run_config={"ops": config} if config else None,
        raise_on_error=False,
    )


@pytest.fixture
def ingested(tmp_path: Path, fakeweb, instance) -> dict:
    """Every class ingested from the loopback web; the satellite box includes flat "ocean" tiles."""
    spec = web_sources(fakeweb, quota=8)
    spec["classes"]["null"].append(  # a dog photo in the null class: a label conflict to find
        {"name": "mirror", "kind": "url_list", "path": str(tmp_path / "urls.txt")}
    )
    (tmp_path / "urls.txt").write_text(fakeweb.url("/dogimg/breeds/hound-afghan/n00000000.jpg") + "\n")
    spec["classes"]["dogs"][0]["breeds"] = ["hound/afghan"]
    res = resources(tmp_path, write_sources(tmp_path / "s.yaml", spec))
    for class_name in ("dogs", "null", "satellite"):
        assert materialise(res, instance, class_name).success
    return res


def test_curate_and_shard_with_lineage_and_checks(tmp_path, ingested, instance):
    result = materialise_dataset(ingested, instance, {"webdataset_shards": {"config": {"holdout_fraction": 0.2}}})
    assert result.success
    [cur] = result.asset_materializations_for_node("curated_images")
    counts = cur.metadata["by_reason"].value
    assert counts["label_conflict"] == 1 and counts["accept"] >= 15
    assert counts.get("near_uniform", 0) + counts.get("low_detail", 0) >= 1  # the flat ocean tiles
    assert cur.metadata["mode"].value == "full: first run"
    assert cur.metadata["near_duplicate_pairs"].value.startswith("![preview](data:image/png;base64,")
    assert cur.metadata["hashed_this_run"].value == sum(counts.values()) - 1  # the dog in null: same bytes, hashed once
    copies = ("mirrored_duplicates", "letterboxed", "thumbnails_linked", "pixel_compared_this_run")
    assert all(isinstance(cur.metadata[k].value, int) for k in copies)
    [shards] = result.asset_materializations_for_node("webdataset_shards")
    md = shards.metadata
    assert md["samples"].value == counts["accept"]
    assert md["curated_version"].value == cur.metadata["decisions_version"].value
    assert md["preview"].value.startswith("![preview](data:image/png;base64,")
    assert shards.tags["dagster/data_version"] == md["dataset_version"].value
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"no_cross_class_near_duplicates": True, "shards_intact": True}

    # lineage: from a sample in a shard back to the URL it was scraped from
    store = LocalStorage(tmp_path / "data")
    version = md["dataset_version"].value
    index = json.loads(store.get_bytes(f"datasets/versions/{version}/index.json"))
    assert set(index["splits"]) == {"train", "holdout"} and index["preprocessing"]["resolution"] == 64
    assert sum(index["counts"]["holdout"].values()) >= 1

    again = materialise_dataset(ingested, instance, {"webdataset_shards": {"config": {"holdout_fraction": 0.2}}})
    [cur2] = again.asset_materializations_for_node("curated_images")
    [shards2] = again.asset_materializations_for_node("webdataset_shards")
    assert cur2.metadata["mode"].value == "incremental" and cur2.metadata["hashed_this_run"].value == 0
    assert shards2.metadata["dataset_version"].value == version  # same inputs and settings: same version


def test_corrupt_shard_fails_the_check(tmp_path, ingested, instance):
    assert materialise_dataset(ingested, instance).success
    store = LocalStorage(tmp_path / "data")
    shard = next(k for k in store.list("datasets/shards/"))
    data = bytearray(store.get_bytes(shard))
    data[2000] ^= 0xFF
    store.put_bytes(shard, bytes(data))
    result = materialise_dataset(ingested, instance)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["shards_intact"].passed
    assert checks["shards_intact"].metadata["bad"].value == [shard]
