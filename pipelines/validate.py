"""Decide whether downloaded bytes are a usable still image, and say why not.

Scraped "images" are often HTML error pages, truncated transfers, animated GIFs or decompression
bombs; each gets a status and a human-readable reason instead of an exception.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# We check the pixel count ourselves (max_pixels) before decoding, so PIL's own bomb warning is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str

    @property
    def ext(self) -> str:
        return EXTENSIONS.get(self.format, self.format.lower())


class ImageRejected(Exception):
    """Bytes that are not an acceptable image. ``status`` is a manifest status; ``info`` is set when the bytes are
    a valid image all the same (a thumbnail below ``min_side``)."""

    def __init__(self, status: str, reason: str, info: ImageInfo | None = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.info = info


def _looks_like_text(head: bytes) -> str | None:
    start = head.lstrip()[:64].lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if start.startswith((b"{", b"[")):
        return "JSON"
    if start.startswith(b"<?xml"):
        return "XML"
    return None


def validate_image(data: bytes, *, min_side: int = 64, max_pixels: int = 50_000_000) -> ImageInfo:
    """Decode ``data`` (JPEG at 1/8 scale, see below) and return its size, mode and format, or raise
    :class:`ImageRejected`."""
    if not data:
        raise ImageRejected("not_an_image", "empty body")
    kind = _looks_like_text(data[:256])
    if kind:
        raise ImageRejected("not_an_image", f"the body is {kind}, not an image ({len(data)} bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_large", f"decompression bomb: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageRejected("not_an_image", f"unrecognised image data (starts with {data[:8]!r})") from e
    except Exception as e:  # Pillow's parsers raise OSError, SyntaxError, ValueError, struct.error, IndexError...
        raise ImageRejected("not_an_image", f"cannot parse image header: {_describe(e)}") from e
    with img:
        width, height = img.size
        fmt = img.format or "unknown"
        if width * height > max_pixels:
            raise ImageRejected(
                "too_large", f"{width}x{height} = {width * height / 1e6:.1f} MP exceeds max_pixels={max_pixels:,}"
            )
        if fmt == "MPO":  # a JPEG with more images appended (camera previews, HDR gain maps): the first is the photo
            fmt = "JPEG"
        try:
            frames = 1 if fmt == "JPEG" else getattr(img, "n_frames", 1)
            if fmt == "JPEG":
                # DCT scaling to 1/8: libjpeg still entropy-decodes every coefficient of every block, so a
                # truncated or corrupt stream fails exactly as in a full decode, at half the CPU (no full IDCT,
                # upsampling or colour conversion). The size and mode above are the full image's.
                img.draft(None, (1, 1))
            if frames == 1:
                img.load()
        except Image.DecompressionBombError as e:
            raise ImageRejected("too_large", f"decompression bomb: {e}") from e
        except Exception as e:  # corrupt data makes Pillow raise almost anything, not only OSError
            msg = _describe(e)
            status = "truncated" if "truncated" in msg or "broken data stream" in msg else "not_an_image"
            raise ImageRejected(status, f"cannot decode {fmt}: {msg}") from e
        if frames > 1:
            raise ImageRejected("unsupported", f"animated {fmt} with {frames} frames; only still images are used")
        info = ImageInfo(width=width, height=height, mode=img.mode, format=fmt)
        if min(width, height) < min_side:
            raise ImageRejected("too_small", f"{width}x{height} is below min_side={min_side}", info)
        return info


def _describe(e: Exception) -> str:
    """Pillow's own errors read well alone; others (IndexError, struct.error) need their type to make sense."""
    return str(e) if isinstance(e, OSError | SyntaxError | ValueError) else f"{type(e).__name__}: {e}"
