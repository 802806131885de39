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
# Pixels converted at a time when an image is reduced or changes mode: a band of rows, a few MB whatever its size.
BAND_PIXELS = 1 << 20
# Formats whose decoder can scale while decoding (libjpeg's DCT scaling, through ``Image.draft``).
DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
# 16/32-bit greyscale modes, scaled to 8 bits by their maximum.
DEEP_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# Peak memory per Python worker of clean_image on one accepted file, beyond the file's bytes (peak_bytes_bound;
# tests/jobs/test_clean_memory.py measures it on hostile files at the pixel limit):
#   peak <= decode + 12 B x reduced pixels + 48 MiB
# - decode: what the format's decoder holds for the full W x H image, the only full-size buffer: PNG its pixels in
#   Pillow's mode (1 B/px for 1, L, P; 2 B/px for 16-bit grey; 4 B/px for RGB, RGBA, LA, I and 48/64-bit RGB(A),
#   which Pillow keeps at 8 bits per channel); HEIC/HEIF 10 B/px (libheif's planes and pillow-heif's copy:
#   7-8.5 measured); WebP 17 B/px (libwebp's canvas, Pillow's copy and image: 16.1 measured); JPEG 4 B/px at
#   libjpeg's draft scale plus, for a progressive file, its DCT coefficients (2 B per sample of the full image).
# - reduced pixels: the image once reduced (Image.reduce right after decoding, formats without a scaled decode) or
#   drafted (JPEG): both sides >= 224 px, the longest >= max_side; each costs 4 B as RGB, 4 as its upright copy,
#   1 as its grey copy. Only a long, thin image (short side under 448 px, or longest under 2 x max_side) keeps
#   its full size there.
# - 48 MiB: the bands of rows converted at a time (BAND_PIXELS), the 512-px output, allocator slack.
# At 8000x8000 (64 MP): 16-bit grey PNG 173 MiB, RGBA or LA PNG 295 MiB, palette PNG 112 MiB, HEIC 662 MiB,
# WebP 1,089 MiB, JPEG 429 MiB; 400x160000 RGBA PNG 1,025 MiB.
_DECODE_BYTES_PER_PIXEL = {"HEIF": 10, "WEBP": 17}
_PEAK_PER_REDUCED_PIXEL = 12
_PEAK_SLACK_BYTES = 48 * 1024 * 1024
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

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


