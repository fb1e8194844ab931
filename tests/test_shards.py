"""WebDataset shards: deterministic content-addressed writing, and the training loader reading them back."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tarfile
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch
from PIL import Image

from ganmodels.data import ShardImageDataset, decode_image, make_loader
from pipelines.shards import ShardInfo, encode_sample, member_bytes, tar_size, write_shards
from pipelines.storage import LocalStorage, S3Storage

SIZE = 64


def make_samples(n: int, *, classes: int = 3, seed: int = 0) -> list[dict]:
    """Random 64x64 RGB images, alternately JPEG and PNG, keyed by the sha256 of their bytes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        ext, fmt = ("jpg", "JPEG") if i % 2 == 0 else ("png", "PNG")
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, fmt)
        data = buf.getvalue()
        out.append({"__key__": hashlib.sha256(data).hexdigest(), ext: data, "cls": i % classes, "json": {"i": i}})
    return out


def fingerprint(image: torch.Tensor) -> str:
    return hashlib.sha256(image.numpy().tobytes()).hexdigest()


def expected(samples: list[dict]) -> dict[str, int]:
    """Fingerprint of each decoded image -> its label, to recognise samples coming out of the loader."""
    return {fingerprint(decode_image(s.get("jpg") or s["png"])): s["cls"] for s in samples}


def unbatch(loader) -> list[tuple[torch.Tensor, int]]:
    return [(img, int(lbl)) for imgs, lbls in loader for img, lbl in zip(imgs, lbls, strict=True)]


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return make_samples(40)


@pytest.fixture
def written(tmp_path, samples) -> tuple[LocalStorage, list[ShardInfo]]:
    storage = LocalStorage(tmp_path / "root", fsync=False)
    return storage, write_shards(storage, samples, max_count=10)


# ---- writing ----------------------------------------------------------------------------------------


def test_shards_bounded_by_count_and_info_correct(written, samples):
    storage, infos = written
    assert [i.count for i in infos] == [10, 10, 10, 10]
    for info in infos:
        data = storage.get_bytes(info.key)
        assert info.key == f"datasets/shards/{info.sha256}.tar"
        assert hashlib.sha256(data).hexdigest() == info.sha256 and len(data) == info.bytes
    with tarfile.open(fileobj=io.BytesIO(storage.get_bytes(infos[0].key))) as tar:
        names = tar.getnames()
        first = samples[0]["__key__"]
        assert names[:3] == [f"{first}.cls", f"{first}.jpg", f"{first}.json"]
        assert tar.extractfile(f"{first}.cls").read() == b"0"
        assert tar.extractfile(f"{first}.json").read() == b'{"i":0}'
        member = tar.getmember(f"{first}.jpg")
        assert (member.uid, member.uname, member.mode) == (0, "gan", 0o444)
    assert list(storage.list("datasets/")) == sorted(i.key for i in infos)  # no temp files left behind


def test_shards_bounded_by_bytes(tmp_path, samples, caplog):
    storage = LocalStorage(tmp_path, fsync=False)
    max_bytes = 50_000  # room for a few ~12 KB images
    infos = write_shards(storage, samples, max_bytes=max_bytes)
    assert len(infos) > 5 and sum(i.count for i in infos) == len(samples)
    assert all(i.bytes <= max_bytes for i in infos)
    assert all(i.bytes == len(storage.get_bytes(i.key)) for i in infos)
    # Greedy: a shard closes only when the next sample would not fit.
    sizes = [member_bytes(encode_sample(s)) for s in samples]
    start = 0
    for info in infos[:-1]:
        end = start + info.count
        assert tar_size(sum(sizes[start:end])) == info.bytes
        assert tar_size(sum(sizes[start : end + 1])) > max_bytes
        start = end
    big = {"__key__": "big", "jpg": os.urandom(60_000), "cls": 0}
    with caplog.at_level(logging.WARNING, logger="pipelines.shards"):
        infos = write_shards(storage, [samples[0], big, samples[1]], max_bytes=max_bytes)
    assert [i.count for i in infos] == [1, 1, 1] and infos[1].bytes == tar_size(3 * 512 + 60_416)
    assert "over max_bytes" in caplog.text


