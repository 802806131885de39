"""pca: project the MobileNetV2 features onto a stable, versioned PCA basis; refit only when asked or drifted.

    spark-submit pca.py --input URI --output URI --model URI (--k N | --variance FRACTION)
        [--refit auto|always|never] [--drift-threshold FRACTION] [--keep-versions N] [--run-date YYYY-MM-DD]

Storage (``--input`` is the features dataset, partitioned by ingest_date):

    <input>/ingest_date=D/_moments.npz       count, mean and scatter of D's features, computed once when D is projected
    <model>/CURRENT                          {"version": "v0003", ...}: the basis readers use, replaced atomically
    <model>/v0003/model/, version.json       the Spark ML PCAModel; k, explained variance, rows and dates fitted on
    <output>/pca_version=v0003/ingest_date=D/   image_id, path, label, pca: the features in that basis
    <output>/_summary.json, _SUCCESS         what this run did (version, refit and why, drift), written last

A run projects the dates the current version does not hold yet (and ``--run-date``'s, so a re-run replaces it) and
appends them: its cost follows the night's rows, not the history's. It fits a new version when there is none,
when ``--refit always``, or with ``auto`` when the basis has drifted: the share of the new rows' variance that the
basis captures fell more than ``--drift-threshold`` below the share it captured at fit time (measured every night,
acted on when the new rows are at least ``DRIFT_MIN_ROWS``: below that the share is noise). A fit merges the
stored moments of every date (no feature vector is read twice), writes the new version and all its rows beside
the old ones, and only then switches ``CURRENT``: readers never see a mix of two bases. The ``--keep-versions``
most recent published versions are kept; older ones (and failed ones) are deleted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from dataclasses import dataclass

import numpy as np
from pyspark.ml.feature import PCA, PCAModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.ml.wrapper import JavaWrapper
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits_common import covariance, embedding, schemas, storage
from fruits_common.covariance import Moments
from fruits_common.errors import JobError
from fruits_common.spark import fraction, main, positive_int, run_date

log = logging.getLogger("fruits.pca")

REFIT_CHOICES = ("auto", "always", "never")
DEFAULT_DRIFT_THRESHOLD = 0.05
DEFAULT_KEEP_VERSIONS = 3
# A night's variance share is noise below this many rows: drift is measured and reported, but acted on only above.
DRIFT_MIN_ROWS = 50
CURRENT = "CURRENT"
MOMENTS_FILE = "_moments.npz"  # '_': Parquet readers skip it
VERSION_COLUMN = schemas.VERSION_COLUMN


def build_parser() -> argparse.ArgumentParser:
    """The job's command line (an interface: the DAG and the docs call it)."""
    parser = argparse.ArgumentParser(prog="pca.py", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="root of the features dataset (Parquet)")
    parser.add_argument("--output", required=True, help="root of the PCA dataset (Parquet, one folder per version)")
    parser.add_argument("--model", required=True, help="root of the PCA model versions and the CURRENT pointer")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--k", type=positive_int, help="number of components of a new fit")
    size.add_argument(
        "--variance",
        type=fraction,
        help="a new fit keeps the smallest k whose cumulative explained variance reaches this",
    )
    parser.add_argument(
        "--refit",
        choices=REFIT_CHOICES,
        default="auto",
        help="auto (default): fit when there is no model or the basis drifted; always; never",
    )
    parser.add_argument(
        "--drift-threshold",
        type=fraction,
        default=DEFAULT_DRIFT_THRESHOLD,
        help=f"auto refits when the captured variance share drops by more than this ({DEFAULT_DRIFT_THRESHOLD})",
    )
    parser.add_argument(
        "--keep-versions",
        type=positive_int,
        default=DEFAULT_KEEP_VERSIONS,
        help=f"published versions to keep (default {DEFAULT_KEEP_VERSIONS})",
    )
    parser.add_argument(
        "--run-date", type=run_date, default=None, help="an ingest_date to (re)project even if the version holds it"
    )
    return parser


