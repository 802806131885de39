"""Checking, decoding and resizing images: the rules every job applies the same way.

Pure Python (Pillow + NumPy), no Spark: it runs inside the jobs' pandas UDFs and is unit-testable.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

# What the clean job accepts: what phones send (JPEG, HEIC/HEIF from iPhones, WebP from some Android apps) and PNG.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "HEIF", "WEBP"})
# Formats a normalized image may keep its original bytes in (what embed decodes cheaply).
NORMALIZED_FORMATS = frozenset({"JPEG", "PNG"})

MIN_SIDE_PX = 32
# Phone cameras stay well below this; anything above is a decompression bomb, refused before decoding.
MAX_PIXELS = 64_000_000
# Files above this size are refused without being read (a phone photo is 2-4 MB, a 48 MP one ~10 MB).
MAX_FILE_BYTES = 64 * 1024 * 1024
# Standard deviation (0-255 grey levels) under which an image carries no usable content.
MIN_STDDEV = 2.0

MODEL_INPUT_SIZE = (224, 224)
# Longest side of the clean dataset's normalized images. The model squashes each image to 224x224, so 512 keeps
# both sides above 224 (never upsampled) for aspect ratios up to 2.3:1, and a 12 MP photo (4032x3024) decoded at
# libjpeg's 1/8 scale is 504x378: it fits without resampling. A 512-px JPEG is ~1-2% of a phone photo's bytes.
DEFAULT_MAX_SIDE = 512
NORMALIZED_JPEG_QUALITY = 95  # features within 1e-2 cosine of the full-size photo's (tests)
EXIF_ORIENTATION = 0x0112

# Why an input file was rejected: the values of the `reason` column.
EMPTY_FILE = "empty_file"
TOO_LARGE = "too_large"
UNREADABLE = "unreadable"  # listed, then could not be read (deleted meanwhile, no permission)
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
    UNREADABLE,
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
# HEIC/HEIF through Pillow. One decoding thread: Spark runs one task per core already.
pillow_heif.register_heif_opener(thumbnails=False)
pillow_heif.options.DECODE_THREADS = 1


@dataclass(frozen=True)
class CleanImage:
    """Outcome of cleaning one file: the original's metadata and the normalized image, or a rejection reason.

    ``width``/``height`` are the original's, upright (EXIF orientation applied); ``orientation`` its EXIF tag
    (1 = stored upright); ``content`` the normalized image's bytes (the original's when it met the norm).
    """

    width: int | None = None
    height: int | None = None
    format: str | None = None
    orientation: int | None = None
    reason: str | None = None
    detail: str | None = None
    content: bytes | None = None


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


def decode_rgb(content: bytes, min_side: int | None = None) -> Image.Image:
    """Decode image bytes to an upright RGB image (EXIF orientation applied, as phones expect).

    With ``min_side``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least
    that long: 4-8x cheaper on phone photos. Other formats decode at full size.
    """
    with Image.open(io.BytesIO(content)) as image:
        if min_side:
            image.draft(image.mode, (min_side, min_side))
        image.load()
        upright = ImageOps.exif_transpose(image)
        return to_rgb(upright)


def _signature_format(content: bytes) -> str | None:
    """The image format announced by a file's first bytes, for files Pillow cannot even open."""
    head = content[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1", b"avif"):
        return "AVIF" if head[8:12] == b"avif" else "HEIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith((b"II*\0", b"MM\0*")):
        return "TIFF"
    if head.startswith(b"BM"):
        return "BMP"
    return None


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1 when absent), read from the header only."""
    if image.format == "PNG":
        # PngImageFile.getexif() decodes the whole image to look for an eXIf chunk after the pixels.
        exif = Image.Exif()
        if raw := image.info.get("exif"):
            exif.load(raw)
    else:
        exif = image.getexif()
    value = exif.get(EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def clean_image(content: bytes | None, max_side: int = DEFAULT_MAX_SIDE) -> CleanImage:
    """Check one file and make its normalized image, decoding it once; never raises on bad input.

    The image is decoded at the smallest size that serves the model (:func:`decode_rgb` with the model's side),
    turned upright and RGB. The normalized image is the original's bytes when the original already meets the norm
    (JPEG or PNG, stored upright, RGB or grey, longest side at most ``max_side``: every Fruits-360 image), else that
    decoded image shrunk to ``max_side`` and saved as a JPEG without metadata.
    """
    if not content:
        return CleanImage(reason=EMPTY_FILE, detail="the file has no bytes")
    try:
        with Image.open(io.BytesIO(content)) as header:
            fmt, (width, height), mode = header.format, header.size, header.mode
            orientation = _orientation(header) if width * height <= MAX_PIXELS else 1
    except UnidentifiedImageError:
        announced = _signature_format(content)
        if announced in ACCEPTED_FORMATS:
            return CleanImage(format=announced, reason=CORRUPT, detail=f"a {announced} header that cannot be read")
        if announced:
            return CleanImage(format=announced, reason=UNSUPPORTED_FORMAT, detail=f"{announced} is not accepted")
        return CleanImage(reason=NOT_AN_IMAGE, detail="no JPEG, PNG, HEIC/HEIF or WebP signature")
    except Exception as exc:  # Pillow raises many types for broken headers.
        return CleanImage(reason=CORRUPT, detail=f"{type(exc).__name__}: {exc}"[:500])
    if fmt == "MPO":  # a JPEG with more pictures appended (depth maps, previews): many phones write these
        fmt = "JPEG"
    if fmt not in ACCEPTED_FORMATS:
        return CleanImage(format=fmt, reason=UNSUPPORTED_FORMAT, detail=f"{fmt} is not JPEG, PNG, HEIC/HEIF or WebP")
    if width * height > MAX_PIXELS:
        return CleanImage(
            width,
            height,
            fmt,
            orientation,
            DECOMPRESSION_BOMB,
            f"{width}x{height} px is over the {MAX_PIXELS:,} pixel limit",
        )
    if orientation in (5, 6, 7, 8):  # stored sideways: the upright image swaps the sides
        width, height = height, width
    if min(width, height) < MIN_SIDE_PX:
        return CleanImage(
            width, height, fmt, orientation, TOO_SMALL, f"{width}x{height} px: a side is under {MIN_SIDE_PX} px"
        )
    try:
        rgb = decode_rgb(content, min_side=min(MODEL_INPUT_SIZE))
    except Exception as exc:  # truncated data, broken streams, bad CRCs
        return CleanImage(width, height, fmt, orientation, CORRUPT, f"{type(exc).__name__}: {exc}"[:500])
    thumbnail = rgb.convert("L")
    thumbnail.thumbnail((128, 128))
    stddev = float(np.asarray(thumbnail, dtype=np.float32).std())
    if stddev < MIN_STDDEV:
        return CleanImage(
            width, height, fmt, orientation, NEAR_UNIFORM, f"grey-level standard deviation {stddev:.2f} < {MIN_STDDEV}"
        )
    meets_norm = (
        fmt in NORMALIZED_FORMATS and orientation == 1 and mode in ("RGB", "L") and max(width, height) <= max_side
    )
    return CleanImage(
        width, height, fmt, orientation, content=content if meets_norm else normalized_jpeg(rgb, max_side)
    )


def normalized_jpeg(rgb: Image.Image, max_side: int = DEFAULT_MAX_SIDE) -> bytes:
    """``rgb`` with its longest side at most ``max_side`` (bilinear, as the model's resize), as JPEG bytes."""
    if max(rgb.size) > max_side:
        rgb = ImageOps.contain(rgb, (max_side, max_side), Image.BILINEAR)
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=NORMALIZED_JPEG_QUALITY)
    return buffer.getvalue()


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