def test_tar_bytes_deterministic_across_time(tmp_path, samples, monkeypatch):
    import webdataset.writer

    class Clock:
        def __init__(self, t: float) -> None:
            self.t = t

        def time(self) -> float:
            return self.t

    runs = []
    for n, now in enumerate([1.0e9, 1.9e9]):  # "written" decades apart
        monkeypatch.setattr(webdataset.writer, "time", Clock(now))
        storage = LocalStorage(tmp_path / f"run{n}", fsync=False)
        # Same samples, json dicts built in another key order: the bytes must not care.
        reordered = [{**s, "json": dict(reversed(list({**s["json"], "z": 1, "a": 2}.items())))} for s in samples]
        plain = [{**s, "json": {**s["json"], "z": 1, "a": 2}} for s in samples]
        infos = write_shards(storage, reordered if n else plain, max_count=7)
        runs.append((infos, [storage.get_bytes(i.key) for i in infos]))
    assert runs[0] == runs[1]
    # Re-running into the same storage is idempotent: same keys, nothing new.
    storage = LocalStorage(tmp_path / "run0", fsync=False)
    before = list(storage.list(""))
    assert write_shards(storage, plain, max_count=7) == runs[0][0]
    assert list(storage.list("")) == before


def test_write_rejects_bad_samples(tmp_path, samples):
    storage = LocalStorage(tmp_path, fsync=False)
    with pytest.raises(ValueError, match="without '\\.'"):
        write_shards(storage, [{**samples[0], "__key__": "a.b"}])
    with pytest.raises(ValueError, match="repeated"):
        write_shards(storage, [samples[0], samples[0]])
    with pytest.raises(TypeError):
        write_shards(storage, [{**samples[0], "cls": 1.5}])
    assert list(storage.list("")) == []
    assert write_shards(storage, []) == []


# ---- reading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_every_sample_once_per_epoch(written, samples, workers):
    storage, infos = written
    loader = make_loader(storage.root_url, [i.key for i in infos], batch_size=4, num_workers=workers, drop_last=False)
    want = expected(samples)
    for epoch in range(2):
        loader.dataset.set_epoch(epoch)
        got = unbatch(loader)
        counts = Counter(fingerprint(img) for img, _ in got)
        assert counts == Counter(want.keys()), f"epoch {epoch}"
        for img, label in got:
            assert img.shape == (3, SIZE, SIZE) and img.dtype == torch.float32
            assert img.min() >= -1.0 and img.max() <= 1.0
            assert label == want[fingerprint(img)]


def test_class_filter(written, samples):
    storage, infos = written
    ds = ShardImageDataset(storage.root_url, [i.key for i in infos], classes=[0, 2])
    got = list(ds)
    assert sorted(fingerprint(img) for img, _ in got) == sorted(k for k, v in expected(samples).items() if v in (0, 2))
    assert {int(lbl) for _, lbl in got} == {0, 2}
    assert all(lbl.dtype == torch.int64 for _, lbl in got)


def test_shuffle_seeded_per_epoch(written):
    storage, infos = written
    keys = [i.key for i in infos]

    def order(seed: int, epoch: int, **kw) -> list[str]:
        ds = ShardImageDataset(storage.root_url, keys, seed=seed, **{"shuffle_buffer": 16, **kw})
        ds.set_epoch(epoch)
        return [fingerprint(img) for img, _ in ds]

    a = order(0, 0)
    assert order(0, 0) == a  # reproducible
    assert order(0, 1) != a and order(1, 0) != a  # differs by epoch and by seed
    assert sorted(order(0, 1)) == sorted(a)
    plain = order(0, 0, shuffle_shards=False, shuffle_buffer=0)
    assert plain == order(5, 3, shuffle_shards=False, shuffle_buffer=0)  # no shuffling: storage order
    assert sorted(plain) == sorted(a) and plain != a