def choose_k(explained_variance: np.ndarray, target: float) -> int:
    """Smallest k whose cumulative explained variance reaches ``target`` (at most all components)."""
    cumulative = np.cumsum(explained_variance)
    reached = np.nonzero(cumulative >= target - 1e-9)[0]
    return int(reached[0]) + 1 if len(reached) else len(explained_variance)


def model_from_moments(moments: Moments, k: int | None, variance: float | None) -> PCAModel:
    """A Spark ML PCA model of the data summarised by ``moments``, with ``k`` components or enough for ``variance``.

    The covariance comes from moments merged on the executors (``fruits_common.covariance``, which says why not
    ``pyspark.ml.feature.PCA.fit``) and is decomposed with NumPy; the result is an ordinary ``PCAModel``, saved and
    loaded with Spark ML, whose ``explainedVariance`` is each component's fraction of the total, as Spark's.
    """
    if moments is None or moments.count < 2:
        raise JobError(f"PCA needs at least 2 images, the features dataset has {moments.count if moments else 0}")
    axes, explained = covariance.principal_axes(moments.covariance())
    if explained.sum() == 0:
        raise JobError(f"all {moments.count} feature vectors are identical: there is no variance to keep")
    if k is None:
        k = choose_k(explained, variance)
    if k > embedding.FEATURE_SIZE:
        raise JobError(f"--k {k} is more than the {embedding.FEATURE_SIZE} features")
    # PCAModel has no public constructor in Python; Spark's own (uid, pc, explainedVariance) one is used.
    java_model = JavaWrapper._new_java_obj(
        "org.apache.spark.ml.feature.PCAModel",
        PCA().uid,
        DenseMatrix(axes.shape[0], k, axes[:, :k].ravel(order="F").tolist()),
        DenseVector(explained[:k].tolist()),
    )
    return PCAModel(java_model)._set(k=k)


def captured_share(model_axes: np.ndarray, center: np.ndarray, moments: Moments) -> float:
    """The share of the variance of the rows summarised by ``moments``, around ``center`` (the fit's mean), that
    the axes capture: trace(P^T S P) / trace(S). At fit time, on the fit's own rows, it is the cumulative explained
    variance at k."""
    offset = moments.mean - center
    scatter = moments.scatter + moments.count * np.outer(offset, offset)
    total = float(np.trace(scatter))
    if total <= 0:
        return 1.0
    return float(np.einsum("ik,ij,jk->", model_axes, scatter, model_axes) / total)


@dataclass
class Store:
    """Where the versions, the pointer, the projected rows and the per-date moments live."""

    spark: SparkSession
    input: str
    output: str
    model: str

    def current(self) -> dict | None:
        pointer = storage.join(self.model, CURRENT)
        return json.loads(storage.read_text(self.spark, pointer)) if storage.exists(self.spark, pointer) else None

    def version_info(self, version: str) -> dict:
        return json.loads(storage.read_text(self.spark, storage.join(self.model, version, "version.json")))

    def load_model(self, version: str) -> PCAModel:
        return PCAModel.load(storage.join(self.model, version, "model"))

    def versions_on_disk(self) -> list[str]:
        return [v for v in storage.list_folders(self.spark, self.model) if v.startswith("v") and v[1:].isdigit()]

    def next_version(self) -> str:
        numbers = [int(v[1:]) for v in self.versions_on_disk()]
        return f"v{max(numbers, default=0) + 1:04d}"

    def rows(self, version: str) -> str:
        return storage.join(self.output, f"{VERSION_COLUMN}={version}")

    def moments_uri(self, day: str) -> str:
        return storage.join(self.input, f"{schemas.PARTITION_COLUMN}={day}", MOMENTS_FILE)

    def features(self, days: list[str]) -> DataFrame:
        """The features of these ingest dates (partition pruning: other dates are not read)."""
        frame = self.spark.read.schema(schemas.EMBED).parquet(self.input)
        return frame.filter(F.col(schemas.PARTITION_COLUMN).isin([dt.date.fromisoformat(d) for d in days]))


