"""Metadata helpers shared by the assets: a picture where a picture says more than counts."""

import base64

import dagster as dg

from pipelines.preview import contact_sheet


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG as inline Markdown: the Dagster UI renders it in the materialisation's metadata."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def preview(images: list[bytes], cols: int = 8) -> dg.MetadataValue | None:
    """A contact sheet of encoded images, or None when there are none."""
    png = contact_sheet(images, cols=cols) if images else None
    return png_markdown(png, "preview") if png else None


def latest_metadata(context: dg.AssetExecutionContext, key: dg.AssetKey) -> dg.AssetMaterialization | None:
    """The latest materialisation of ``key`` for this run's partition, or None."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[context.partition_key]), limit=1
    ).records
    return records[0].asset_materialization if records else None
