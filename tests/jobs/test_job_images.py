"""The image rules on their own (no Spark): every bad-file kind gets its reason, odd valid ones pass, phone photos
are decoded once at the size the model needs and normalized, Fruits-360 images keep their bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import bad_images
import phone_photos
from fruits_common import images


@pytest.fixture(scope="module")
def a_real_jpeg(sample_dir):
    return sorted((sample_dir / "Training" / "Kiwi").glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def phone_picture(sample_dir):
    """The upright 12 MP picture of a real sample image (what the person photographed)."""
    return phone_photos.upright_picture(sorted((sample_dir / "Training" / "Banana").glob("*.jpg"))[3])


def test_each_bad_file_gets_its_reason(tmp_path, a_real_jpeg):
    expected = bad_images.write_bad_files(tmp_path, a_real_jpeg)
    for name, reason in expected.items():
        result = images.clean_image((tmp_path / name).read_bytes())
        assert result.reason == reason, (name, result)
        assert result.detail and result.content is None


def test_odd_modes_and_phone_formats_are_valid_and_decode_to_rgb(tmp_path, a_real_jpeg):
    formats = {}
    for name in bad_images.write_odd_but_valid_files(tmp_path, a_real_jpeg):
        content = (tmp_path / name).read_bytes()
        result = images.clean_image(content)
        assert result.reason is None, (name, result)
        assert (result.width, result.height, result.orientation) == (100, 100, 1)
        formats[name] = result.format
        pixels = images.model_input(result.content)
        assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert formats["iphone.HEIC"] == "HEIF" and formats["android.webp"] == "WEBP"


def test_transparency_is_composited_on_white(tmp_path):
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    rgb = images.decode_rgb((tmp_path / "clear.png").read_bytes())
    assert rgb.getpixel((10, 10)) == (255, 255, 255)


def test_fruits_360_images_keep_their_original_bytes(sample_dir):
    for path in sorted((sample_dir / "Test" / "Mango").glob("*.jpg"))[:20]:
        content = path.read_bytes()
        result = images.clean_image(content)
        assert result.reason is None and result.content == content, path


def test_a_phone_jpeg_is_normalized_small_and_upright(phone_picture):
    original = phone_photos.phone_bytes(phone_picture, "JPEG")
    result = images.clean_image(original)
    assert (result.width, result.height, result.format, result.orientation) == (4032, 3024, "JPEG", 1)
    normalized = Image.open(io.BytesIO(result.content))
    # Decoded at libjpeg's 1/8 scale (504x378): within the 512 px norm, no resampling needed.
    assert normalized.format == "JPEG" and normalized.size == (504, 378)
    assert len(result.content) <= 0.05 * len(original)
    assert normalized.getexif().get(images.EXIF_ORIENTATION) is None


def test_max_side_is_an_option(phone_picture):
    result = images.clean_image(phone_photos.phone_bytes(phone_picture, "JPEG"), max_side=256)
    assert Image.open(io.BytesIO(result.content)).size == (256, 192)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_sideways_photo_is_stored_upright(phone_picture, orientation):
    upright = images.clean_image(phone_photos.phone_bytes(phone_picture, "JPEG", orientation=1))
    sideways = images.clean_image(phone_photos.phone_bytes(phone_picture, "JPEG", orientation=orientation))
    assert sideways.orientation == orientation
    assert (sideways.width, sideways.height) == (upright.width, upright.height) == (4032, 3024)
    a, b = (images.model_input(r.content).astype(np.float32) for r in (upright, sideways))
    assert np.abs(a - b).mean() < 2.0  # the same picture, up to JPEG rounding


def test_the_normalized_image_gives_the_full_decodes_model_input(phone_picture):
    """What embed sees equals, to a grey level, the full-size photo decoded and resized as before."""
    original = phone_photos.phone_bytes(phone_picture, "JPEG", orientation=6)
    reference = np.asarray(images.decode_rgb(original).resize((224, 224), Image.BILINEAR), dtype=np.float32)
    ours = images.model_input(images.clean_image(original).content).astype(np.float32)
    assert np.abs(reference - ours).mean() < 1.5


def test_heic_and_webp_phone_photos_keep_their_sizes(phone_picture):
    smaller = phone_picture.resize((1600, 1200))
    for fmt in ("HEIF", "WEBP"):
        result = images.clean_image(phone_photos.phone_bytes(smaller, fmt))
        assert (result.reason, result.format, result.width, result.height) == (None, fmt, 1600, 1200)
        assert Image.open(io.BytesIO(result.content)).size == (512, 384)
