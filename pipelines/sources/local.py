"""Sources that need no network: a text file of URLs, and a folder of images (air-gapped use)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.sources.base import Candidate, SourceContext, SourceUnavailable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class UrlListSource:
    """One URL per line; blank lines and lines starting with '#' are ignored.

    Lines are listed as written: one that is no http(s) URL (a typo, a ``file:`` URL, a local path)
    becomes an error row of its own, so the rest of the list is still fetched. A file that is not
    UTF-8 stops the source with its line number, before anything is fetched.
    """

    path: str
    name: str = "url_list"
    license: str | None = None

    def candidates(self, ctx: SourceContext) -> Iterator[Candidate]:
        try:
            data = Path(self.path).read_bytes()
        except OSError as e:
            raise SourceUnavailable(f"source {self.name!r}: cannot read URL list {self.path}: {e.strerror}") from e
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            column = e.start - data.rfind(b"\n", 0, e.start)  # 1-based, in bytes
            raise SourceUnavailable(
                f"source {self.name!r}: URL list {self.path}, line {line}, byte {column}: not UTF-8 ({e.reason})"
            ) from None
        for n, line in enumerate(text.split("\n"), 1):
            url = line.strip()
            if url and not url.startswith("#"):
                yield Candidate(url=url, source=self.name, license=self.license, meta={"line": n})


@dataclass
class LocalDirSource:
    """Every image file under a folder, as file:// URLs, in sorted order.

    Its candidates are the only ones the fetcher reads from disk. Entries that are not regular files
    (a FIFO, a link to a device) are listed too: the fetcher refuses them, and the manifest says why.
    """

    path: str
    name: str = "local_dir"
    license: str | None = None
    suffixes: set[str] = field(default_factory=lambda: set(IMAGE_SUFFIXES))

    def candidates(self, ctx: SourceContext) -> Iterator[Candidate]:
        root = Path(self.path).expanduser().resolve()
        if not root.is_dir():
            raise SourceUnavailable(f"source {self.name!r}: {root} is not a directory")
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in self.suffixes and not p.is_dir():
                yield Candidate(
                    url=p.as_uri(),
                    source=self.name,
                    license=self.license,
                    meta={"path": str(p.relative_to(root))},
                    local=True,
                )
