"""Deterministic, content-addressed WebDataset shards written through the storage layer.

A shard is a plain (uncompressed) tar in WebDataset layout: one member per field,
``<__key__>.<ext>``, fields of a sample next to each other. Shards are named by the sha256 of their
bytes, so writing the same samples in the same order twice gives the same keys (idempotent re-runs),
and a new dataset version never overwrites the shards an older version's manifest still points to.

For that the tar bytes must not depend on when or by whom they were written: webdataset's
:class:`~webdataset.TarWriter` stamps every member with ``time.time()`` unless given ``mtime``, and
with a user/group name and mode. We pin all of them (see :data:`TAR_MTIME`) and avoid gzip, whose
header carries a timestamp too. uid/gid are tarfile's default 0. The mtime must be an int: tarfile (PAX
format by default) writes a float mtime into an extra PAX header; with an int and ASCII names every
header is a plain ustar block.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import operator
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from webdataset.writer import TarWriter, encode_based_on_extension

from pipelines.storage import Storage

log = logging.getLogger(__name__)

#: Fixed member mtime (2000-01-01T00:00:00Z): any constant works, a non-zero one keeps tar tools quiet.
TAR_MTIME = 946_684_800
TAR_USER = "gan"
TAR_GROUP = "gan"
TAR_MODE = 0o444

_BLOCK = 512  # tar block size
_RECORD = 20 * _BLOCK  # tarfile pads the archive to a multiple of this (tarfile.RECORDSIZE)


@dataclass(frozen=True)
class ShardInfo:
    """One written shard, as a dataset manifest records it."""

    key: str  # storage key, content-addressed: f"{prefix}/{sha256}.tar"
    sha256: str  # of the tar bytes
    count: int  # samples
    bytes: int


def _encode_cls(value: Any) -> bytes:
    # operator.index rejects floats and strings: a label of 3.0 or "3" is a bug upstream, not a class.
    return str(operator.index(value)).encode("ascii")


def _encode_json(value: Any) -> bytes:
    # sort_keys + fixed separators: the same dict always gives the same bytes, whatever its insertion order.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


#: Encoders by field extension; ``bytes`` values (the encoded images) pass through untouched.
ENCODERS: dict[str, Any] = {"cls": _encode_cls, "json": _encode_json}


def encode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Encode a sample's fields to bytes (webdataset's extension-based encoder with our handlers)."""
    key = sample.get("__key__")
    if not isinstance(key, str) or not key or "." in key:
        # webdataset splits member names at the first dot of the basename: a dotted key would split a sample.
        raise ValueError(f"sample __key__ must be a non-empty string without '.', got {key!r}")
    return encode_based_on_extension(sample, ENCODERS)


def member_bytes(encoded: dict[str, Any]) -> int:
    """Bytes a sample adds to a tar: a 512-byte header per field plus the data padded to 512."""
    total = 0
    for k, v in encoded.items():
        if k.startswith("_"):
            continue  # metadata (__key__, ...) is not written
        total += _BLOCK + -(-len(v) // _BLOCK) * _BLOCK
    return total


def tar_size(members: int) -> int:
    """Final size of a tar whose members take ``members`` bytes: two zero end blocks, padded to a record."""
    return -(-(members + 2 * _BLOCK) // _RECORD) * _RECORD


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what goes through, so nothing is read back."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class _OpenShard:
    """The shard being written: a TarWriter onto a local temp file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115 - closed in finish()
        self.hashing = _HashingWriter(self.file)
        self.tar = TarWriter(
            self.hashing,
            user=TAR_USER,
            group=TAR_GROUP,
            mode=TAR_MODE,
            mtime=TAR_MTIME,
            compress=False,
            encoder=False,  # already encoded by encode_sample, so sizes are known before writing
        )
        self.count = 0
        self.members = 0

    def write(self, encoded: dict[str, Any], size: int) -> None:
        self.tar.write(encoded)
        self.count += 1
        self.members += size

    def finish(self) -> tuple[str, int]:
        self.tar.close()
        self.file.close()
        return self.hashing.sha.hexdigest(), self.hashing.bytes


def write_shards(
    storage: Storage,
    samples: Iterable[dict[str, Any]],
    *,
    prefix: str = "datasets/shards",
    max_count: int = 10_000,
    max_bytes: int = 256 * 2**20,
    tmp_dir: str | Path | None = None,
) -> list[ShardInfo]:
    """Write ``samples`` into content-addressed tar shards under ``prefix``; return them in order.

    Samples are dicts in webdataset convention, e.g. ``{"__key__": sha256hex, "jpg": bytes, "cls": int,
    "json": dict}``; ``cls`` is written as an ASCII integer and ``json`` as sorted-key JSON, bytes as-is.
    A shard holds at most ``max_count`` samples and its tar file at most ``max_bytes`` bytes (exactly:
    the tar size is computed before each sample goes in); a single sample bigger than ``max_bytes`` gets
    a shard of its own, with a warning. Each shard is written to a local temp file, hashed while it is
    written, then streamed into storage and the temp file deleted, so at most one shard is ever on
    local disk and none is held in memory. A shard already in storage under its hash is not re-uploaded.
    """
    if max_count < 1:
        raise ValueError(f"max_count must be at least 1, got {max_count}")
    if max_bytes < _RECORD:
        raise ValueError(f"max_bytes must be at least {_RECORD} (one tar record), got {max_bytes}")
    prefix = prefix.strip("/")
    infos: list[ShardInfo] = []
    with tempfile.TemporaryDirectory(prefix="shards-", dir=tmp_dir) as tmp:
        tmp_path = Path(tmp) / "shard.tar"
        shard: _OpenShard | None = None
        last_key: str | None = None

        def flush() -> None:
            nonlocal shard
            if shard is None:
                return
            count = shard.count
            sha, size = shard.finish()
            shard = None
            key = f"{prefix}/{sha}.tar" if prefix else f"{sha}.tar"
            if not storage.exists(key):
                with open(tmp_path, "rb") as src, storage.open_write(key) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            tmp_path.unlink()
            infos.append(ShardInfo(key=key, sha256=sha, count=count, bytes=size))
            log.info("shard %s: %d samples, %d bytes", key, count, size)

        try:
            for sample in samples:
                encoded = encode_sample(sample)
                key = encoded["__key__"]
                if key == last_key:
                    # The reader groups consecutive members by key: two samples in a row with one key would merge.
                    raise ValueError(f"sample key {key!r} repeated consecutively; deduplicate samples first")
                last_key = key
                size = member_bytes(encoded)
                if shard is not None and (shard.count >= max_count or tar_size(shard.members + size) > max_bytes):
                    flush()
                if tar_size(size) > max_bytes:
                    log.warning("sample %s alone is %d bytes, over max_bytes=%d: own shard", key, size, max_bytes)
                if shard is None:
                    shard = _OpenShard(tmp_path)
                shard.write(encoded, size)
            flush()
        finally:
            if shard is not None:  # an error mid-shard: finish the temp file before its directory goes
                with contextlib.suppress(Exception):
                    shard.finish()
    return infos
