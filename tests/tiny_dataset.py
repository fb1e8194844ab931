"""A tiny dataset version written the way webdataset_shards writes one, for the training tests."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.dataset import LATEST_KEY, SAMPLES_SCHEMA, index_key
from pipelines.shards import write_shards
from pipelines.storage import LocalStorage

CLASSES = ["cat", "dog", "null"]


def write_dataset(
    root: Path,
    n: int = 64,
    per_shard: int = 8,
    resolution: int = 32,
    holdout: int = 0,
    meta: Callable[[int], dict[str, Any] | None] | None = None,
) -> str:
    """n random RGB PNGs of ``resolution`` px in 3 classes (and ``holdout`` more in the holdout split), as
    version "v1", with datasets/latest.json naming it. ``meta(i)``: sample i's json metadata (None: none),
    like the ``breed`` the dataset writes for Dog CEO images."""
    storage = LocalStorage(root)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n + holdout):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(buf, format="PNG")
        samples.append({"__key__": f"{i:064x}", "png": buf.getvalue(), "cls": i % 3})
        extra = meta(i) if meta is not None else None
        if extra is not None:
            samples[-1]["json"] = extra
    splits = {
        "train": write_shards(storage, samples[:n], max_count=per_shard),
        "holdout": write_shards(storage, samples[n:], max_count=per_shard) if holdout else [],
    }
    rows = [
        {
            "key": s["__key__"],
            "class": CLASSES[s["cls"]],
            "cls": s["cls"],
            "split": "train" if i < n else "holdout",
            "shard": "",
            "source": f"tiny_{CLASSES[s['cls']]}",
            "url": f"file:///tiny/{i}.png",
            "raw_partition": "",
        }
        for i, s in enumerate(samples)
    ]
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["split"], {}).setdefault(r["class"], 0)
        counts[r["split"]][r["class"]] += 1
    index = {
        "classes": CLASSES,
        "preprocessing": {"resolution": resolution, "image_format": "png"},
        "splits": {k: [dataclasses.asdict(i) for i in v] for k, v in splits.items()},
        "counts": counts,
    }
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), buf)
    storage.put_bytes("datasets/versions/v1/samples.parquet", buf.getvalue())
    storage.put_bytes(index_key("v1"), json.dumps(index).encode())
    storage.put_bytes(LATEST_KEY, json.dumps({"version": "v1", "index": index_key("v1")}).encode())
    return "v1"


def tiny_experiment(**overrides: Any) -> dict[str, Any]:
    """A training config small enough for a test (32 px, width 8, 2 steps, one thread) on that dataset."""
    spec: dict[str, Any] = {
        "net": {"resolution": 32, "width": 8, "latent_dim": 16},
        "classes": ["dog"],
        "batch_size": 8,
        "steps": 2,
        "seed": 0,
        "threads": 1,
        "checkpoint_every": 2,
        "frame_every": 2,
        "frame_count": 4,
        "frame_nrow": 2,
        "log_every": 1,
    }
    return spec | overrides
