"""clean's memory per image (no Spark): hostile but accepted uploads at the 64 MP pixel limit (16-bit, 48-bit,
RGBA, LA, palette with transparency, a long thin RGBA, HEIC, WebP), each cleaned in a fresh Python process whose
peak RSS growth must stay under ``images.peak_bytes_bound``; and the reduced path's pixels (16-bit scaling by the
maximum, alpha on white, orientation) against the full-size reference.

The files are made here (small on disk: gradients, PNG rows repeated with the Up filter), never committed.
PNG cannot hold 32-bit grey (Pillow writes mode I as 16-bit PNG), so mode I is tested in memory."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image, ImageOps

from fruits_common import images
from repo import REPO_ROOT

SIDE = 8000  # 8000 x 8000 = images.MAX_PIXELS: the largest image clean accepts


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _write_png(path: Path, width: int, height: int, depth: int, color_type: int, row, plte=b"", trns=b"") -> None:
    """A PNG of 8 horizontal stripes, ``row(stripe)`` giving a stripe's raw row; rows after a stripe's first are
    written with the Up filter (all zeros), so a 64 MP file is a few hundred KB and takes about a second."""
    compressor = zlib.compressobj(6)
    idat = []
    for stripe in range(8):
        first = row(stripe)
        idat.append(compressor.compress(b"\0" + first))
        up = b"\2" + bytes(len(first))
        rows = (stripe + 1) * height // 8 - stripe * height // 8
        idat.extend(compressor.compress(up) for _ in range(rows - 1))
    idat.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    chunks += [_chunk(b"PLTE", plte)] if plte else []
    chunks += [_chunk(b"tRNS", trns)] if trns else []
    chunks += [_chunk(b"IDAT", b"".join(idat)), _chunk(b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks))


def _ramp(width: int, top: int) -> np.ndarray:
    return np.arange(width, dtype=np.int64) * top // (width - 1)


def _grey16_row(stripe: int) -> bytes:
    """Stripe k: the full 16-bit ramp divided by k + 1 (stripe 0 reaches 65535, the image's maximum)."""
    return (_ramp(SIDE, 65535) // (stripe + 1)).astype(">u2").tobytes()


def _rgba_image(width: int, height: int) -> Image.Image:
    """Colour ramps, its top-left quarter transparent."""
    pixels = np.empty((height, width, 4), np.uint8)
    pixels[..., 0] = _ramp(width, 255)
    pixels[..., 1] = _ramp(height, 255)[:, None]
    pixels[..., 2] = 128
    pixels[..., 3] = 255
    pixels[: height // 2, : width // 2, 3] = 0
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> dict[str, Path]:
    """Accepted files that cost the most to decode, written once for the module (~15 s)."""
    folder = tmp_path_factory.mktemp("hostile")
    x = _ramp(SIDE, 255)
    files = {
        name: folder / name
        for name in (
            "grey16.png",
            "rgb48.png",
            "la16.png",
            "rgba.png",
            "palette.png",
            "thin_rgba.png",
            "iphone.heic",
            "alpha.webp",
        )
    }
    _write_png(files["grey16.png"], SIDE, SIDE, 16, 0, _grey16_row)
    _write_png(
        files["rgb48.png"],
        SIDE,
        SIDE,
        16,
        2,
        lambda k: (
            np.dstack([_ramp(SIDE, 65535), _ramp(SIDE, 65535)[::-1], np.full(SIDE, 8000 * k)]).astype(">u2").tobytes()
        ),
    )
    _write_png(
        files["la16.png"],
        SIDE,
        SIDE,
        16,
        4,
        lambda k: np.dstack([_ramp(SIDE, 65535), np.full(SIDE, 65535 if k % 2 else 20000)]).astype(">u2").tobytes(),
    )

    def rgba_row(k: int) -> bytes:
        alpha = np.full(SIDE, 255)
        alpha[: SIDE // 2] = 0 if k % 2 else 128
        return np.dstack([x, 255 - x, np.full(SIDE, 30 * k), alpha]).astype(np.uint8).tobytes()

    _write_png(files["rgba.png"], SIDE, SIDE, 8, 6, rgba_row)
    palette = np.dstack([np.arange(256), 255 - np.arange(256), np.full(256, 90)]).astype(np.uint8).tobytes()
    _write_png(
        files["palette.png"],
        SIDE,
        SIDE,
        8,
        3,
        lambda k: ((x + 31 * k) % 256).astype(np.uint8).tobytes(),
        plte=palette,
        trns=bytes(range(256)),
    )
    # 64 MP whose short side (400 px) cannot be reduced: the worst case for the reduced-image term.
    thin = _ramp(400, 255)
    _write_png(
        files["thin_rgba.png"],
        400,
        160_000,
        8,
        6,
        lambda k: (
            np.dstack([thin, np.full(400, 30 * k), np.full(400, 99), np.full(400, 255 if k % 2 else 60)])
            .astype(np.uint8)
            .tobytes()
        ),
    )
    picture = _rgba_image(SIDE, SIDE)
    # x265's ultrafast preset: ~6 s for 64 MP instead of ~30 s; decoding costs the same.
    pillow_heif.from_pillow(picture.convert("RGB")).save(
        files["iphone.heic"], quality=50, enc_params={"preset": "ultrafast"}
    )
    picture.save(files["alpha.webp"], "WEBP", quality=50, method=0)
    return files


# The child's peak is read from /proc (VmHWM, its own address space's high-water mark), not from getrusage: Linux
# carries ru_maxrss over from the parent through fork and exec, so a child of this (large) pytest process would
# start with the parent's peak.
_CHILD = """
import json, sys, time
from fruits_common import images

def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

content = open(sys.argv[1], "rb").read()
before = status("VmRSS")  # now, not the peak so far: the growth measured is never less than the real one
start = time.perf_counter()
result = images.clean_image(content)
peak = status("VmHWM")
if result.content:
    open(sys.argv[2], "wb").write(result.content)
print(json.dumps({"growth": peak - before, "seconds": time.perf_counter() - start, "reason": result.reason,
                  "size": [result.width, result.height], "format": result.format}))
"""


def _clean_in_child(path: Path, output: Path) -> dict:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "spark_jobs"), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(output)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "name",
    ["grey16.png", "rgb48.png", "la16.png", "rgba.png", "palette.png", "thin_rgba.png", "iphone.heic", "alpha.webp"],
)
def test_a_hostile_file_is_cleaned_within_the_stated_peak(hostile_files, tmp_path, name):
    path = hostile_files[name]
    with Image.open(path) as header:
        (width, height), mode, fmt = header.size, header.mode, header.format
    assert width * height <= images.MAX_PIXELS
    bound = images.peak_bytes_bound(width, height, mode, fmt)
    measured = _clean_in_child(path, tmp_path / "normalized.jpg")
    print(
        f"{name}: {mode} {width}x{height}, {path.stat().st_size:,} B on disk: peak +{measured['growth'] / 2**20:.0f}"
        f" MiB (bound {bound / 2**20:.0f} MiB) in {measured['seconds']:.2f} s"
    )
    assert measured["reason"] is None and measured["size"] == [width, height], measured
    assert measured["growth"] <= bound, (measured, bound)
    normalized = Image.open(tmp_path / "normalized.jpg")
    assert normalized.format == "JPEG" and normalized.mode == "RGB" and max(normalized.size) == images.DEFAULT_MAX_SIDE
    assert np.asarray(normalized.convert("L"), np.float32).std() > 10  # content, not a blank


def test_a_big_16_bit_png_keeps_its_brightness(hostile_files, tmp_path):
    """Each stripe's 16-bit ramp (0-65535 / (k + 1) left to right) comes out as 0-255 / (k + 1) in the normalized
    JPEG: the image's maximum maps to 255, ``value * 255 // max`` (floored: -0.5 on average), within a level (JPEG,
    and the reduced image's partial last column: under a pixel of the 512)."""
    _clean_in_child(hostile_files["grey16.png"], tmp_path / "normalized.jpg")
    grey = np.asarray(Image.open(tmp_path / "normalized.jpg").convert("L"), np.float32)
    assert grey.shape == (512, 512)
    ramp = ((np.arange(512) + 0.5) * SIDE / 512 - 0.5) * 255 / (SIDE - 1)
    for stripe in range(8):
        columns = grey[64 * stripe + 8 : 64 * stripe + 56].mean(axis=0)  # inside the stripe (64 rows of 512)
        error = np.abs(columns - (ramp / (stripe + 1) - 0.5))[4:-4]
        assert error.max() < 1.5 and error.mean() < 0.5, (stripe, error.max(), error.mean())


def test_16_bit_grey_is_scaled_by_its_maximum_in_integers():
    """Reduced by 4 (2240x1000: both sides stay >= 224, the longest >= 512), each 4-column block of equal values
    maps to ``value * 255 // max`` exactly; a 12-bit scan's maximum becomes white as before."""
    step = 117
    values = (np.arange(2240) // 4 * step).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(np.tile(values, (1000, 1))).save(buffer, "PNG")
    assert Image.open(buffer).mode == "I;16"
    rgb = images.decode_rgb(buffer.getvalue(), min_side=224, max_side=512)
    assert rgb.mode == "RGB" and rgb.size == (560, 250)
    expected = np.arange(560) * step * 255 // (559 * step)
    assert np.abs(np.asarray(rgb, np.int64)[:, :, 0] - expected).max() <= 1
    twelve_bit = Image.fromarray(np.tile((np.arange(256) * 16).astype(np.uint16), (40, 1)))
    assert images.to_rgb(twelve_bit).getpixel((255, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["I", "I;16B"])
def test_other_deep_modes_scale_the_same(mode):
    values = np.arange(0, 4096, 16, dtype=np.int64) * 1000  # 32-bit values above 65535
    if mode == "I":
        image = Image.fromarray(np.tile(values, (8, 1)).astype(np.int32))
    else:
        values = values // 1000 * 16
        image = Image.frombytes("I;16B", (256, 8), np.tile(values, (8, 1)).astype(">u2").tobytes())
    assert image.mode == mode
    grey = np.asarray(images.to_rgb(image), np.int64)[0, :, 0]
    assert np.array_equal(grey, values * 255 // values.max())


def test_alpha_is_composited_on_white_as_at_full_size():
    """Reducing premultiplied colours, then adding white, equals compositing at full size, then reducing."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (1000, 1200, 4), dtype=np.uint8)
    pixels[:500, :, 3] = 0  # half clear: white
    rgba = Image.fromarray(pixels)
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.getchannel("A"))
    reference = np.asarray(white.reduce(4), np.int64)
    ours = np.asarray(images.to_rgb(rgba, 4), np.int64)
    assert ours.shape == reference.shape == (250, 300, 3)
    assert np.abs(ours - reference).max() <= 1
    assert (ours[:125] == 255).all()
    palette = rgba.convert("RGB").quantize(64)
    palette.info["transparency"] = 0
    assert images.to_rgb(palette, 4).size == (300, 250)


def test_a_sideways_png_is_reduced_then_turned_upright(tmp_path):
    picture = _rgba_image(2400, 1200)
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", exif=exif)
    rgb = images.decode_rgb(buffer.getvalue(), min_side=224, max_side=512)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue())))
    reference = images.to_rgb(upright, 4)
    assert rgb.size == reference.size == (300, 600)
    assert np.abs(np.asarray(rgb, np.int64) - np.asarray(reference, np.int64)).max() <= 1
    result = images.clean_image(buffer.getvalue())
    assert (result.reason, result.width, result.height, result.orientation) == (None, 1200, 2400, 6)
    assert Image.open(io.BytesIO(result.content)).size == (256, 512)


def test_the_bound_is_the_formula():
    mib = 2**20
    assert images.peak_bytes_bound(8000, 8000, "I;16", "PNG") == 2 * 64_000_000 + 12 * 534 * 534 + 48 * mib
    assert images.peak_bytes_bound(400, 160_000, "RGBA", "PNG") == 16 * 64_000_000 + 48 * mib
    # A 12 MP phone JPEG at 1/8 scale (504x378), counted with a progressive file's coefficients.
    assert images.peak_bytes_bound(4032, 3024, "RGB", "JPEG") == 16 * 504 * 378 + 6 * 4032 * 3024 + 48 * mib
