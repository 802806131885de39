"""The image rules on their own (no Spark): every bad-file kind gets its reason, odd valid ones pass."""

from __future__ import annotations

import numpy as np
import pytest

import bad_images
from fruits_common import images


@pytest.fixture(scope="module")
def a_real_jpeg(sample_dir):
    return sorted((sample_dir / "Training" / "Kiwi").glob("*.jpg"))[0]


def test_each_bad_file_gets_its_reason(tmp_path, a_real_jpeg):
    expected = bad_images.write_bad_files(tmp_path, a_real_jpeg)
    for name, reason in expected.items():
        result = images.check_image((tmp_path / name).read_bytes())
        assert result.reason == reason, (name, result)
        assert result.detail


def test_odd_modes_are_valid_and_decode_to_rgb(tmp_path, a_real_jpeg):
    for name in bad_images.write_odd_but_valid_files(tmp_path, a_real_jpeg):
        content = (tmp_path / name).read_bytes()
        result = images.check_image(content)
        assert result.reason is None, (name, result)
        assert (result.width, result.height) == (100, 100)
        pixels = images.model_input(content)
        assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def test_transparency_is_composited_on_white(tmp_path):
    from PIL import Image

    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    rgb = images.decode_rgb((tmp_path / "clear.png").read_bytes())
    assert rgb.getpixel((10, 10)) == (255, 255, 255)


@pytest.mark.parametrize(
    "path, label",
    [
        ("s3://b/datasets/fruits/Training/Banana/1_100.jpg", "Banana"),
        ("s3://b/datasets/fruits/Banana/1_100.jpg", None),
        ("s3://b/datasets/fruits/1_100.jpg", None),
        ("s3://other/x/Training/Banana/1_100.jpg", None),
    ],
)
def test_label_is_the_parent_folder_two_levels_down(path, label):
    assert images.label_from_path(path, "s3://b/datasets/fruits/") == label


def test_content_id_is_sha256_of_bytes():
    assert images.content_id(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
