"""pca on the real sample: the variance target, the fit equals NumPy's PCA (from rows or from stored moments), and
features that still separate the fruits. Versions, nights and refits: test_job_pca_versions.py."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from pyspark.ml.feature import PCAModel
from pyspark.sql import functions as F

import pca
from fruits_common import drift
from fruits_common.covariance import Moments, column_moments
from fruits_common.errors import JobError


def _projections(spark, path, version: str = "v0001") -> dict[str, np.ndarray]:
    rows = spark.read.parquet(f"{path}/pca_version={version}").collect()
    return {r["image_id"]: np.array(r["pca"]) for r in rows}


def _model(path, version: str = "v0001") -> PCAModel:
    return PCAModel.load(f"{path}/{version}/model")


def _fit_features(spark, path) -> tuple[list[str], np.ndarray]:
    """The ids and features a fit uses: every row but the held-out ones (fruits_common.drift)."""
    rows = spark.read.parquet(path).filter(~drift.held_out()).select("image_id", "features").collect()
    return [r["image_id"] for r in rows], np.array([r["features"] for r in rows], dtype=np.float64)


def test_variance_target_picks_the_smallest_k(full_run, spark):
    summary = json.loads((full_run.root / "pca" / "_summary.json").read_text())
    cumulative = summary["cumulative_explained_variance"]
    k = summary["k"]
    held = spark.read.parquet(full_run.paths["embed"]).filter(drift.held_out()).count()
    assert 0.15 < held / 4800 < 0.25  # one in five, by id hash
    assert summary == {
        **summary,
        "version": "v0001",
        "refitted": True,
        "refit_reason": "no_model",
        "rows_projected": 4800,  # every row is projected, held out or not
        "fitted_rows": 4800 - held,
        "variance_target": 0.9,
    }
    info = json.loads((full_run.root / "model" / "v0001" / "version.json").read_text())
    assert info["held_out_share"]["rows"] == held
    # Out of sample, the basis captures less than on its own rows: the bias the held-out baseline removes.
    assert info["held_out_share"]["share"] < info["captured_share_at_fit"]
    assert 0 < info["held_out_share"]["standard_error"] < 0.01
    assert len(cumulative) == len(summary["explained_variance"]) == k
    assert cumulative[-1] >= 0.9 > cumulative[-2]  # reached at k, not before
    assert 2 <= k < 1280
    output = spark.read.parquet(full_run.paths["pca"])
    assert output.schema.fieldNames() == ["image_id", "path", "label", "pca", "pca_version", "ingest_date"]
    assert output.count() == 4800 and output.filter(F.size("pca") != k).count() == 0
    assert {r["pca_version"] for r in output.select("pca_version").distinct().collect()} == {"v0001"}
    assert _model(full_run.paths["model"]).pc.numCols == k
    assert json.loads((full_run.root / "model" / "CURRENT").read_text())["version"] == "v0001"


def test_fit_equals_numpy_pca_of_the_same_features(full_run, spark):
    """The saved model is the PCA NumPy computes from the embeddings, and the output is their projection on it."""
    ids, features = _fit_features(spark, full_run.paths["embed"])
    variances = np.linalg.eigvalsh(np.cov(features, rowvar=False))[::-1]
    ratios = variances / variances.sum()
    model = _model(full_run.paths["model"])
    k = model.pc.numCols
    assert k == np.searchsorted(np.cumsum(ratios), 0.9) + 1
    np.testing.assert_allclose(model.explainedVariance.toArray(), ratios[:k], rtol=1e-6, atol=1e-12)
    axes = model.pc.toArray()
    np.testing.assert_allclose(axes.T @ axes, np.eye(k), atol=1e-9)
    projected = _projections(spark, full_run.paths["pca"])
    expected = dict(zip(ids, features @ axes, strict=True))
    assert max(np.abs(projected[i] - expected[i]).max() for i in expected) < 1e-3  # float32 output


def test_refit_is_identical(full_run, spark, tmp_path):
    refit = pca.run(spark, full_run.paths["embed"], str(tmp_path / "pca"), str(tmp_path / "model"), variance=0.9)
    assert refit["explained_variance"] == full_run.pca["explained_variance"]
    assert _projections(spark, str(tmp_path / "pca")).keys() == _projections(spark, full_run.paths["pca"]).keys()
    np.testing.assert_array_equal(
        _model(str(tmp_path / "model")).pc.toArray(), _model(full_run.paths["model"]).pc.toArray()
    )


def test_the_model_from_stored_moments_equals_the_model_from_rows(full_run, spark):
    """A refit merges the moments stored next to each date's partition; it gives the model the rows give."""
    stored = sorted((full_run.root / "embed").glob(f"ingest_date=*/{pca.MOMENTS_FILE}"))
    assert stored, "no moments stored next to the features"
    moments = [Moments.from_bytes(path.read_bytes()) for path in stored]
    merged = moments[0]
    for part in moments[1:]:
        merged = merged.merge(part)
    from_moments = pca.model_from_moments(merged, None, 0.9)
    _, features = _fit_features(spark, full_run.paths["embed"])
    from_rows = pca.model_from_moments(Moments.of(features), None, 0.9)
    assert merged.count == len(features) == full_run.pca["fitted_rows"]
    np.testing.assert_allclose(
        from_moments.explainedVariance.toArray(), from_rows.explainedVariance.toArray(), rtol=1e-6, atol=1e-12
    )
    np.testing.assert_allclose(
        np.abs(from_moments.pc.toArray().T @ from_rows.pc.toArray()).diagonal()[:20], 1, atol=1e-6
    )


