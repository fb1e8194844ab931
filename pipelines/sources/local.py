"""Sources that need no network: a text file of URLs, and a folder of images (air-gapped use)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.sources.base import Candidate, SourceContext, SourceUnavailable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class UrlListSource:
    """One URL per line; blank lines and lines starting with '#' are ignored."""

    path: str
    name: str = "url_list"
    license: str | None = None

    def candidates(self, ctx: SourceContext) -> Iterator[Candidate]:
        try:
            lines = Path(self.path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise SourceUnavailable(f"source {self.name!r}: cannot read URL list {self.path}: {e.strerror}") from e
        for n, line in enumerate(lines, 1):
            url = line.strip()
            if url and not url.startswith("#"):
                yield Candidate(url=url, source=self.name, license=self.license, meta={"line": n})


@dataclass
class LocalDirSource:
    """Every image file under a folder, as file:// URLs, in sorted order."""

    path: str
    name: str = "local_dir"
    license: str | None = None
    suffixes: set[str] = field(default_factory=lambda: set(IMAGE_SUFFIXES))

    def candidates(self, ctx: SourceContext) -> Iterator[Candidate]:
        root = Path(self.path).expanduser().resolve()
        if not root.is_dir():
            raise SourceUnavailable(f"source {self.name!r}: {root} is not a directory")
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in self.suffixes and p.is_file():
                yield Candidate(
                    url=p.as_uri(), source=self.name, license=self.license, meta={"path": str(p.relative_to(root))}
                )
