"""Query photos as they arrive over HTTP: size-limited, decodable, and not a decompression bomb."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from skulens.serving.pipeline import RequestError

MAX_IMAGE_BYTES = 10 * 2**20
MAX_PIXELS = 40_000_000  # a 6,300 x 6,300 photo; far past any product shot


def decode_base64(encoded: object) -> bytes:
    if not isinstance(encoded, str):
        raise RequestError("image_base64 must be a string")
    if len(encoded) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise RequestError(f"image is over {MAX_IMAGE_BYTES // 2**20} MB", status=413)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"image_base64 is not valid base64: {exc}") from exc


def photo_format(data: bytes) -> str | None:
    """JPEG, PNG or WEBP when ``data`` starts as that format does; None otherwise."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_image(data: bytes) -> bytes:
    """``data`` when it is a JPEG, PNG or WebP photo Pillow can decode within the limits; else a
    RequestError. The format is judged by the bytes, never by a file name or a declared type."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise RequestError(f"image is {len(data) / 2**20:.1f} MB; at most {MAX_IMAGE_BYTES // 2**20} MB",
                           status=413)
    if not data:
        raise RequestError("image is empty")
    kind = photo_format(data)
    if kind is None:
        raise RequestError("image cannot be read as a photo: only JPEG, PNG and WebP are accepted "
                           f"(the bytes start {data[:8]!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind]) as image:
                width, height = image.size  # read from the header: nothing decoded yet
                if width * height > MAX_PIXELS:
                    raise RequestError(f"image is {width} x {height} pixels (a decompression bomb?); "
                                       f"at most {MAX_PIXELS:,} pixels")
                image.verify()
    except RequestError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(f"image cannot be read as a photo: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt files raise many kinds of errors
        raise RequestError(f"image is damaged: {type(exc).__name__}: {exc}") from exc
    return data
