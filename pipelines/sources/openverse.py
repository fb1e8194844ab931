"""Openly licensed photos from Openverse image search, for configurable "not a dog" queries."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pipelines.sources.base import Candidate, SourceContext, SourceUnavailable, interleave


@dataclass
class OpenverseSource:
    name: str = "openverse"
    base_url: str = "https://api.openverse.org/v1"
    queries: list[str] = field(default_factory=lambda: ["cat", "office", "street", "kitchen", "landscape"])
    license_type: str | None = None  # e.g. "commercial" or "modification"
    page_size: int = 20  # the anonymous maximum
    max_pages: int = 50

    def _query(self, ctx: SourceContext, q: str) -> Iterator[Candidate]:
        url = f"{self.base_url.rstrip('/')}/images/"
        page, page_count = 1, 1
        while page <= min(page_count, self.max_pages):
            params = {"q": q, "page": page, "page_size": self.page_size, "mature": "false"}
            if self.license_type:
                params["license_type"] = self.license_type
            try:
                data = ctx.get_json(self.name, url, params=params)
            except SourceUnavailable:
                if page == 1:
                    raise
                return  # anonymous access ends after a few pages: that is the end of this query
            if not isinstance(data, dict) or not isinstance(data.get("results"), list):
                raise SourceUnavailable(f"source {self.name!r}: unexpected search page {str(data)[:120]!r}")
            page_count = int(data.get("page_count") or 0)
            for r in data["results"]:
                if not isinstance(r, dict) or not r.get("url"):
                    continue
                license_ = " ".join(x for x in (r.get("license"), r.get("license_version")) if x) or None
                yield Candidate(
                    url=r["url"],
                    source=self.name,
                    license=license_,
                    meta={
                        "query": q,
                        "openverse_id": r.get("id"),
                        "title": r.get("title"),
                        "creator": r.get("creator"),
                        "license_url": r.get("license_url"),
                        "attribution": r.get("attribution"),
                        "provider": r.get("provider"),
                        "landing_url": r.get("foreign_landing_url"),
                    },
                )
            page += 1

    def candidates(self, ctx: SourceContext) -> Iterator[Candidate]:
        """Round-robin over queries so a small partition still covers every kind of scene."""
        yield from interleave([self._query(ctx, q) for q in self.queries])
