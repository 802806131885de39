"""Checking, decoding and resizing images: the rules every job applies the same way.

Pure Python (Pillow + NumPy), no Spark: it runs inside the jobs' pandas UDFs and is unit-testable.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# File names the clean job reads, as a Hadoop glob (any case of .jpg, .jpeg, .png).
IMAGE_GLOB = "*.{[jJ][pP][gG],[jJ][pP][eE][gG],[pP][nN][gG]}"
IMAGE_NAME = re.compile(r"\.(jpe?g|png)$", re.IGNORECASE)  # the same names, as a regex
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG"})

MIN_SIDE_PX = 32
# Phone cameras stay well below this; anything above is a decompression bomb, refused before decoding.
MAX_PIXELS = 64_000_000
# Files above this size are refused without being read into a Spark row (binaryFile limit is 2 GiB).
MAX_FILE_BYTES = 64 * 1024 * 1024
# Standard deviation (0-255 grey levels) under which an image carries no usable content.
MIN_STDDEV = 2.0

MODEL_INPUT_SIZE = (224, 224)

# Why an input file was rejected: the values of the `reason` column.
EMPTY_FILE = "empty_file"
TOO_LARGE = "too_large"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
DECOMPRESSION_BOMB = "decompression_bomb"
CORRUPT = "corrupt"
TOO_SMALL = "too_small"
NEAR_UNIFORM = "near_uniform"
DUPLICATE = "duplicate"
REJECTION_REASONS = (
    EMPTY_FILE,
    TOO_LARGE,
    NOT_AN_IMAGE,
    UNSUPPORTED_FORMAT,
    DECOMPRESSION_BOMB,
    CORRUPT,
    TOO_SMALL,
    NEAR_UNIFORM,
    DUPLICATE,
)

# Pillow's own bomb check would warn or raise before ours; we check the header size ourselves.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of checking one file: its size and format when valid, else a rejection reason."""

    width: int | None = None
    height: int | None = None
    format: str | None = None
    reason: str | None = None
    detail: str | None = None


def content_id(content: bytes) -> str:
    """The image's identity: the SHA-256 of its bytes, so identical uploads share one id."""
    return hashlib.sha256(content).hexdigest()


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white (Fruits-360's background)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode == "I;16" or image.mode == "I":
        # 16/32-bit greyscale: scale to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        return Image.fromarray((array * (255.0 / top)).astype(np.uint8), "L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_rgb(content: bytes) -> Image.Image:
    """Decode image bytes to an upright RGB image (EXIF orientation applied, as phones expect)."""
    with Image.open(io.BytesIO(content)) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
        return to_rgb(upright)


def check_image(content: bytes | None) -> ImageCheck:
    """Decide whether a file is a usable photo; never raises on bad input."""
    if not content:
        return ImageCheck(reason=EMPTY_FILE, detail="the file has no bytes")
    try:
        with Image.open(io.BytesIO(content)) as header:
            fmt = header.format
            width, height = header.size
    except UnidentifiedImageError:
        return ImageCheck(reason=NOT_AN_IMAGE, detail="no JPEG or PNG signature")
    except Exception as exc:  # Pillow raises many types for broken headers.
        return ImageCheck(reason=CORRUPT, detail=f"{type(exc).__name__}: {exc}"[:500])
    if fmt not in ACCEPTED_FORMATS:
        return ImageCheck(format=fmt, reason=UNSUPPORTED_FORMAT, detail=f"{fmt} is not JPEG or PNG")
    if width * height > MAX_PIXELS:
        return ImageCheck(
            width, height, fmt, DECOMPRESSION_BOMB, f"{width}x{height} px is over the {MAX_PIXELS:,} pixel limit"
        )
    try:
        rgb = decode_rgb(content)
    except Exception as exc:  # truncated data, broken streams, bad CRCs
        return ImageCheck(width, height, fmt, CORRUPT, f"{type(exc).__name__}: {exc}"[:500])
    width, height = rgb.size
    if min(width, height) < MIN_SIDE_PX:
        return ImageCheck(width, height, fmt, TOO_SMALL, f"{width}x{height} px: a side is under {MIN_SIDE_PX} px")
    thumbnail = rgb.convert("L")
    thumbnail.thumbnail((128, 128))
    stddev = float(np.asarray(thumbnail, dtype=np.float32).std())
    if stddev < MIN_STDDEV:
        return ImageCheck(
            width, height, fmt, NEAR_UNIFORM, f"grey-level standard deviation {stddev:.2f} < {MIN_STDDEV}"
        )
    return ImageCheck(width, height, fmt)


def model_input(content: bytes, size: tuple[int, int] = MODEL_INPUT_SIZE) -> np.ndarray:
    """Decode and resize (bilinear, as Keras' ``load_img``) to a ``(h, w, 3)`` uint8 array."""
    return np.asarray(decode_rgb(content).resize(size, Image.BILINEAR), dtype=np.uint8)


def label_from_path(path: str, input_root: str) -> str | None:
    """The parent folder's name when the file is at least two folders below the input root.

    ``<root>/Training/Banana/1.jpg`` gives ``Banana``; ``<root>/1.jpg`` and ``<root>/2026-11-24/1.jpg``
    (app uploads) give ``None``.
    """
    root = input_root.rstrip("/") + "/"
    if not path.startswith(root):
        return None
    parts = path[len(root) :].split("/")
    return parts[-2] if len(parts) >= 3 else None
