"""Real-world bad inputs, made from real sample images, for the clean job's tests (and the DAG's)."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

from PIL import Image

import phone_photos

# file name -> the reason the clean job must give
EXPECTED_REASONS = {
    "empty.jpg": "empty_file",
    "truncated.jpg": "corrupt",
    "notes.jpg": "not_an_image",
    "animation.png": "unsupported_format",
    "tiny.png": "too_small",
    "bomb.png": "decompression_bomb",
    "blank.jpg": "near_uniform",
    "notes.txt": "not_an_image",
    "clip.gif": "unsupported_format",
    "scan.tiff": "unsupported_format",
    "broken.heic": "corrupt",
}
# valid images in other modes, formats or extensions: the clean job must keep them
EXPECTED_KEPT = ("cmyk.jpg", "palette.png", "rgba.png", "grey.jpeg", "UPPER.JPG", "iphone.HEIC", "android.webp")


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (the pixel data stays tiny): a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("1", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def write_bad_files(folder: Path, real_jpeg: Path) -> dict[str, str]:
    """Write one file per rejection reason into ``folder``; returns ``{file name: expected reason}``."""
    folder.mkdir(parents=True, exist_ok=True)
    original = real_jpeg.read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(original[: len(original) // 2])
    (folder / "notes.jpg").write_text("shopping list: apples, kiwis\n")
    frames = [Image.open(real_jpeg).convert("RGB").quantize(16) for _ in range(2)]
    frames[0].save(folder / "animation.png", "GIF", save_all=True, append_images=frames[1:])
    Image.open(real_jpeg).resize((20, 20)).save(folder / "tiny.png")
    (folder / "bomb.png").write_bytes(_png_with_size(100_000, 100_000))
    Image.new("RGB", (100, 100), (255, 255, 255)).save(folder / "blank.jpg", "JPEG")
    (folder / "notes.txt").write_text("not an image, whatever its name\n")
    Image.open(real_jpeg).save(folder / "clip.gif", "GIF")
    Image.open(real_jpeg).save(folder / "scan.tiff", "TIFF")
    heic = phone_photos.phone_bytes(Image.open(real_jpeg).convert("RGB"), "HEIF")
    (folder / "broken.heic").write_bytes(heic[: len(heic) // 2])
    return dict(EXPECTED_REASONS)


def write_odd_but_valid_files(folder: Path, real_jpeg: Path) -> tuple[str, ...]:
    """Valid photos in CMYK, palette, RGBA, greyscale, HEIC, WebP and an upper-case extension (all 100x100)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.open(real_jpeg).convert("RGB")
    image.convert("CMYK").save(folder / "cmyk.jpg", "JPEG")
    image.quantize(64).save(folder / "palette.png")
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.new("L", image.size, 200))
    rgba.save(folder / "rgba.png")
    image.convert("L").save(folder / "grey.jpeg", "JPEG")
    shutil.copy(real_jpeg, folder / "UPPER.JPG")
    (folder / "iphone.HEIC").write_bytes(phone_photos.phone_bytes(image, "HEIF"))
    (folder / "android.webp").write_bytes(phone_photos.phone_bytes(image, "WEBP"))
    return EXPECTED_KEPT
