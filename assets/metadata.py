"""Metadata helpers shared by the assets: a picture where a picture says more than counts."""

import base64

import dagster as dg

from pipelines.preview import contact_sheet


def preview(images: list[bytes], cols: int = 8) -> dg.MetadataValue | None:
    """A contact sheet of encoded images as inline Markdown (the Dagster UI renders it), or None."""
    png = contact_sheet(images, cols=cols) if images else None
    return dg.MetadataValue.md(f"![preview](data:image/png;base64,{base64.b64encode(png).decode()})") if png else None
