"""report: the run's numbers and plots, for people who would rather not read Parquet.

    spark-submit report.py --clean URI --rejected URI --pca URI --output URI --run-date YYYY-MM-DD

Writes ``<output>/report.json`` (images read, kept, rejected by reason, duplicates, rows per label, k, explained
variance, the upload days the run covered, the PCA version, whether this run refitted it and the drift) and
three PNG plots:
``explained_variance.png`` (cumulative curve with the chosen k), ``pca_scatter.png`` (first two components of the
current version, coloured by label) and ``images_per_label.png``. Writes ``<output>/_SUCCESS`` last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from fruits_common import images, schemas, storage
from fruits_common.spark import main, run_date

log = logging.getLogger("fruits.report")

UNLABELLED = "(unlabelled)"
SCATTER_POINTS = 5000  # enough to see the clusters; the driver never holds more
FIGURE_SIZE_PX = (900, 600)
PLOTS = ("explained_variance.png", "pca_scatter.png", "images_per_label.png")


def build_parser() -> argparse.ArgumentParser:
    """The job's command line (an interface: the DAG and the docs call it)."""
    parser = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n")[0])
    parser.add_argument("--clean", required=True, help="root of the clean dataset")
    parser.add_argument("--rejected", required=True, help="root of the rejected-files dataset")
    parser.add_argument("--pca", required=True, help="root of the PCA dataset (with _summary.json)")
    parser.add_argument("--output", required=True, help="folder for report.json and the plots")
    parser.add_argument("--run-date", type=run_date, required=True, help="the run's ingest_date")
    return parser


def _count_by(df, column: str) -> dict[str, int]:
    rows = df.groupBy(column).count().collect()
    return dict(sorted(((r[column] if r[column] is not None else UNLABELLED), int(r["count"])) for r in rows))


def _partition(spark: SparkSession, root: str, schema, day: dt.date):
    folder = storage.join(root, f"{schemas.PARTITION_COLUMN}={day.isoformat()}")
    if not storage.has_parquet(spark, folder):
        return spark.createDataFrame([], schemas.without_partition(schema))
    return spark.read.schema(schemas.without_partition(schema)).parquet(folder)


def _final_figures(spark: SparkSession, pca: str, version: str) -> tuple[dict[str, int], list]:
    """Rows per label of the version and its scatter sample, from the stats file pca keeps beside the version's
    rows (a night's report reads no row of the history); versions written before it: from the rows."""
    rows = storage.join(pca, f"{schemas.VERSION_COLUMN}={version}")
    stats_file = storage.join(rows, "_stats.json")
    if storage.exists(spark, stats_file):
        stats = json.loads(storage.read_text(spark, stats_file))
        per_label: dict[str, int] = {}
        for by_label in stats["rows"].values():
            for label, count in by_label.items():
                per_label[label or UNLABELLED] = per_label.get(label or UNLABELLED, 0) + count
        points = [(label or UNLABELLED, float(x), float(y)) for _, _, label, x, y in stats["points"]]
        return dict(sorted(per_label.items())), points
    final = spark.read.schema(schemas.PCA).option("basePath", pca).parquet(rows)
    # A deterministic sample (by id hash) so that re-running a report draws the same picture.
    sample = (
        final.orderBy(F.xxhash64("image_id"))
        .limit(SCATTER_POINTS)
        .select("label", F.col("pca")[0].alias("x"), F.col("pca")[1].alias("y"))
        .collect()
    )
    points = [(r["label"] or UNLABELLED, float(r["x"]), float(r["y"] or 0.0)) for r in sample]
    return _count_by(final, "label"), points


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    dpi = 100
    return plt, plt.subplots(figsize=(FIGURE_SIZE_PX[0] / dpi, FIGURE_SIZE_PX[1] / dpi), dpi=dpi)


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def plot_variance(cumulative: list[float], target: float | None) -> bytes:
    """Cumulative explained variance against the number of components, with the chosen k."""
    plt, (fig, ax) = _figure()
    k = len(cumulative)
    ax.plot(range(1, k + 1), cumulative, marker="o" if k <= 60 else None)
    ax.axvline(k, color="tab:red", linestyle="--", label=f"k = {k}")
    if target:
        ax.axhline(target, color="tab:gray", linestyle=":", label=f"target {target:.0%}")
    ax.set(
        xlabel="number of components",
        ylabel="cumulative explained variance",
        title="PCA explained variance",
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower right")
    return _png(plt, fig)


def plot_scatter(points: list[tuple[str, float, float]]) -> bytes:
    """The first two principal components, one colour per label."""
    plt, (fig, ax) = _figure()
    for label in sorted({p[0] for p in points}):
        xs = [p[1] for p in points if p[0] == label]
        ys = [p[2] for p in points if p[0] == label]
        ax.scatter(xs, ys, s=6, alpha=0.6, label=label)
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"First two components ({len(points)} images)")
    if points:
        ax.legend(markerscale=3, fontsize="small", loc="best")
    return _png(plt, fig)


