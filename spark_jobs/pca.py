"""pca: reduce the MobileNetV2 features with Spark ML PCA; keep the model so new images share the basis.

    spark-submit --py-files fruits_common.zip pca.py \
        --input URI --output URI --model URI (--k N | --variance FRACTION) [--reuse-model]

Fits on all embeddings (distributed: only the 1280x1280 covariance and the model reach the driver), or
with ``--reuse-model`` projects with the model saved at ``--model``. ``--variance 0.95`` picks the smallest
k whose cumulative explained variance reaches 95%. Writes ``image_id, path, label, pca`` (Parquet,
partitioned by ingest_date) to ``<output>``, replacing it, and ``<output>/_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np
from pyspark import StorageLevel
from pyspark.ml.feature import PCA, PCAModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.ml.wrapper import JavaWrapper
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits_common import covariance, embedding, schemas, storage
from fruits_common.errors import JobError
from fruits_common.spark import fraction, main, positive_int

log = logging.getLogger("fruits.pca")


def build_parser() -> argparse.ArgumentParser:
    """The job's command line (an interface: the DAG and the docs call it)."""
    parser = argparse.ArgumentParser(prog="pca.py", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="root of the features dataset (Parquet)")
    parser.add_argument("--output", required=True, help="root of the PCA dataset (Parquet), replaced")
    parser.add_argument("--model", required=True, help="where the Spark ML PCA model is saved / read")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--k", type=positive_int, help="number of components")
    size.add_argument(
        "--variance", type=fraction, help="smallest k whose cumulative explained variance reaches this fraction"
    )
    parser.add_argument(
        "--reuse-model", action="store_true", help="project with the saved model instead of fitting a new one"
    )
    return parser


def choose_k(explained_variance: np.ndarray, target: float) -> int:
    """Smallest k whose cumulative explained variance reaches ``target`` (at most all components)."""
    cumulative = np.cumsum(explained_variance)
    reached = np.nonzero(cumulative >= target - 1e-9)[0]
    return int(reached[0]) + 1 if len(reached) else len(explained_variance)


def fit(features: DataFrame, rows: int, k: int | None, variance: float | None) -> PCAModel:
    """A Spark ML PCA model fitted on the ``features`` column, with ``k`` components or enough for ``variance``.

    The covariance is aggregated on the executors and decomposed with NumPy (see ``fruits_common.covariance``
    for why not ``pyspark.ml.feature.PCA.fit``); the result is an ordinary ``PCAModel``, saved and loaded with
    Spark ML, whose ``explainedVariance`` is each component's fraction of the total variance, as Spark's.
    """
    if rows < 2:
        raise JobError(f"PCA needs at least 2 images, the features dataset has {rows}")
    moments = covariance.column_moments(features, "features", embedding.FEATURE_SIZE)
    axes, explained = covariance.principal_axes(moments.covariance())
    if explained.sum() == 0:
        raise JobError(f"all {rows} feature vectors are identical: there is no variance to keep")
    if k is None:
        k = choose_k(explained, variance)
    # PCAModel has no public constructor in Python; Spark's own (uid, pc, explainedVariance) one is used.
    java_model = JavaWrapper._new_java_obj(
        "org.apache.spark.ml.feature.PCAModel",
        PCA().uid,
        DenseMatrix(axes.shape[0], k, axes[:, :k].ravel(order="F").tolist()),
        DenseVector(explained[:k].tolist()),
    )
    model = PCAModel(java_model)
    return model._set(k=k)


def run(
    spark: SparkSession,
    input: str,
    output: str,
    model: str,
    k: int | None = None,
    variance: float | None = None,
    reuse_model: bool = False,
) -> dict:
    """Fit (or load) the PCA model and project every embedding with it."""
    if (k is None) == (variance is None):
        raise JobError("give exactly one of --k and --variance")
    if not storage.has_parquet(spark, input):
        raise JobError(f"input (features dataset) has no data: {input}")
    features = (
        spark.read.schema(schemas.EMBED).parquet(input).persist(StorageLevel.MEMORY_AND_DISK)
    )  # read by the checks, the fit and the projection
    rows = features.count()
    if rows == 0:
        raise JobError(f"input (features dataset) has no rows: {input}")
    malformed = features.filter(
        F.col("features").isNull()
        | (F.size("features") != embedding.FEATURE_SIZE)
        | F.exists("features", lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
    ).count()
    if malformed:
        raise JobError(
            f"input (features dataset) has {malformed} rows without {embedding.FEATURE_SIZE} finite features: {input}"
        )

    if reuse_model:
        if not storage.exists(spark, model):
            raise JobError(f"--reuse-model: no saved PCA model at {model}; run once without it to fit one")
        fitted = PCAModel.load(model)
        log.info("reusing the saved model (k=%d): --k/--variance are ignored", fitted.pc.numCols)
        if fitted.pc.numRows != embedding.FEATURE_SIZE:
            raise JobError(f"saved model expects {fitted.pc.numRows} features, data has {embedding.FEATURE_SIZE}")
        mode = "reused"
    else:
        if k is not None and k > embedding.FEATURE_SIZE:
            raise JobError(f"--k {k} is more than the {embedding.FEATURE_SIZE} features")
        fitted = fit(features, rows, k, variance)
        fitted.write().overwrite().save(model)
        mode = "fitted"

    fitted = fitted.setInputCol("vector").setOutputCol("projected")
    projected = fitted.transform(features.withColumn("vector", array_to_vector("features"))).select(
        "image_id",
        "path",
        "label",
        vector_to_array("projected", dtype="float32").alias("pca"),
        schemas.PARTITION_COLUMN,
    )
    (
        projected.write.mode("overwrite")
        .option("compression", "zstd")
        .partitionBy(schemas.PARTITION_COLUMN)
        .parquet(output)
    )
    features.unpersist()

    ratios = [float(v) for v in fitted.explainedVariance.toArray()]
    summary = {
        "rows": rows,
        "k": len(ratios),
        "model": model,
        "model_mode": mode,
        "variance_target": variance,
        "explained_variance": ratios,
        "cumulative_explained_variance": [float(v) for v in np.cumsum(ratios)],
    }
    storage.write_text(spark, storage.join(output, schemas.PCA_SUMMARY_FILE), json.dumps(summary, indent=2))
    log.info(
        "pca: %d rows, k=%d (%s), cumulative variance %.4f",
        rows,
        summary["k"],
        mode,
        summary["cumulative_explained_variance"][-1],
    )
    return summary


if __name__ == "__main__":
    sys.exit(main("fruits-pca", build_parser(), run))