def _check_features(frame: DataFrame, source: str) -> None:
    malformed = frame.filter(
        F.col("features").isNull()
        | (F.size("features") != embedding.FEATURE_SIZE)
        | F.exists("features", lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
    ).count()
    if malformed:
        raise JobError(
            f"input (features dataset) has {malformed} rows without {embedding.FEATURE_SIZE} finite features: {source}"
        )


def store_moments(store: Store, days: list[str]) -> dict[str, Moments]:
    """Compute each date's moments from its rows (distributed) and keep them next to its partition."""
    computed = {}
    for day in days:
        moments = covariance.column_moments(store.features([day]), "features", embedding.FEATURE_SIZE)
        if moments is not None:
            storage.write_bytes(store.spark, store.moments_uri(day), moments.to_bytes())
            computed[day] = moments
    return computed


def load_moments(store: Store, days: list[str], known: dict[str, Moments]) -> Moments | None:
    """The merged moments of these dates, from the stored files (or ``known``): no feature vector is read."""
    merged = None
    for day in days:
        if day in known:
            part = known[day]
        else:
            part = Moments.from_bytes(storage.read_bytes(store.spark, store.moments_uri(day)))
        merged = part if merged is None else merged.merge(part)
    return merged


def project(store: Store, model: PCAModel, version: str, days: list[str]) -> int:
    """Write these dates' rows in ``version``'s basis, replacing just those dates' partitions; returns the rows."""
    features = store.features(days)
    fitted = model.setInputCol("vector").setOutputCol("projected")
    projected = fitted.transform(features.withColumn("vector", array_to_vector("features"))).select(
        "image_id",
        "path",
        "label",
        vector_to_array("projected", dtype="float32").alias("pca"),
        schemas.PARTITION_COLUMN,
    )
    # Dynamic partition overwrite: only the dates written here are replaced; the version's other dates stay as
    # they are, byte for byte.
    previous = store.spark.conf.get("spark.sql.sources.partitionOverwriteMode", None)
    store.spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    try:
        (
            projected.write.mode("overwrite")
            .option("compression", "zstd")
            .partitionBy(schemas.PARTITION_COLUMN)
            .parquet(store.rows(version))
        )
    finally:
        store.spark.conf.set("spark.sql.sources.partitionOverwriteMode", previous or "static")
    return (
        store.spark.read.parquet(store.rows(version))
        .filter(F.col(schemas.PARTITION_COLUMN).isin([dt.date.fromisoformat(d) for d in days]))
        .count()
    )


def publish(store: Store, version: str, history: list[str], keep: int) -> list[str]:
    """Point CURRENT at ``version`` (atomically), then delete versions beyond the ``keep`` latest published ones
    and any version that was never published (a refit that failed); returns the deleted versions."""
    published = [*[v for v in history if v != version], version]
    storage.replace_text(
        store.spark,
        storage.join(store.model, CURRENT),
        json.dumps({"version": version, "published": published, "updated": _now()}, indent=2),
    )
    kept = set(published[-keep:])
    deleted = []
    for old in store.versions_on_disk():
        if old not in kept:
            storage.delete(store.spark, storage.join(store.model, old))
            storage.delete(store.spark, store.rows(old))
            deleted.append(old)
    return deleted


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def fit_version(store: Store, all_days: list[str], known: dict[str, Moments], k: int | None, variance: float | None):
    """Fit a new version from the merged moments of every date and save it (not yet published)."""
    moments = load_moments(store, all_days, known)
    model = model_from_moments(moments, k, variance)
    version = store.next_version()
    model.write().overwrite().save(storage.join(store.model, version, "model"))
    explained = [float(v) for v in model.explainedVariance.toArray()]
    info = {
        "version": version,
        "fitted_at": _now(),
        "k": len(explained),
        "variance_target": variance,
        "explained_variance": explained,
        "cumulative_explained_variance": [float(v) for v in np.cumsum(explained)],
        "rows": moments.count,
        "ingest_dates": all_days,
        # The drift baseline: the share of the fit rows' variance the basis captures (cumulative at k).
        "captured_share_at_fit": float(np.sum(explained)),
        "mean": moments.mean.tolist(),
    }
    storage.write_text(store.spark, storage.join(store.model, version, "version.json"), json.dumps(info))
    return version, model, info


def run(
    spark: SparkSession,
    input: str,
    output: str,
    model: str,
    k: int | None = None,
    variance: float | None = None,
    refit: str = "auto",
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
    keep_versions: int = DEFAULT_KEEP_VERSIONS,
    run_date: dt.date | None = None,
) -> dict:
    """Project the new embeddings onto the current basis, fitting a new version first when needed."""
    if (k is None) == (variance is None):
        raise JobError("give exactly one of --k and --variance")
    if refit not in REFIT_CHOICES:
        raise JobError(f"--refit must be one of {', '.join(REFIT_CHOICES)}")
    if k is not None and k > embedding.FEATURE_SIZE:
        raise JobError(f"--k {k} is more than the {embedding.FEATURE_SIZE} features")
    if not storage.has_parquet(spark, input):
        raise JobError(f"input (features dataset) has no data: {input}")
    store = Store(spark, input, output, model)
    all_days = storage.list_partitions(spark, input, schemas.PARTITION_COLUMN)
    pointer = store.current()
    version = pointer["version"] if pointer else None
    held = set(storage.list_partitions(spark, store.rows(version), schemas.PARTITION_COLUMN)) if version else set()
    new_days = [d for d in all_days if d not in held or (run_date and d == run_date.isoformat())]
    # Moments are computed once per date, when it is projected (and for dates from before they were kept).
    missing = [d for d in all_days if d in new_days or not storage.exists(spark, store.moments_uri(d))]
    _check_features(store.features(missing), input)
    known = store_moments(store, missing)

    drift = None
    if version:
        info = store.version_info(version)
        current_model = store.load_model(version)
        new_moments = load_moments(store, [d for d in new_days if d in known], known)
        if new_moments is not None:
            axes = current_model.pc.toArray()
            now = captured_share(axes, np.asarray(info["mean"]), new_moments)
            drift = {
                "rows": new_moments.count,
                "captured_share": round(now, 6),
                "captured_share_at_fit": round(info["captured_share_at_fit"], 6),
                "drift": round(info["captured_share_at_fit"] - now, 6),
                "threshold": drift_threshold,
                "enough_rows": new_moments.count >= DRIFT_MIN_ROWS,
            }
            log.info("pca drift on %d new rows: %s", new_moments.count, drift)

    reason = None
    if version is None:
        if refit == "never":
            raise JobError(f"--refit never: there is no PCA model at {model} yet; run with auto or always once")
        reason = "no_model"
    elif refit == "always":
        reason = "forced"
    elif refit == "auto" and drift is not None and drift["enough_rows"] and drift["drift"] > drift_threshold:
        reason = "drift"

    if reason:
        history = pointer["published"] if pointer else []
        version, current_model, info = fit_version(store, all_days, known, k, variance)
        # Every row into the new version, beside the previous one; CURRENT switches only once all are written.
        rows = project(store, current_model, version, all_days)
        deleted = publish(store, version, history, keep_versions)
    else:
        rows = project(store, current_model, version, new_days) if new_days else 0
        deleted = []

    summary = {
        "version": version,
        "refitted": bool(reason),
        "refit_reason": reason,
        "refit_mode": refit,
        "drift": drift,
        "rows_projected": rows,
        "dates_projected": all_days if reason else new_days,
        "k": info["k"],
        "model": storage.join(model, version),
        "fitted_at": info["fitted_at"],
        "fitted_rows": info["rows"],
        "variance_target": info["variance_target"],
        "explained_variance": info["explained_variance"],
        "cumulative_explained_variance": info["cumulative_explained_variance"],
        "deleted_versions": deleted,
    }
    storage.write_text(spark, storage.join(output, schemas.PCA_SUMMARY_FILE), json.dumps(summary, indent=2))
    storage.write_bytes(spark, storage.join(output, "_SUCCESS"), b"")
    log.info(
        "pca: version %s (%s), %d rows projected, k=%d",
        version,
        f"refitted: {reason}" if reason else "kept",
        rows,
        summary["k"],
    )
    return summary


if __name__ == "__main__":
    sys.exit(main("fruits-pca", build_parser(), run))
