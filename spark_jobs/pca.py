"""pca: project the MobileNetV2 features onto a stable, versioned PCA basis; refit only when asked or drifted.

    spark-submit pca.py --input URI --output URI --model URI (--k N | --variance FRACTION)
        [--refit auto|always|never] [--drift-threshold FRACTION] [--keep-versions N] [--run-date YYYY-MM-DD]

Storage (``--input`` is the features dataset, partitioned by ingest_date):

    <input>/ingest_date=D/_fit_moments.npz   count, mean, scatter of D's features but the held-out ones (computed once)
    <model>/CURRENT                          {"version": "v0003", ...}: the basis readers use, replaced atomically
    <model>/v0003/model/, version.json       the Spark ML PCAModel; k, explained variance, dates, held-out share
    <output>/pca_version=v0003/ingest_date=D/   image_id, path, label, pca: the features in that basis
    <output>/pca_version=v0003/_stats.json   rows per date and label, scatter sample (for the report)
    <output>/_summary.json, _SUCCESS         what this run did (version, refit and why, drift), written last

A run projects the dates the current version does not hold yet (and ``--run-date``'s, so a re-run replaces it) and
appends them: its cost follows the night's rows, not the history's (one listing of the features dataset finds the
dates and their stored moments). It fits a new version when there is none, when ``--refit always``, or with
``auto`` when the basis has drifted: the share of the new rows' variance that the basis captures fell below the
share it captures on rows held out of its fit, by more than ``--drift-threshold`` and by at least three standard
errors (``fruits_common.drift``; acted on when the new rows are at least ``DRIFT_MIN_ROWS``). A fit merges the
stored moments of every date's non-held-out rows (no feature vector is read twice), writes the new version and all
its rows beside the old ones, and only then switches ``CURRENT``: readers never see a mix of two bases. The
``--keep-versions`` most recent published versions are kept; older ones (and failed ones) are deleted. Beside each
version's rows, ``_stats.json`` keeps its rows per date and label and a scatter sample, for the report.
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

from fruits_common import covariance, drift, embedding, schemas, storage
from fruits_common.covariance import Moments
from fruits_common.errors import JobError
from fruits_common.spark import fraction, main, positive_int, run_date, session_conf

log = logging.getLogger("fruits.pca")

REFIT_CHOICES = ("auto", "always", "never")
DEFAULT_DRIFT_THRESHOLD = 0.05
DEFAULT_KEEP_VERSIONS = 3
# A night's variance share is noise below this many rows: drift is measured and reported, but acted on only above.
DRIFT_MIN_ROWS = 50
CURRENT = "CURRENT"
# Moments of a date's rows that fits use (all but the held-out ones, fruits_common.drift); '_': Parquet readers
# skip it. (Files named _moments.npz, of all rows, are from before the hold-out and are ignored.)
MOMENTS_FILE = "_fit_moments.npz"
STATS_FILE = "_stats.json"  # per version: rows per label and date, and the report's scatter sample
SCATTER_POINTS = 5000  # the report's scatter: the points with the smallest id hashes, at most this many
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
        """The features of these ingest dates: only their folders are listed and read."""
        if not days:
            return self.spark.createDataFrame([], schemas.EMBED)
        folders = [storage.join(self.input, f"{schemas.PARTITION_COLUMN}={d}") for d in days]
        return self.spark.read.schema(schemas.EMBED).option("basePath", self.input).parquet(*folders)

    def stats_uri(self, version: str) -> str:
        return storage.join(self.rows(version), STATS_FILE)


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
    """Compute each date's fit moments (its rows but the held-out ones) and keep them next to its partition."""
    computed = {}
    for day in days:
        fit_rows = store.features([day]).filter(~drift.held_out())
        moments = covariance.column_moments(fit_rows, "features", embedding.FEATURE_SIZE)
        if moments is not None:
            storage.write_bytes(store.spark, store.moments_uri(day), moments.to_bytes())
            computed[day] = moments
    return computed


