"""A small contact sheet of images, for Dagster metadata where a picture says more than counts."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from PIL import Image, ImageOps


def contact_sheet(images: Sequence[bytes], *, cell: int = 96, cols: int = 8, pad: int = 2) -> bytes | None:
    """PNG bytes of the images centre-cropped to ``cell`` px squares in a grid; None if none decode."""
    thumbs = []
    for data in images:
        try:
            with Image.open(io.BytesIO(data)) as im:
                thumbs.append(ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (cell, cell)))
        except (OSError, ValueError):
            continue
    if not thumbs:
        return None
    cols = min(cols, len(thumbs))
    rows = math.ceil(len(thumbs) / cols)
    sheet = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + pad) + pad), (32, 32, 32))
    for i, t in enumerate(thumbs):
        r, c = divmod(i, cols)
        sheet.paste(t, (pad + c * (cell + pad), pad + r * (cell + pad)))
    out = io.BytesIO()
    sheet.save(out, "PNG", optimize=True)
    return out.getvalue()