def plot_counts(counts: dict[str, int]) -> bytes:
    """Images per label in the final dataset."""
    plt, (fig, ax) = _figure()
    ax.barh(list(counts), list(counts.values()), color="tab:green")
    ax.set(xlabel="images", title="Images per label (final dataset)")
    fig.tight_layout()
    return _png(plt, fig)


def run(spark: SparkSession, clean: str, rejected: str, pca: str, output: str, run_date: dt.date) -> dict:
    """Compute the run's report from the datasets and write it with its plots under ``output``."""
    kept = _partition(spark, clean, schemas.CLEAN, run_date)
    rejects = _partition(spark, rejected, schemas.REJECTED, run_date)
    summary = json.loads(storage.read_text(spark, storage.join(pca, schemas.PCA_SUMMARY_FILE)))
    # The final dataset is the current version's rows: what the report shows of them, pca keeps beside them.
    rows_per_label, points = _final_figures(spark, pca, summary["version"])

    # What clean read (written beside its partition; absent for partitions written before it was).
    clean_run_file = storage.join(clean, f"{schemas.PARTITION_COLUMN}={run_date.isoformat()}", "_run.json")
    clean_run = json.loads(storage.read_text(spark, clean_run_file)) if storage.exists(spark, clean_run_file) else {}
    kept_count = kept.count()
    by_reason = _count_by(rejects, "reason")
    report = {
        "run_date": run_date.isoformat(),
        "images_read": kept_count + sum(by_reason.values()),
        "upload_days": clean_run.get("upload_days", []),
        "skipped_already_processed": clean_run.get("skipped_accounted", 0),
        "kept": kept_count,
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": by_reason,
        "duplicates": by_reason.get(images.DUPLICATE, 0),
        "kept_per_label": _count_by(kept, "label"),
        "final_rows": sum(rows_per_label.values()),
        "rows_per_label": rows_per_label,
        "k": summary["k"],
        "pca_version": summary["version"],
        "pca_refitted": summary["refitted"],
        "pca_refit_reason": summary["refit_reason"],
        "pca_drift": summary["drift"],
        "pca_rows_projected": summary["rows_projected"],
        "pca_model": summary["model"],
        "variance_target": summary["variance_target"],
        "explained_variance": summary["explained_variance"],
        "cumulative_explained_variance": summary["cumulative_explained_variance"],
        "plots": list(PLOTS),
    }
    if summary["k"] < 2:
        points = [(label, x, 0.0) for label, x, _ in points]

    storage.write_bytes(
        spark,
        storage.join(output, PLOTS[0]),
        plot_variance(summary["cumulative_explained_variance"], summary["variance_target"]),
    )
    storage.write_bytes(spark, storage.join(output, PLOTS[1]), plot_scatter(points))
    storage.write_bytes(spark, storage.join(output, PLOTS[2]), plot_counts(rows_per_label))
    storage.write_text(spark, storage.join(output, "report.json"), json.dumps(report, indent=2))
    storage.write_bytes(spark, storage.join(output, "_SUCCESS"), b"")
    log.info(
        "report written to %s: %d read, %d kept, %d rejected, k=%d",
        storage.join(output, "report.json"),
        report["images_read"],
        report["kept"],
        report["rejected"],
        report["k"],
    )
    return {key: report[key] for key in ("images_read", "kept", "rejected", "k")}


if __name__ == "__main__":
    sys.exit(main("fruits-report", build_parser(), run))
