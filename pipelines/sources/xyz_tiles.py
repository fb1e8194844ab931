"""Map tiles from any XYZ tile server over a lon/lat bounding box and zoom levels.

Tile math is mercantile's; URL building is xyzservices', so a named provider ("USGS.USImagery") and a
raw template ("https://host/{z}/{y}/{x}.jpg") behave the same. A ``{date}`` (or a provider's
``{time}``) placeholder is filled with the partition date, so backfilling past days fetches past
imagery from servers that keep it (e.g. NASA GIBS).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import mercantile
import xyzservices
from xyzservices import TileProvider

from pipelines.sources.base import Candidate, SourceContext, interleave

_EPS = 1e-11


def tile_range(bbox: tuple[float, float, float, float], zoom: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), inclusive, of the tiles covering ``bbox`` = (west, south, east, north)."""
    west, south, east, north = bbox
    ul = mercantile.tile(west, north, zoom)
    lr = mercantile.tile(east - _EPS, south + _EPS, zoom)
    return ul.x, ul.y, lr.x, lr.y


def spread_order(count: int) -> Iterator[int]:
    """A fixed permutation of range(count) that jumps across the area instead of scanning rows.

    A small daily partition then samples the whole bounding box, not one corner of it.
    """
    if count <= 0:
        return
    step = max(1, round(count * (math.sqrt(5) - 1) / 2))
    while math.gcd(step, count) != 1:
        step += 1
    for i in range(count):
        yield (i * step) % count


@dataclass
class XyzTilesSource:
    name: str = "xyz_tiles"
    provider: str | None = "USGS.USImagery"  # an xyzservices name, or None to use url_template
    url_template: str | None = None
    bbox: tuple[float, float, float, float] = (-122.55, 37.60, -122.30, 37.85)
    zooms: list[int] = field(default_factory=lambda: [16])
    order: str = "spread"  # or "scan" (row by row)
    license: str | None = None
    attribution: str | None = None

    def __post_init__(self) -> None:
        west, south, east, north = self.bbox
        if not (-180 <= west < east <= 180 and -85.06 <= south < north <= 85.06):
            raise ValueError(
                f"source {self.name!r}: bbox must be (west, south, east, north) in degrees, got {self.bbox}"
            )
        if self.url_template:
            self._tp = TileProvider(url=self.url_template, name=self.name, attribution=self.attribution or "")
        elif self.provider:
            self._tp = xyzservices.providers.query_name(self.provider)
        else:
            raise ValueError(f"source {self.name!r}: set either provider or url_template")

    def _zoom(self, zoom: int, date: str) -> Iterator[Candidate]:
        x0, y0, x1, y1 = tile_range(self.bbox, zoom)
        width, count = x1 - x0 + 1, (x1 - x0 + 1) * (y1 - y0 + 1)
        indices = spread_order(count) if self.order == "spread" else iter(range(count))
        extra = {"date": date}
        if "time" in self._tp:
            extra["time"] = date
        for i in indices:
            x, y = x0 + i % width, y0 + i // width
            yield Candidate(
                url=self._tp.build_url(x=x, y=y, z=zoom, **extra),
                source=self.name,
                license=self.license,
                meta={
                    "z": zoom,
                    "x": x,
                    "y": y,
                    "provider": self._tp.name,
                    "attribution": self.attribution or self._tp.get("attribution"),
                },
            )

    def candidates(self, ctx: SourceContext) -> Iterator[Candidate]:
        date = ctx.partition_date.isoformat()
        ctx.preflight(self.name, self._tp.build_url(x=0, y=0, z=0, date=date))
        yield from interleave([self._zoom(z, date) for z in self.zooms])