def load_moments(store: Store, days: list[str], known: dict[str, Moments], stored: set[str]) -> Moments | None:
    """The merged fit moments of these dates, from the stored files (or ``known``): no feature vector is read.
    A date without a file (``stored``) had no row to fit on (all held out)."""
    merged = None
    for day in days:
        if day in known:
            part = known[day]
        elif day in stored:
            part = Moments.from_bytes(storage.read_bytes(store.spark, store.moments_uri(day)))
        else:
            continue
        merged = part if merged is None else merged.merge(part)
    return merged


def project(store: Store, model: PCAModel, version: str, days: list[str], fresh: bool) -> int:
    """Write these dates' rows in ``version``'s basis, replacing just those dates' partitions, and update the
    version's stats file (from scratch when ``fresh``); returns the rows written."""
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
    # they are, byte for byte. One file per date (a night is small; a refit's dates are each a night).
    with session_conf(store.spark, {"spark.sql.sources.partitionOverwriteMode": "dynamic"}):
        (
            projected.repartition(schemas.PARTITION_COLUMN)
            .write.mode("overwrite")
            .option("compression", "zstd")
            .partitionBy(schemas.PARTITION_COLUMN)
            .parquet(store.rows(version))
        )
    folders = [storage.join(store.rows(version), f"{schemas.PARTITION_COLUMN}={d}") for d in days]
    written = store.spark.read.option("basePath", store.rows(version)).parquet(*folders)
    return update_stats(store, version, written, days, fresh)


def update_stats(store: Store, version: str, written: DataFrame, days: list[str], fresh: bool) -> int:
    """Keep beside the version's rows what the report shows of them: rows per date and label, and a deterministic
    sample of points (the smallest id hashes). A night adds its dates' figures to the stored ones, so the report
    never reads the version's rows; returns the rows of ``days``."""
    stats = {"rows": {}, "points": []}
    uri = store.stats_uri(version)
    if not fresh and storage.exists(store.spark, uri):
        stats = json.loads(storage.read_text(store.spark, uri))
    counts = written.groupBy(schemas.PARTITION_COLUMN, "label").count().collect()
    for day in days:
        stats["rows"][day] = {}
    for row in counts:
        stats["rows"][row[schemas.PARTITION_COLUMN].isoformat()][row["label"] or ""] = int(row["count"])
    sample = (
        written.select(
            F.xxhash64("image_id").alias("hash"),
            F.col(schemas.PARTITION_COLUMN).cast("string").alias("day"),
            "label",
            F.col("pca")[0].alias("x"),
            F.when(F.size("pca") > 1, F.col("pca")[1]).otherwise(F.lit(0.0)).alias("y"),
        )
        .orderBy("hash")
        .limit(SCATTER_POINTS)
        .collect()
    )
    replaced = set(days)
    points = [p for p in stats["points"] if p[1] not in replaced]
    points += [[r["hash"], r["day"], r["label"], float(r["x"]), float(r["y"])] for r in sample]
    stats["points"] = sorted(points)[:SCATTER_POINTS]
    storage.write_text(store.spark, uri, json.dumps(stats))
    return sum(n for day in days for n in stats["rows"][day].values())


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


def fit_version(
    store: Store,
    all_days: list[str],
    known: dict[str, Moments],
    stored: set[str],
    k: int | None,
    variance: float | None,
):
    """Fit a new version from the merged fit moments of every date and save it (not yet published), with its
    drift baseline: the share its axes capture on the held-out rows."""
    moments = load_moments(store, all_days, known, stored)
    model = model_from_moments(moments, k, variance)
    version = store.next_version()
    model.write().overwrite().save(storage.join(store.model, version, "model"))
    explained = [float(v) for v in model.explainedVariance.toArray()]
    held = store.features(all_days).filter(drift.held_out())
    baseline = drift.share_of(held, "features", model.pc.toArray(), moments.mean)
    info = {
        "version": version,
        "fitted_at": _now(),
        "k": len(explained),
        "variance_target": variance,
        "explained_variance": explained,
        "cumulative_explained_variance": [float(v) for v in np.cumsum(explained)],
        "rows": moments.count,
        "ingest_dates": all_days,
        # In sample (biased upward): for reference. The drift baseline is the held-out share below.
        "captured_share_at_fit": float(np.sum(explained)),
        "held_out_share": drift.share_to_dict(baseline),
        "mean": moments.mean.tolist(),
    }
    storage.write_text(store.spark, storage.join(store.model, version, "version.json"), json.dumps(info))
    return version, model, info


