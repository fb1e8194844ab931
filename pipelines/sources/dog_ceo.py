"""Dog photos from the Dog CEO API (https://dog.ceo/dog-api), which serves the Stanford Dogs images."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

from pipelines.sources.base import Candidate, SourceContext, SourceUnavailable, interleave


def breed_of(url: str) -> str:
    """'.../breeds/hound-afghan/n02088094_1003.jpg' -> 'hound-afghan'."""
    parts = urlparse(url).path.split("/")
    return parts[-2] if len(parts) >= 2 else ""


@dataclass
class DogCeoSource:
    name: str = "dog_ceo"
    base_url: str = "https://dog.ceo/api"
    breeds: list[str] = field(default_factory=list)  # empty: every breed; "hound" or "hound/afghan"

    def _breeds(self, ctx: SourceContext) -> list[str]:
        data = ctx.get_json(self.name, f"{self.base_url.rstrip('/')}/breeds/list/all")
        listing = data.get("message") if isinstance(data, dict) else None
        if not isinstance(listing, dict):
            raise SourceUnavailable(f"source {self.name!r}: unexpected breeds listing {str(data)[:120]!r}")
        if not self.breeds:
            return sorted(listing)
        known = {b for b in listing} | {f"{b}/{s}" for b, subs in listing.items() for s in subs}
        wanted = list(dict.fromkeys(b.replace("-", "/") for b in self.breeds))  # "hound-afghan" == "hound/afghan"
        unknown = [b for b in wanted if b not in known]
        if unknown:
            raise SourceUnavailable(
                f"source {self.name!r}: unknown breeds {unknown}; the API lists {sorted(known)[:20]}..."
            )
        return wanted

    def _images(self, ctx: SourceContext, breed: str) -> Iterator[str]:
        data = ctx.get_json(self.name, f"{self.base_url.rstrip('/')}/breed/{breed}/images")
        urls = data.get("message") if isinstance(data, dict) else None
        if not isinstance(urls, list):
            raise SourceUnavailable(f"source {self.name!r}: unexpected image list for {breed}: {str(data)[:120]!r}")
        yield from (u for u in urls if isinstance(u, str))

    def candidates(self, ctx: SourceContext) -> Iterator[Candidate]:
        """Round-robin over breeds so every partition gets a mix, each breed's list fetched lazily.

        Each URL once, even when both a breed and one of its sub-breeds are configured.
        """
        seen: set[str] = set()
        for url in interleave([self._images(ctx, b) for b in self._breeds(ctx)]):
            if url not in seen:
                seen.add(url)
                yield Candidate(url=url, source=self.name, meta={"breed": breed_of(url)})
