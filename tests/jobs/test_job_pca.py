"""pca: the variance target, a reusable model, and features that still separate the fruits."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pyspark.ml.feature import PCAModel
from pyspark.sql import functions as F

import pca
from fruits_common.errors import JobError


def _projections(spark, path) -> dict[str, np.ndarray]:
    return {r["image_id"]: np.array(r["pca"]) for r in spark.read.parquet(path).collect()}


def test_variance_target_picks_the_smallest_k(full_run, spark):
    summary = json.loads((full_run.root / "pca" / "_summary.json").read_text())
    cumulative = summary["cumulative_explained_variance"]
    k = summary["k"]
    assert summary == {**summary, "rows": 4800, "model_mode": "fitted", "variance_target": 0.9}
    assert len(cumulative) == len(summary["explained_variance"]) == k
    assert cumulative[-1] >= 0.9 > cumulative[-2]  # reached at k, not before
    assert 2 <= k < 1280
    output = spark.read.parquet(full_run.paths["pca"])
    assert output.schema.fieldNames() == ["image_id", "path", "label", "pca", "ingest_date"]
    assert output.count() == 4800 and output.filter(F.size("pca") != k).count() == 0
    assert PCAModel.load(full_run.paths["model"]).pc.numCols == k


def test_choose_k():
    assert pca.choose_k(np.array([0.5, 0.3, 0.1, 0.1]), 0.8) == 2
    assert pca.choose_k(np.array([0.5, 0.3, 0.1, 0.1]), 0.81) == 3
    assert pca.choose_k(np.array([0.5, 0.3, 0.1, 0.1]), 1.0) == 4


def test_reused_model_projects_identically(full_run, spark, tmp_path):
    fitted = _projections(spark, full_run.paths["pca"])
    # New images arrive later: only a subset of the features, projected with the saved model.
    subset = tmp_path / "embed"
    shutil.copytree(full_run.root / "embed", subset)
    model_copy = tmp_path / "model"
    shutil.copytree(full_run.root / "model", model_copy)
    summary = pca.run(spark, str(subset), str(tmp_path / "pca"), str(model_copy), k=3, reuse_model=True)
    assert summary["model_mode"] == "reused" and summary["k"] == full_run.pca["k"]  # --k ignored on reuse
    reused = _projections(spark, str(tmp_path / "pca"))
    assert reused.keys() == fitted.keys()
    assert max(np.abs(reused[i] - fitted[i]).max() for i in fitted) < 1e-5


def test_fixed_k_and_missing_model(full_run, spark, tmp_path):
    summary = pca.run(spark, full_run.paths["embed"], str(tmp_path / "pca"), str(tmp_path / "m"), k=5)
    assert summary["k"] == 5 and len(summary["explained_variance"]) == 5
    with pytest.raises(JobError, match="no saved PCA model"):
        pca.run(spark, full_run.paths["embed"], str(tmp_path / "p2"), str(tmp_path / "none"), k=5,
                reuse_model=True)


def test_training_features_predict_test_labels(full_run, spark):
    """Integrity on real data: nearest centroid on the PCA features, trained on Training, scored on Test."""
    rows = spark.read.parquet(full_run.paths["pca"]).select("path", "label", "pca").collect()
    train = [(np.array(r["pca"]), r["label"]) for r in rows if "/Training/" in r["path"]]
    test = [(np.array(r["pca"]), r["label"]) for r in rows if "/Test/" in r["path"]]
    assert len(train) == 3593 and len(test) == 1207
    labels = sorted({label for _, label in train})
    centroids = np.stack([np.mean([x for x, y in train if y == label], axis=0) for label in labels])
    features = np.stack([x for x, _ in test])
    distances = ((features[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    predicted = [labels[i] for i in distances.argmin(axis=1)]
    accuracy = np.mean([p == y for p, (_, y) in zip(predicted, test)])
    assert accuracy >= 0.95, accuracy