def test_corrupt_sample_truncated_shard_and_missing_key_are_skipped(tmp_path, samples, caplog):
    storage = LocalStorage(tmp_path, fsync=False)
    bad_sample = {"__key__": "f" * 64, "jpg": b"definitely not a jpeg", "cls": 1}
    good = write_shards(storage, samples[:10], max_count=10)
    with_bad = write_shards(storage, [*samples[10:15], bad_sample, *samples[15:20]], max_count=20)
    (trunc,) = write_shards(storage, samples[20:30], max_count=10)
    data = storage.get_bytes(trunc.key)
    storage.put_bytes(trunc.key, data[: len(data) // 2])  # cut in the middle of a member
    storage.put_bytes("datasets/shards/garbage.tar", os.urandom(5000))
    keys = [good[0].key, with_bad[0].key, trunc.key, "datasets/shards/missing.tar", "datasets/shards/garbage.tar"]
    want = expected(samples[:20])

    with caplog.at_level(logging.WARNING, logger="ganmodels.data"):
        ds = ShardImageDataset(storage.root_url, keys)
        got = [fingerprint(img) for img, _ in ds]
    from_trunc = [g for g in got if g not in want]
    assert Counter(g for g in got if g in want) == Counter(want.keys())  # every intact sample arrived once
    assert 0 < len(from_trunc) < 10 and set(from_trunc) <= set(expected(samples[20:30]))
    assert ds.stats.missing_shards == 1
    assert ds.stats.corrupt_shards == 2  # truncated + not a tar
    assert ds.stats.corrupt_samples in (1, 2)  # the bad jpg (+ the truncated shard's partial last sample)
    assert ds.stats.samples == len(got)
    for key in (with_bad[0].key, trunc.key, "missing.tar", "garbage.tar"):
        assert key in caplog.text

    # The same through worker processes: the epoch completes, nothing raises.
    loader = make_loader(storage.root_url, keys, batch_size=4, num_workers=2, drop_last=False)
    got2 = [fingerprint(img) for img, _ in unbatch(loader)]
    assert Counter(got2) == Counter(got)


def test_resample_is_endless_and_gives_up_on_all_bad_shards(written, tmp_path):
    storage, infos = written
    ds = ShardImageDataset(storage.root_url, [i.key for i in infos], resample=True, shuffle_buffer=0)
    assert len(list(islice(ds, 100))) == 100  # more than the 40 samples there are
    bad = ShardImageDataset(storage.root_url, ["nope/a.tar", "nope/b.tar"], resample=True)
    with pytest.raises(RuntimeError, match="unreadable shards in a row"):
        next(iter(bad))


def test_dataset_pickles_without_storage_client(written):
    storage, infos = written
    ds = ShardImageDataset(storage.root_url, [i.key for i in infos])
    next(iter(ds))
    assert ds._storage is not None
    clone = pickle.loads(pickle.dumps(ds))  # what a spawn-started worker receives
    assert clone._storage is None and len(list(clone)) == 40


def test_s3_round_trip(moto_s3, samples):
    bucket = "shards-" + os.urandom(4).hex()
    s3 = S3Storage(bucket, "gan", endpoint_url=moto_s3)
    s3.client.create_bucket(Bucket=bucket)
    infos = write_shards(s3, samples, max_count=10)
    assert all(s3.exists(i.key) for i in infos)
    assert hashlib.sha256(s3.get_bytes(infos[0].key)).hexdigest() == infos[0].sha256
    loader = make_loader(
        f"s3://{bucket}/gan",
        [i.key for i in infos],
        batch_size=4,
        num_workers=2,
        endpoint_url=moto_s3,
        drop_last=False,
    )
    got = unbatch(loader)
    want = expected(samples)
    assert Counter(fingerprint(img) for img, _ in got) == Counter(want.keys())
    assert all(label == want[fingerprint(img)] for img, label in got)


def test_truncation_at_a_member_boundary_caught_by_content_address(tmp_path, samples, caplog):
    """A tar cut between members reads as a valid shorter tar: only the sha256 in its key reveals it."""
    storage = LocalStorage(tmp_path, fsync=False)
    (info,) = write_shards(storage, samples[:4])
    cut = sum(member_bytes(encode_sample(s)) for s in samples[:2])
    storage.put_bytes(info.key, storage.get_bytes(info.key)[:cut])
    with caplog.at_level(logging.WARNING, logger="ganmodels.data"):
        ds = ShardImageDataset(storage.root_url, [info.key], shuffle_buffer=0)
        assert len(list(ds)) == 2
    assert ds.stats.corrupt_shards == 1 and "sha256 mismatch" in caplog.text
    unchecked = ShardImageDataset(storage.root_url, [info.key], shuffle_buffer=0, verify=False)
    assert len(list(unchecked)) == 2 and unchecked.stats.corrupt_shards == 0


def test_ranks_read_disjoint_shards(written, samples, monkeypatch):
    """Under torch.distributed (here its RANK/WORLD_SIZE environment) each rank gets its own shards."""
    storage, infos = written
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        ds = ShardImageDataset(storage.root_url, [i.key for i in infos], seed=3)
        ds.set_epoch(1)
        seen.append({fingerprint(img) for img, _ in ds})
    assert len(seen[0]) == len(seen[1]) == 20 and not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(expected(samples))
