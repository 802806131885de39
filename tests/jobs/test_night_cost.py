"""A night costs what the night brings: the jobs read the night's partitions, a reload reads no old upload, files
stay few, and the drift figure answers real drift, not the noise of a new sample."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pytest
from pyspark.sql import functions as F

import clean
import embed
import pca
from fruits_common import drift, embedding
from fruits_common.covariance import Moments
from sample_images import copy_images

DAY1, DAY2 = dt.date(2026, 6, 1), dt.date(2026, 6, 2)


def _spoil_parquet(folder) -> int:
    """Overwrite every Parquet file of a partition with bytes no reader can parse: a job that reads it fails."""
    spoiled = 0
    for part in folder.glob("*.parquet"):
        part.write_bytes(b"not parquet" * 100)
        spoiled += 1
    for crc in folder.glob(".*.crc"):  # Hadoop's local checksums would flag the change before Parquet does
        crc.unlink()
    return spoiled


def test_embed_reads_only_the_nights_partitions_and_reruns_replace_them(spark, tmp_path, sample_dir, weights_file):
    paths = {n: str(tmp_path / n) for n in ("clean", "rejected", "embed")}
    copy_images(sample_dir, tmp_path / "up1", per_label=2, splits=("Test",))
    clean.run(spark, str(tmp_path / "up1"), paths["clean"], paths["rejected"], DAY1)
    assert embed.run(spark, paths["clean"], paths["embed"], str(weights_file), run_date=DAY1)["embedded"] == 16

    copy_images(sample_dir, tmp_path / "up2", per_label=1, splits=("Test",), skip=40)
    clean.run(spark, str(tmp_path / "up2"), paths["clean"], paths["rejected"], DAY2, skip_accounted=True)
    # History that embed must not read: day 1's clean rows (their image bytes) and day 1's features.
    assert _spoil_parquet(tmp_path / "clean" / f"ingest_date={DAY1}") >= 1
    day1_features = sorted((tmp_path / "embed" / f"ingest_date={DAY1}").glob("*.parquet"))
    before = {p.name: p.read_bytes() for p in day1_features}
    assert _spoil_parquet(tmp_path / "embed" / f"ingest_date={DAY1}") >= 1
    spoiled = {p.name: p.read_bytes() for p in day1_features}

    summary = embed.run(spark, paths["clean"], paths["embed"], str(weights_file), run_date=DAY2)
    assert (summary["embedded"], summary["ingest_dates"]) == (8, [DAY2.isoformat()])
    assert {p.name: p.read_bytes() for p in day1_features} == spoiled  # day 1 neither read nor rewritten
    for p in day1_features:
        p.write_bytes(before[p.name])

    night = tmp_path / "embed" / f"ingest_date={DAY2}"
    first = spark.read.parquet(str(night)).orderBy("image_id").collect()
    # A re-run (a retried step) replaces the night's partition: the same rows, no duplicate, one file.
    assert embed.run(spark, paths["clean"], paths["embed"], str(weights_file), run_date=DAY2)["embedded"] == 8
    assert spark.read.parquet(str(night)).orderBy("image_id").collect() == first
    assert len(list(night.glob("*.parquet"))) == 1
    # Nothing pending and no run date: nothing read, nothing written but the success marker.
    assert embed.run(spark, paths["clean"], paths["embed"], str(weights_file))["embedded"] == 0
    assert spark.read.parquet(paths["embed"]).count() == 24


def test_a_reload_over_an_ingested_tree_reads_no_old_upload(spark, tmp_path, sample_dir):
    tree = tmp_path / "datasets" / "fruits"
    old = copy_images(sample_dir, tree, per_label=3, splits=("Training",))
    out, rejected = str(tmp_path / "clean"), str(tmp_path / "rejected")
    first = clean.run(spark, str(tree), out, rejected, DAY1, skip_accounted=True)
    assert (first["kept"], first["rejected"], first["skipped_accounted"]) == (24, 0, 0)

    # Every old upload now holds bytes that, if read, would be rejected: a reload must skip them unread.
    for path in old:
        path.write_bytes(b"this is not an image any more")
    new = tree / "Training" / "Kiwi" / "new.jpg"
    shutil.copy(sorted((sample_dir / "Test" / "Kiwi").glob("*.jpg"))[0], new)
    again = clean.run(spark, str(tree), out, rejected, DAY2, skip_accounted=True)
    assert (again["kept"], again["rejected"], again["skipped_accounted"]) == (1, 0, 24)
    kept = spark.read.parquet(out).filter(F.col("ingest_date") == DAY2).collect()
    assert [r["path"] for r in kept] == [f"file:{new}"] and kept[0]["label"] == "Kiwi"


def test_a_reupload_is_found_in_the_history_without_reading_its_bytes(spark, tmp_path, sample_dir):
    """The look-up of the night's ids in the history reads ids (bloom-filtered), never the history's images."""
    out, rejected = str(tmp_path / "clean"), str(tmp_path / "rejected")
    day1 = copy_images(sample_dir, tmp_path / "u1", per_label=2, splits=("Test",))
    clean.run(spark, str(tmp_path / "u1"), out, rejected, DAY1)
    (tmp_path / "u2").mkdir()
    shutil.copy(day1[5], tmp_path / "u2" / "again.jpg")
    summary = clean.run(spark, str(tmp_path / "u2"), out, rejected, DAY2)
    assert (summary["kept"], summary["rejected_by_reason"]) == (0, {"duplicate": 1})
    (row,) = spark.read.parquet(rejected).filter(F.col("ingest_date") == DAY2).collect()
    assert row["detail"] == f"already ingested on {DAY1} as file:{day1[5]}"
    # The clean partitions carry the bloom filter the look-up relies on (Parquet metadata, read with pyarrow).
    import pyarrow.parquet as pq

    (part,) = (tmp_path / "clean" / f"ingest_date={DAY1}").glob("*.parquet")
    column = pq.ParquetFile(part).metadata.row_group(0).column(0)
    assert column.path_in_schema == "image_id" and "PLAIN" in str(column.encodings)
    assert "RLE_DICTIONARY" not in str(column.encodings)


@pytest.fixture(scope="module")
def real_features(full_run, spark) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample's real MobileNetV2 features, their labels and whether each row is one a fit holds out."""
    rows = (
        spark.read.parquet(full_run.paths["embed"])
        .select("label", "features", drift.held_out().alias("held"))
        .orderBy("image_id")
        .collect()
    )
    return (
        np.array([r["features"] for r in rows], dtype=np.float64),
        np.array([r["label"] for r in rows]),
        np.array([r["held"] for r in rows]),
    )