def _baseline(info: dict) -> drift.Share:
    """A version's drift baseline; versions fitted before the hold-out only have the in-sample share (no error)."""
    if "held_out_share" in info:
        return drift.Share(**info["held_out_share"])
    return drift.Share(int(info["rows"]), float(info["captured_share_at_fit"]), 0.0)


def night_drift(store: Store, info: dict, model: PCAModel, new_days: list[str], threshold: float):
    """The drift of the dates being added, measured on rows the version's fit never used (None: no rows)."""
    fitted_on = set(info.get("ingest_dates", []))
    unseen = [d for d in new_days if d not in fitted_on]
    refitted_days = [d for d in new_days if d in fitted_on]  # e.g. a re-run of the night a refit happened on
    frames = []
    if unseen:
        frames.append(store.features(unseen))
    if refitted_days:
        frames.append(store.features(refitted_days).filter(drift.held_out()))
    if not frames:
        return None
    rows = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    night = drift.share_of(rows, "features", model.pc.toArray(), np.asarray(info["mean"]))
    if night.rows == 0:
        return None
    measured = drift.Drift(_baseline(info), night, threshold)
    return {
        **measured.to_dict(),
        "baseline": "held_out" if "held_out_share" in info else "in_sample",
        "enough_rows": night.rows >= DRIFT_MIN_ROWS,
    }


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
    store = Store(spark, input, output, model)
    # One listing of the features dataset: its dates and which of them have their fit moments stored.
    listed = storage.partition_files(storage.qualify(spark, input), schemas.PARTITION_COLUMN)
    all_days = [d for d, names in listed.items() if any(n.endswith(".parquet") for n in names)]
    if not all_days:
        raise JobError(f"input (features dataset) has no data: {input}")
    stored = {d for d in all_days if MOMENTS_FILE in listed[d]}
    pointer = store.current()
    version = pointer["version"] if pointer else None
    held = set(storage.list_partitions(spark, store.rows(version), schemas.PARTITION_COLUMN)) if version else set()
    new_days = [d for d in all_days if d not in held or (run_date and d == run_date.isoformat())]
    # Moments are computed once per date, when it is projected (and for dates from before they were kept).
    missing = [d for d in all_days if d in new_days or d not in stored]
    _check_features(store.features(missing), input)
    known = store_moments(store, missing)

    drift_figures = None
    if version:
        info = store.version_info(version)
        current_model = store.load_model(version)
        drift_figures = night_drift(store, info, current_model, new_days, drift_threshold)
        if drift_figures:
            log.info("pca drift: %s", drift_figures)

    reason = None
    if version is None:
        if refit == "never":
            raise JobError(f"--refit never: there is no PCA model at {model} yet; run with auto or always once")
        reason = "no_model"
    elif refit == "always":
        reason = "forced"
    elif refit == "auto" and drift_figures and drift_figures["enough_rows"] and drift_figures["significant"]:
        reason = "drift"

    if reason:
        history = pointer["published"] if pointer else []
        version, current_model, info = fit_version(store, all_days, known, stored, k, variance)
        # Every row into the new version, beside the previous one; CURRENT switches only once all are written.
        rows = project(store, current_model, version, all_days, fresh=True)
        deleted = publish(store, version, history, keep_versions)
    else:
        rows = project(store, current_model, version, new_days, fresh=False) if new_days else 0
        deleted = []

    summary = {
        "version": version,
        "refitted": bool(reason),
        "refit_reason": reason,
        "refit_mode": refit,
        "drift": drift_figures,
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
