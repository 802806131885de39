"""Phone photos through clean and embed with real Spark: what embed sees is a small upright normalized image, and
its features are the full-size photo's (against Keras on the fully decoded, upright, bilinear-resized photo)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from jobs.conftest import RUN_DATE
from PIL import Image

import clean
import embed
import phone_photos
from fruits_common import images


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def keras_features(weights_file, photos: list[bytes]) -> np.ndarray:
    """Keras MobileNetV2 on each photo fully decoded, turned upright and resized to 224 (bilinear)."""
    import keras
    from keras.applications.mobilenet_v2 import preprocess_input

    model = keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=str(weights_file)
    )
    pixels = np.stack(
        [np.asarray(images.decode_rgb(p).resize((224, 224), Image.BILINEAR), dtype=np.float32) for p in photos]
    )
    return model.predict(preprocess_input(pixels), verbose=0)


@pytest.fixture(scope="module")
def phone_run(spark, sample_dir, weights_file, tmp_path_factory):
    """A night of phone uploads: the same picture stored upright and sideways, other pictures as JPEG, HEIC, WebP."""
    root = tmp_path_factory.mktemp("phone")
    uploads = root / "uploads"
    sources = [sorted((sample_dir / "Test" / label).glob("*.jpg"))[5] for label in ("Banana", "Kiwi", "Mango")]
    banana, kiwi, mango = (phone_photos.upright_picture(s, seed=i) for i, s in enumerate(sources))
    photos = {
        "IMG_0001.jpg": phone_photos.phone_bytes(banana, "JPEG", orientation=1),
        "IMG_0002.jpg": phone_photos.phone_bytes(banana, "JPEG", orientation=6),  # held in portrait
        "IMG_0003.jpg": phone_photos.phone_bytes(kiwi, "JPEG", orientation=8),
        "IMG_0004.HEIC": phone_photos.phone_bytes(mango.resize((2016, 1512)), "HEIF"),
        "IMG_0005.webp": phone_photos.phone_bytes(kiwi.resize((1600, 1200)), "WEBP"),
    }
    uploads.mkdir()
    for name, data in photos.items():
        (uploads / name).write_bytes(data)
    paths = {n: str(root / n) for n in ("clean", "rejected", "embed")}
    summary = clean.run(spark, str(uploads), paths["clean"], paths["rejected"], RUN_DATE)
    embed.run(spark, paths["clean"], paths["embed"], str(weights_file))
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in spark.read.parquet(paths["clean"]).collect()}
    features = {
        r["path"].rsplit("/", 1)[-1]: np.array(r["features"], dtype=np.float32)
        for r in spark.read.parquet(paths["embed"]).collect()
    }
    return photos, summary, rows, features


def test_every_phone_format_is_kept_with_the_originals_metadata(phone_run):
    photos, summary, rows, _ = phone_run
    assert summary["kept"] == len(photos) and summary["rejected"] == 0
    expected = {
        "IMG_0001.jpg": ("JPEG", 4032, 3024, 1),
        "IMG_0002.jpg": ("JPEG", 4032, 3024, 6),
        "IMG_0003.jpg": ("JPEG", 4032, 3024, 8),
        "IMG_0004.HEIC": ("HEIF", 2016, 1512, 1),
        "IMG_0005.webp": ("WEBP", 1600, 1200, 1),
    }
    for name, (fmt, width, height, orientation) in expected.items():
        row = rows[name]
        assert (row["format"], row["width"], row["height"], row["orientation"]) == (fmt, width, height, orientation)
        assert row["size_bytes"] == len(photos[name]) and row["image_id"] == images.content_id(photos[name])
        normalized = Image.open(io.BytesIO(row["content"]))
        assert normalized.format == "JPEG" and max(normalized.size) <= images.DEFAULT_MAX_SIDE
        assert normalized.size[0] > normalized.size[1]  # upright: the pictures are landscape


def test_the_clean_dataset_holds_a_small_fraction_of_the_photos_bytes(phone_run):
    photos, _, rows, _ = phone_run
    for name in ("IMG_0001.jpg", "IMG_0002.jpg", "IMG_0003.jpg"):
        assert len(rows[name]["content"]) <= 0.05 * len(photos[name]), name


def test_a_sideways_photo_gets_the_upright_photos_features(phone_run):
    _, _, _, features = phone_run
    assert cosine(features["IMG_0001.jpg"], features["IMG_0002.jpg"]) >= 0.99


def test_phone_photo_features_match_keras_on_the_full_size_photo(phone_run, weights_file):
    photos, _, _, features = phone_run
    names = sorted(photos)
    reference = keras_features(weights_file, [photos[n] for n in names])
    for name, expected in zip(names, reference, strict=True):
        assert cosine(features[name], expected) >= 0.98, name
