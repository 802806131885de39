"""embed: the features are MobileNetV2's, computed once per image, incrementally."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from jobs.conftest import RUN_DATE
from pyspark.sql import functions as F

import clean
import embed
from fruits_common import schemas
from fruits_common.errors import JobError
from sample_images import copy_images


def _keras_features(weights_file, files):
    """The reference: Keras' own loading, resizing and preprocessing, and model.predict."""
    import keras
    from keras.applications.mobilenet_v2 import preprocess_input

    model = keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=str(weights_file)
    )
    batch = np.stack(
        [
            keras.utils.img_to_array(keras.utils.load_img(f, target_size=(224, 224), interpolation="bilinear"))
            for f in files
        ]
    )
    return model.predict(preprocess_input(batch), batch_size=16, verbose=0)


def test_features_equal_keras_on_the_same_images(full_run, spark, sample_dir, weights_file):
    files = (
        sorted((sample_dir / "Test" / "Mango").glob("*.jpg"))[:12]
        + sorted((sample_dir / "Training" / "Raspberry").glob("*.jpg"))[:12]
    )
    features = spark.read.parquet(full_run.paths["embed"])
    assert features.schema.fieldNames() == schemas.EMBED.fieldNames()
    by_path = {
        "/".join(r["path"].split("/")[-3:]): r["features"]
        for r in features.filter(F.col("label").isin("Mango", "Raspberry")).collect()
    }
    ours = np.array([by_path["/".join(f.parts[-3:])] for f in files], dtype=np.float32)
    reference = _keras_features(weights_file, files)
    assert ours.shape == reference.shape == (24, 1280)
    assert np.abs(ours - reference).max() < 1e-4
    assert reference.std() > 0.1  # real activations, not zeros


def test_every_clean_image_is_embedded_once(full_run, spark):
    features = spark.read.parquet(full_run.paths["embed"])
    assert full_run.embed["embedded"] == features.count() == 4800
    assert full_run.embed["engine"] == "onnx"  # the default
    assert features.select("image_id").distinct().count() == 4800
    assert features.filter(F.size("features") != 1280).count() == 0
    clean_ids = spark.read.parquet(full_run.paths["clean"]).select("image_id", "path", "label")
    assert features.select("image_id", "path", "label").subtract(clean_ids).count() == 0


def test_second_run_date_embeds_only_new_images(spark, tmp_path, sample_dir, weights_file):
    paths = {n: str(tmp_path / n) for n in ("clean", "rejected", "embed")}
    copy_images(sample_dir, tmp_path / "day1", per_label=2, splits=("Test",))
    clean.run(spark, str(tmp_path / "day1"), paths["clean"], paths["rejected"], RUN_DATE)
    assert embed.run(spark, paths["clean"], paths["embed"], str(weights_file), batch_size=5)["embedded"] == 16
    before = sorted((r["image_id"], list(r["features"])) for r in spark.read.parquet(paths["embed"]).collect())

    assert embed.run(spark, paths["clean"], paths["embed"], str(weights_file))["embedded"] == 0
    copy_images(sample_dir, tmp_path / "day2", per_label=1, splits=("Test",), skip=50)
    next_day = RUN_DATE + dt.timedelta(days=1)
    clean.run(spark, str(tmp_path / "day2"), paths["clean"], paths["rejected"], next_day)
    assert embed.run(spark, paths["clean"], paths["embed"], str(weights_file))["embedded"] == 8

    after = spark.read.parquet(paths["embed"])
    assert after.count() == after.select("image_id").distinct().count() == 24
    assert after.filter(F.col("ingest_date") == next_day).count() == 8
    kept = sorted(
        (r["image_id"], list(r["features"])) for r in after.filter(F.col("ingest_date") == RUN_DATE).collect()
    )
    assert kept == before  # earlier rows are neither rewritten nor duplicated


def test_missing_weights_file_is_a_clear_error(spark, full_run, tmp_path):
    with pytest.raises(JobError, match="weights file not found"):
        embed.run(spark, full_run.paths["clean"], str(tmp_path / "e"), str(tmp_path / "none.h5"))


def test_keras_and_onnx_engines_give_the_same_features(full_run, spark, tmp_path, weights_file):
    """The reference engine (Keras) and the default one (ONNX Runtime) agree on the real sample."""
    out = tmp_path / "embed_keras"
    clean_subset = spark.read.parquet(full_run.paths["clean"]).filter(F.col("label") == "Lemon").limit(40)
    clean_subset.write.partitionBy("ingest_date").parquet(str(tmp_path / "clean"))
    summary = embed.run(spark, str(tmp_path / "clean"), str(out), str(weights_file), engine="keras")
    assert summary == {**summary, "embedded": 40, "engine": "keras"}
    onnx = {
        r["image_id"]: np.array(r["features"])
        for r in spark.read.parquet(full_run.paths["embed"]).filter(F.col("label") == "Lemon").collect()
    }
    keras = {r["image_id"]: np.array(r["features"]) for r in spark.read.parquet(str(out)).collect()}
    assert len(keras) == 40 and keras.keys() <= onnx.keys()
    assert max(np.abs(keras[i] - onnx[i]).max() for i in keras) < 1e-4


def test_onnx_engine_runs_without_tensorflow(full_run, spark, sample_dir, weights_file):
    """Executors on EMR get no TensorFlow (emr_bootstrap.sh): the onnx path must not import it."""
    import subprocess
    import sys

    from fruits_common import embedding

    name = embedding.onnx_name(str(weights_file))
    # Exported once by the full run: next to the weights, or in the cache when their folder is read-only.
    onnx_file = next(p for p in (weights_file.parent / name, embedding.MODEL_CACHE / name) if p.is_file())
    files = sorted((sample_dir / "Test" / "Kiwi").glob("*.jpg"))[:8]
    script = (
        "import sys, json\n"
        "sys.modules['tensorflow'] = None; sys.modules['keras'] = None  # any import of them fails\n"
        f"sys.path.insert(0, {str(embed.__file__.rsplit('/', 1)[0])!r})\n"
        "import numpy as np\n"
        "from fruits_common import embedding, images\n"
        f"model = embedding.get_model({str(onnx_file)!r}, 'onnx', 1)\n"
        f"pixels = np.stack([images.model_input(open(p, 'rb').read()) for p in {[str(f) for f in files]!r}])\n"
        "print(json.dumps(model(pixels).tolist()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    features = np.array(__import__("json").loads(result.stdout.strip().splitlines()[-1]))
    by_path = {
        "/".join(r["path"].split("/")[-3:]): np.array(r["features"])
        for r in spark.read.parquet(full_run.paths["embed"]).filter(F.col("label") == "Kiwi").collect()
    }
    expected = np.stack([by_path["/".join(f.parts[-3:])] for f in files])
    assert features.shape == (8, 1280) and np.abs(features - expected).max() < 1e-5