def _fit(features: np.ndarray, held: np.ndarray, variance: float = 0.95):
    """A basis fitted as pca.py fits one (on the rows not held out) and its held-out baseline."""
    moments = Moments.of(features[~held])
    model = pca.model_from_moments(moments, None, variance)
    axes = model.pc.toArray()
    return axes, moments.mean, drift.share_of_rows(features[held], axes, moments.mean)


def test_same_distribution_nights_do_not_refit_and_a_new_fruit_does(real_features):
    features, labels, held = real_features
    rng = np.random.default_rng(17)
    alarms, in_sample_alarms = 0, 0
    for _ in range(20):
        order = rng.permutation(len(features))
        history, tonight = order[:400], order[400:600]  # a few hundred rows of history, a night of 200
        axes, mean, baseline = _fit(features[history], held[history])
        measured = drift.Drift(baseline, drift.share_of_rows(features[tonight], axes, mean), threshold=0.05)
        alarms += measured.significant
        # The old rule compared the share on the fit's own rows with the night's: biased, it fired on noise.
        in_sample = drift.share_of_rows(features[history][~held[history]], axes, mean).share
        in_sample_alarms += in_sample - measured.night.share > 0.05
    assert alarms <= 1, alarms
    assert in_sample_alarms >= 15, in_sample_alarms  # the test can tell the two rules apart

    # A shift: the basis fitted without one fruit, then a night of that fruit only.
    unseen = labels == "Raspberry"
    history = np.flatnonzero(~unseen)[rng.permutation(int((~unseen).sum()))[:400]]
    axes, mean, baseline = _fit(features[history], held[history])
    shifted = drift.Drift(baseline, drift.share_of_rows(features[unseen][:200], axes, mean), threshold=0.05)
    assert shifted.significant, shifted.to_dict()
    assert shifted.z > 3 * drift.Z_CRITICAL  # not a close call
    assert 0 < shifted.standard_error < 0.05  # and the figure says how sure it is


def test_the_spark_share_equals_the_numpy_share(real_features, spark):
    features, _, held = real_features
    axes, mean, _ = _fit(features[:600], held[:600])
    frame = spark.createDataFrame([(row.astype(np.float32).tolist(),) for row in features[600:900]], "f array<float>")
    distributed = drift.share_of(frame.repartition(3), "f", axes, mean)
    local = drift.share_of_rows(features[600:900].astype(np.float32), axes, mean)
    assert distributed.rows == local.rows == 300
    assert distributed.share == pytest.approx(local.share, rel=1e-9)
    assert distributed.standard_error == pytest.approx(local.standard_error, rel=1e-6)
    assert features.shape[1] == embedding.FEATURE_SIZE


def test_pca_lists_the_features_dataset_once_and_reports_the_drift_error(full_run):
    summary = json.loads((full_run.root / "pca" / "_summary.json").read_text())
    assert summary["drift"] is None  # the first fit has nothing to compare with
    stats = json.loads((full_run.root / "pca" / "pca_version=v0001" / pca.STATS_FILE).read_text())
    assert sum(sum(by_label.values()) for by_label in stats["rows"].values()) == 4800
    assert len(stats["points"]) == pca.SCATTER_POINTS if 4800 > pca.SCATTER_POINTS else len(stats["points"]) == 4800
