"""Storage on local disk and on S3 (moto_server over real HTTP): same behaviour, atomic writes."""

import os

import pytest

from pipelines.storage import LocalStorage, S3Storage, StorageError, content_key, open_storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    endpoint = request.getfixturevalue("moto_s3")
    s3 = S3Storage("bucket-" + os.urandom(4).hex(), "pre/fix", endpoint_url=endpoint, multipart_threshold=5 * 2**20)
    s3.client.create_bucket(Bucket=s3.bucket)
    return s3


def test_put_get_list_exists_delete(storage):
    storage.put_bytes("a/b/c.bin", b"hello")
    storage.put_bytes("a/d.bin", b"world")
    storage.put_bytes("ab.bin", b"!")
    assert storage.get_bytes("a/b/c.bin") == b"hello"
    with storage.open_read("a/d.bin") as f:
        assert f.read() == b"world"
    assert storage.exists("a/d.bin") and not storage.exists("a/nope")
    assert list(storage.list("a/")) == ["a/b/c.bin", "a/d.bin"]
    assert sorted(storage.list("a")) == ["a/b/c.bin", "a/d.bin", "ab.bin"]
    storage.delete("a/d.bin")
    assert not storage.exists("a/d.bin")
    with pytest.raises(StorageError, match="no object"):
        storage.get_bytes("a/d.bin")


def test_failed_write_leaves_nothing(storage):
    storage.put_bytes("x.bin", b"old")
    with pytest.raises(RuntimeError), storage.open_write("x.bin") as f:
        f.write(b"partial new content")
        raise RuntimeError("writer died")
    with pytest.raises(RuntimeError), storage.open_write("y.bin") as f:
        f.write(b"partial")
        raise RuntimeError("writer died")
    assert storage.get_bytes("x.bin") == b"old"
    assert not storage.exists("y.bin")
    assert list(storage.list("")) == ["x.bin"]


def test_large_object_streams(storage):
    blob = os.urandom(12 * 2**20)  # over the 5 MiB multipart threshold on S3
    with storage.open_write("big/blob.bin") as f:
        for i in range(0, len(blob), 2**20):
            f.write(blob[i : i + 2**20])
    with storage.open_read("big/blob.bin") as r:
        assert r.read(10) == blob[:10]
    assert storage.get_bytes("big/blob.bin") == blob


def test_multipart_used_on_s3(moto_s3):
    s3 = S3Storage("mp-bucket", endpoint_url=moto_s3, multipart_threshold=5 * 2**20)
    s3.client.create_bucket(Bucket="mp-bucket")
    s3.put_bytes("k", os.urandom(11 * 2**20))
    etag = s3.client.head_object(Bucket="mp-bucket", Key="k")["ETag"]
    assert etag.strip('"').endswith("-3")  # a multipart ETag names its part count


def test_keys_cannot_escape_root(tmp_path):
    st = LocalStorage(tmp_path)
    for bad in ["../x", "/abs", "a//b", "a/./b", ""]:
        with pytest.raises(ValueError, match="invalid storage key"):
            st.put_bytes(bad, b"x")


def test_kill_mid_write_leaves_only_temp_file(tmp_path):
    """A process killed inside open_write leaves the old object intact and no visible partial one."""
    import subprocess
    import sys

    code = (
        "import os, signal\n"
        "from pipelines.storage import LocalStorage\n"
        f"st = LocalStorage({str(tmp_path)!r})\n"
        "st.put_bytes('obj', b'complete')\n"
        "with st.open_write('obj') as f:\n"
        "    f.write(b'half')\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    st = LocalStorage(tmp_path)
    assert st.get_bytes("obj") == b"complete"
    assert list(st.list("")) == ["obj"]


def test_open_storage_urls(tmp_path):
    assert isinstance(open_storage(tmp_path.as_uri()), LocalStorage)
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    with pytest.raises(ValueError, match="bucket"):
        open_storage("s3:///nobucket")
    with pytest.raises(ValueError, match="unsupported"):
        open_storage("gs://b/p")
    assert content_key("ab" * 32, "jpg") == f"raw/images/ab/ab/{'ab' * 32}.jpg"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_mode_open_would_give(tmp_path, umask, mode):
    """Not mkstemp's 0600: checkpoints and frames (atomic_file) and stored objects must be readable by others
    when the umask says so."""
    import torch
    from PIL import Image

    from ganmodels.checkpoint import save_checkpoint
    from ganmodels.frames import save_frame
    from ganmodels.timelapse import render_timelapse

    previous = os.umask(umask)
    try:
        LocalStorage(tmp_path / "store").put_bytes("a/b.bin", b"x")
        checkpoint = save_checkpoint(tmp_path / "checkpoints", 1, {"w": torch.zeros(1)})
        frame = save_frame(Image.new("RGB", (16, 16)), tmp_path / "frames" / "step-1.png")
        video = render_timelapse([(1, frame)], mp4_path=tmp_path / "t.mp4", gif_path=tmp_path / "t.gif", size=16)
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(previous)
    for path in (
        tmp_path / "store" / "a" / "b.bin",
        checkpoint,
        frame,
        video.mp4_path,
        video.gif_path,
        tmp_path / "plain",
    ):
        assert os.stat(path).st_mode & 0o777 == mode, path
