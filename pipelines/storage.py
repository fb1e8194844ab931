"""One storage interface over local disk and S3-compatible object stores.

Everything the pipeline persists (raw images, manifests, shards, checkpoints) goes through a
:class:`Storage` addressed by a root URL, so the same code runs on a laptop (``file://``) and against
S3 or MinIO (``s3://bucket/prefix``). Keys are always ``/``-separated relative paths.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import unquote, urlparse


class StorageError(RuntimeError):
    """Raised when an object cannot be read or written; the message names the object."""


class Storage(Protocol):
    """What every backend offers. Writes are atomic: readers never see a partial object."""

    root_url: str

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def open_read(self, key: str) -> IO[bytes]: ...
    def open_write(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> Iterator[str]: ...
    def delete(self, key: str) -> None: ...
    def uri(self, key: str) -> str: ...


def _check_key(key: str) -> str:
    """Reject keys that would escape the root or are ambiguous."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}: use a relative path without '.', '..' or '//'")
    return key


def _check_prefix(prefix: str) -> str:
    """A listing prefix is a key, or the start of one: it may end with '/' (a folder) or be empty."""
    if prefix:
        _check_key(prefix.removesuffix("/") or ".")
    return prefix


def content_key(sha256: str, ext: str, prefix: str = "raw/images") -> str:
    """Content address of a blob: the same bytes always land on the same key, whatever their URL."""
    return f"{prefix}/{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"


def temp_file_beside(path: Path) -> tuple[int, Path]:
    """A new, hidden ``.<name>.<random>.tmp`` in ``path``'s directory, open for writing: (fd, its path).

    Created with mode 0o666 less the umask, as ``open(path, "wb")`` would create ``path``; the rename
    carries the mode over to the final file. (``tempfile.mkstemp`` makes 0600 files: checkpoints, frames
    and shards other users and containers could not read.)
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_file(path: Path, *, fsync: bool = True) -> Iterator[IO[bytes]]:
    """Write ``path`` all or nothing: a temp file in the same directory, fsynced, renamed over it.

    A crash or an exception at any point leaves the old file (or none), never a partial one; the
    hidden ``.<name>.*.tmp`` a kill may leave behind is ignored by :meth:`LocalStorage.list`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class LocalStorage:
    """A directory tree. Atomic writes by temp file in the same directory + ``os.replace``."""

    def __init__(self, root: str | Path, *, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self.root_url = self.root.as_uri()
        self.fsync = fsync

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as f:
            f.write(data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as e:
            raise StorageError(f"no object {self.uri(key)}") from e

    def open_read(self, key: str) -> IO[bytes]:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as e:
            raise StorageError(f"no object {self.uri(key)}") from e

    def open_write(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return atomic_file(self._path(key), fsync=self.fsync)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (a key prefix, not only a directory), sorted, temp files excluded."""
        base = self.root / _check_prefix(prefix).rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        keys = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def local_path(self, key: str) -> Path:
        """The file behind a key, for libraries that want a path (PIL, ffmpeg)."""
        return self._path(key)


# Error codes of a conditional S3 write that lost: the object exists, changed, vanished or is being written.
_CONDITION_FAILED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"})


class S3Storage:
    """A bucket and prefix on S3 or any S3-compatible store (MinIO, Ceph, R2).

    Credentials come from boto3's standard chain (env, profile, instance role), never from here.
    Large objects go up as multipart uploads; S3 only makes an object visible once the upload
    completes, which gives the same atomicity as the local rename.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        multipart_threshold: int = 16 * 1024 * 1024,
        max_pool_connections: int = 32,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self._args = {
            "bucket": bucket,
            "prefix": prefix,
            "endpoint_url": endpoint_url,
            "region_name": region_name,
            "multipart_threshold": multipart_threshold,
            "max_pool_connections": max_pool_connections,
        }
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root_url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region_name,
            config=Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=max_pool_connections),
        )
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_threshold)

    def __reduce__(self) -> tuple:
        """Pickled as its settings: another process (pipelines/fetchpool.py) makes its own boto3 client."""
        return (functools.partial(S3Storage, **self._args), ())

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, self._key(key), Config=self.transfer)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as body:
            return body.read()

    def open_read(self, key: str) -> IO[bytes]:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise StorageError(f"no object {self.uri(key)}") from e
            raise StorageError(f"cannot read {self.uri(key)}: {e}") from e

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        # Spool to memory, then disk past 64 MiB; upload only when the writer finished without error.
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:
            yield spool  # type: ignore[misc]
            spool.seek(0)
            self.client.upload_fileobj(spool, self.bucket, self._key(key), Config=self.transfer)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str = "") -> Iterator[str]:
        full = f"{self.prefix}/{_check_prefix(prefix)}" if self.prefix else _check_prefix(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    # Conditional writes (S3 since 2024, MinIO): the compare-and-swap a lease between hosts needs.

    def put_if(self, key: str, data: bytes, *, etag: str | None = None) -> str | None:
        """Create ``key`` only if it does not exist (``etag`` None), or replace it only while its ETag is
        ``etag``. The new ETag, or None when the condition failed: another writer got there first."""
        from botocore.exceptions import ClientError

        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)["ETag"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _CONDITION_FAILED:
                return None
            raise

    def get_with_age(self, key: str) -> tuple[bytes, str, float] | None:
        """``(data, etag, seconds since it was written)``, or None when there is no such object.

        The age is the store's clock (its ``Date`` header) minus ``LastModified``, so the clocks of the
        hosts comparing ages never matter. Both have a resolution of one second.
        """
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        with resp["Body"] as body:
            data = body.read()
        server_now = parsedate_to_datetime(resp["ResponseMetadata"]["HTTPHeaders"]["date"])
        return data, resp["ETag"], (server_now - resp["LastModified"]).total_seconds()

    def delete_if(self, key: str, etag: str) -> bool:
        """Delete ``key`` only while its ETag is ``etag``; False when it changed or is gone."""
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key), IfMatch=etag)
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _CONDITION_FAILED:
                return False
            raise


def open_storage(root_url: str, *, endpoint_url: str | None = None, region_name: str | None = None) -> Storage:
    """Storage for a root URL: ``file:///abs/dir``, a plain path, or ``s3://bucket/prefix``."""
    parsed = urlparse(root_url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"{root_url!r}: an S3 root needs a bucket, e.g. s3://my-bucket/gan-data")
        return S3Storage(parsed.netloc, parsed.path, endpoint_url=endpoint_url, region_name=region_name)
    if parsed.scheme == "file":
        return LocalStorage(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
        return LocalStorage(root_url)
    raise ValueError(f"unsupported storage root {root_url!r}: use file://... or s3://bucket/prefix")


def upload_file(store: Storage, path: str | Path, key: str) -> None:
    """Copy a local file into storage, streamed (atomic like every write: temp + rename, or S3 multipart)."""
    with Path(path).open("rb") as src, store.open_write(key) as dst:
        shutil.copyfileobj(src, dst, length=8 * 2**20)
