"""Random photographs from Lorem Picsum (Unsplash images), used as "not a dog" examples."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipelines.sources.base import Candidate, SourceContext, SourceUnavailable


@dataclass
class PicsumSource:
    name: str = "picsum"
    base_url: str = "https://picsum.photos"
    size: int = 512  # longest side requested, so we do not pull 5000 px originals
    page_size: int = 100

    def candidates(self, ctx: SourceContext) -> Iterator[Candidate]:
        base = self.base_url.rstrip("/")
        page = 1
        while True:
            items = ctx.get_json(self.name, f"{base}/v2/list", params={"page": page, "limit": self.page_size})
            if not isinstance(items, list):
                raise SourceUnavailable(f"source {self.name!r}: unexpected list page {str(items)[:120]!r}")
            if not items:
                return
            for it in items:
                try:
                    pid, w, h = str(it["id"]), int(it["width"]), int(it["height"])
                except (KeyError, TypeError, ValueError) as e:
                    raise SourceUnavailable(f"source {self.name!r}: unexpected list item {str(it)[:120]!r}") from e
                scale = min(1.0, self.size / max(w, h))
                tw, th = max(1, round(w * scale)), max(1, round(h * scale))
                yield Candidate(
                    url=f"{base}/id/{pid}/{tw}/{th}",
                    source=self.name,
                    license="Unsplash License",
                    meta={"picsum_id": pid, "author": it.get("author"), "page_url": it.get("url")},
                )
            page += 1