def test_merged_moments_equal_numpy(spark):
    rng = np.random.default_rng(7)
    data = rng.normal(5.0, 2.0, size=(301, 6)) @ rng.normal(size=(6, 6))
    parts = [Moments.of(chunk) for chunk in np.array_split(data, [1, 40, 200])]
    merged = parts[0].merge(parts[1]).merge(parts[2].merge(parts[3]))
    assert merged.count == 301
    np.testing.assert_allclose(merged.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged.covariance(), np.cov(data, rowvar=False), rtol=1e-10, atol=1e-10)
    frame = spark.createDataFrame([(row.tolist(),) for row in data], "v array<double>").repartition(5)
    distributed = column_moments(frame, "v", 6)
    np.testing.assert_allclose(distributed.covariance(), np.cov(data, rowvar=False), rtol=1e-10, atol=1e-10)
    assert column_moments(frame.limit(0), "v", 6) is None


def test_choose_k():
    assert pca.choose_k(np.array([0.5, 0.3, 0.1, 0.1]), 0.8) == 2
    assert pca.choose_k(np.array([0.5, 0.3, 0.1, 0.1]), 0.81) == 3
    assert pca.choose_k(np.array([0.5, 0.3, 0.1, 0.1]), 1.0) == 4


def test_fixed_k_and_missing_model(full_run, spark, tmp_path):
    summary = pca.run(spark, full_run.paths["embed"], str(tmp_path / "pca"), str(tmp_path / "m"), k=5)
    assert summary["k"] == 5 and summary["explained_variance"] == full_run.pca["explained_variance"][:5]
    with pytest.raises(JobError, match="--refit never: there is no PCA model"):
        pca.run(spark, full_run.paths["embed"], str(tmp_path / "p2"), str(tmp_path / "none"), k=5, refit="never")


def test_training_features_predict_test_labels(full_run, spark):
    """Integrity on real data: nearest centroid on the PCA features, trained on Training, scored on Test."""
    rows = spark.read.parquet(f"{full_run.paths['pca']}/pca_version=v0001").select("path", "label", "pca").collect()
    train = [(np.array(r["pca"]), r["label"]) for r in rows if "/Training/" in r["path"]]
    test = [(np.array(r["pca"]), r["label"]) for r in rows if "/Test/" in r["path"]]
    assert len(train) == 3593 and len(test) == 1207
    labels = sorted({label for _, label in train})
    centroids = np.stack([np.mean([x for x, y in train if y == label], axis=0) for label in labels])
    features = np.stack([x for x, _ in test])
    distances = ((features[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    predicted = [labels[i] for i in distances.argmin(axis=1)]
    accuracy = np.mean([p == y for p, (_, y) in zip(predicted, test, strict=False)])
    assert accuracy >= 0.95, accuracy


def _write_features(spark, path, vectors: list[list[float]]) -> str:
    rows = [(f"id{i}", f"/x/{i}.jpg", None, v, dt.date(2026, 1, 1)) for i, v in enumerate(vectors)]
    spark.createDataFrame(
        rows, "image_id string, path string, label string, features array<float>, ingest_date date"
    ).write.partitionBy("ingest_date").parquet(str(path))
    return str(path)


def test_bad_features_are_a_clear_error(spark, tmp_path):
    short = _write_features(spark, tmp_path / "short", [[0.5] * 1280, [1.0] * 12, [float("nan")] * 1280])
    with pytest.raises(JobError, match="2 rows without 1280 finite features"):
        pca.run(spark, short, str(tmp_path / "p"), str(tmp_path / "m"), k=1)
    same = _write_features(spark, tmp_path / "same", [[0.25] * 1280] * 3)
    with pytest.raises(JobError, match="identical: there is no variance"):
        pca.run(spark, same, str(tmp_path / "p"), str(tmp_path / "m"), variance=0.9)
    one = _write_features(spark, tmp_path / "one", [[0.25] * 1280])
    with pytest.raises(JobError, match="at least 2 images"):
        pca.run(spark, one, str(tmp_path / "p"), str(tmp_path / "m"), k=1)
    assert not (tmp_path / "m").exists()