def reduction_factor(width: int, height: int, min_side: int, max_side: int | None = None) -> int:
    """The largest integer factor an image can be shrunk by (``Image.reduce``) and keep both sides at least
    ``min_side`` and, with ``max_side``, its longest side at least ``max_side``; 1 when it cannot shrink."""
    factor = min(width, height) // min_side
    if max_side:
        factor = min(factor, max(width, height) // max_side)
    return max(factor, 1)


def peak_bytes_bound(width: int, height: int, mode: str, fmt: str, max_side: int = DEFAULT_MAX_SIDE) -> int:
    """An upper bound of the memory :func:`clean_image` adds to a Python worker for an accepted ``width x height``
    file of that Pillow ``mode`` and format (the formula above ``_DECODE_BYTES_PER_PIXEL``)."""
    pixels = width * height
    min_side = min(MODEL_INPUT_SIZE)
    if fmt in DRAFT_FORMATS:
        ratio = min(width // min_side, height // min_side)
        scale = next(s for s in (8, 4, 2, 1) if ratio >= s or s == 1)
        reduced = -(-width // scale) * -(-height // scale)
        decode = 4 * reduced + 2 * len(mode) * pixels  # the pixels at draft scale; a progressive file's coefficients
    else:
        factor = reduction_factor(width, height, min_side, max_side)
        reduced = -(-width // factor) * -(-height // factor)
        per_pixel = _DECODE_BYTES_PER_PIXEL.get(fmt)
        if per_pixel is None:  # PNG: the pixels in Pillow's mode
            per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
        decode = per_pixel * pixels
    return decode + _PEAK_PER_REDUCED_PIXEL * reduced + _PEAK_SLACK_BYTES


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _bands(image: Image.Image, factor: int):
    """``(top, band)``: ``image`` a band of rows at a time (about BAND_PIXELS each, a multiple of ``factor`` rows,
    so reducing each band gives the whole image reduced)."""
    width, height = image.size
    rows = factor * max(1, BAND_PIXELS // (width * factor))
    for top in range(0, height, rows):
        yield top, image.crop((0, top, width, min(top + rows, height)))


def _deep_maximum(image: Image.Image) -> int:
    """The largest value of a 16/32-bit greyscale image, without a full-size copy."""
    try:
        return int(image.getextrema()[1])
    except ValueError:  # I;16B and friends: Pillow's extrema take I;16 and I only
        return max(int(band.convert("I").getextrema()[1]) for _, band in _bands(image, 1))


def _alpha_on_white(band: Image.Image, factor: int) -> Image.Image:
    """A band with transparency, reduced, on white: premultiplied colour + (255 - alpha), so reducing averages the
    colours by their alpha, as compositing first would."""
    premultiplied = band.convert("RGBA").convert("RGBa")
    if factor > 1:
        premultiplied = premultiplied.reduce(factor)
    array = np.asarray(premultiplied, dtype=np.uint16)
    return Image.fromarray(np.minimum(array[..., :3] + (255 - array[..., 3:]), 255).astype(np.uint8))


def _deep_to_grey(band: Image.Image, factor: int, top: int) -> Image.Image:
    """A 16/32-bit greyscale band, reduced, scaled to 8 bits as ``value * 255 // top`` in integers."""
    deep = band if band.mode == "I" else band.convert("I")
    if factor > 1:
        deep = deep.reduce(factor)
    array = np.asarray(deep, dtype=np.int64).clip(0, top)
    return Image.fromarray((array * 255 // top).astype(np.uint8))


def to_rgb(image: Image.Image, factor: int = 1) -> Image.Image:
    """Convert any Pillow mode to RGB, reduced by ``factor`` (``Image.reduce``'s box average) on the way;
    transparency is composited on white (Fruits-360's background), 16/32-bit greyscale scaled to 8 bits by its
    maximum (``value * 255 // max``).

    Only RGB and greyscale are converted or reduced whole (as before, so JPEG and Fruits-360 images give the same
    pixels); other modes a band of rows at a time, reduced before their conversion, so no full-size copy in another
    mode is ever made: the memory beyond ``image`` is the result's plus a band's.
    """
    if image.mode in ("RGB", "L") or (factor == 1 and not _has_alpha(image) and image.mode not in DEEP_MODES):
        reduced = image if factor == 1 else image.reduce(factor)
        return reduced if reduced.mode == "RGB" else reduced.convert("RGB")
    if _has_alpha(image):
        convert = _alpha_on_white
    elif image.mode in DEEP_MODES:
        top = max(_deep_maximum(image), 1)

        def convert(band: Image.Image, factor: int) -> Image.Image:
            return _deep_to_grey(band, factor, top)
    else:  # palette, CMYK, 1-bit...: colours first, then the box average

        def convert(band: Image.Image, factor: int) -> Image.Image:
            rgb = band.convert("RGB")
            return rgb if factor == 1 else rgb.reduce(factor)

    width, height = image.size
    result = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top_row, band in _bands(image, factor):
        result.paste(convert(band, factor), (0, top_row // factor))  # paste makes a grey band RGB
    return result


def decode_rgb(content: bytes, min_side: int | None = None, max_side: int | None = None) -> Image.Image:
    """Decode image bytes to an upright RGB image (EXIF orientation applied, as phones expect).

    With ``min_side``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least
    that long: 4-8x cheaper on phone photos. Other formats (no scaled decode) are decoded at full size, then at once
    reduced by :func:`reduction_factor` (both sides at least ``min_side``, and with ``max_side`` the longest side
    at least ``max_side``, so the normalized image is as large as from the full size) before any mode conversion:
    the peak memory is the decoder's plus a few times the reduced image's (:func:`peak_bytes_bound`).
    """
    with Image.open(io.BytesIO(content)) as image:
        if min_side:
            image.draft(image.mode, (min_side, min_side))
        image.load()
        factor = 1
        if min_side and image.format not in DRAFT_FORMATS:
            factor = reduction_factor(*image.size, min_side, max_side)
        rgb = to_rgb(image, factor)
        method = _TRANSPOSE.get(image.getexif().get(EXIF_ORIENTATION, 1))  # as ImageOps.exif_transpose
        if method is not None:
            return rgb.transpose(method)
        return image.copy() if rgb is image else rgb  # the file's image is closed on leaving


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
        rgb = decode_rgb(content, min_side=min(MODEL_INPUT_SIZE), max_side=max_side)
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
