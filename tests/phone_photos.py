"""Phone-like photos made from real Fruits-360 images, for tests and the phone-photo benchmark (never committed).

A phone photo here is a real sample image upscaled to a camera's resolution (12 MP: 4032x3024 by default) with
sensor-like noise, saved the way phones save it: a JPEG (quality 92, camera EXIF), optionally stored sideways with
an EXIF orientation tag (as phones held in portrait do), or a HEIC/HEIF (iPhones) or a WebP (some Android apps).
The picture a person sees (the upright image) is the same whichever way it is stored.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image

pillow_heif.register_heif_opener()

PHONE_SIZE = (4032, 3024)  # 12 MP, 4:3
EXIF_MAKE, EXIF_MODEL, EXIF_ORIENTATION = 0x010F, 0x0110, 0x0112
# Stored orientation -> the transpose that makes the stored pixels from the upright picture (exif_transpose undoes
# it): 6 = "rotate 90 CW to display", the usual portrait photo; 3 = upside down; 8 = "rotate 270 CW".
STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def upright_picture(source: Path, size: tuple[int, int] = PHONE_SIZE, seed: int = 0, noise: float = 4.0) -> Image.Image:
    """The upright picture: ``source`` upscaled (bicubic) to ``size`` with Gaussian sensor noise (sigma in grey
    levels), so that it compresses like a photo rather than like a flat upscale."""
    picture = Image.open(source).convert("RGB").resize(size, Image.BICUBIC)
    # One noise field per size and sigma, shifted per seed: drawing 36 M normal values per photo would dominate.
    grain = np.roll(_noise(size, noise), seed * 7919)
    pixels = np.asarray(picture, dtype=np.int16) + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@functools.lru_cache(maxsize=2)
def _noise(size: tuple[int, int], sigma: float) -> np.ndarray:
    rng = np.random.default_rng(360)
    return rng.normal(0.0, sigma, size=(size[1], size[0], 3)).astype(np.int16)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[EXIF_MAKE] = "FruitsCam"
    exif[EXIF_MODEL] = "Phone 12MP"
    exif[EXIF_ORIENTATION] = orientation
    return exif


def phone_bytes(picture: Image.Image, fmt: str = "JPEG", orientation: int = 1) -> bytes:
    """``picture`` saved as a phone would: ``fmt`` JPEG, HEIF or WEBP, stored with EXIF ``orientation``."""
    stored = picture.transpose(STORED[orientation]) if orientation in STORED else picture
    buffer = io.BytesIO()
    if fmt == "JPEG":
        stored.save(buffer, "JPEG", quality=92, exif=_exif(orientation))
    elif fmt == "HEIF":
        stored.save(buffer, "HEIF", quality=80, exif=_exif(orientation))
    elif fmt == "WEBP":
        stored.save(buffer, "WEBP", quality=85, exif=_exif(orientation))
    else:
        raise ValueError(f"not a phone format: {fmt}")
    return buffer.getvalue()


def write_phone_photo(
    source: Path,
    target: Path,
    fmt: str = "JPEG",
    orientation: int = 1,
    size: tuple[int, int] = PHONE_SIZE,
    seed: int = 0,
) -> Path:
    """Write the phone photo of ``source`` to ``target``; returns ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(phone_bytes(upright_picture(source, size, seed), fmt, orientation))
    return target
