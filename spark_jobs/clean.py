"""clean: read raw images, check and decode them, drop duplicates, label them, keep the rejects with a reason.

    spark-submit clean.py --input URI [URI ...] --output URI --rejected URI [--run-date YYYY-MM-DD]
        [--skip-accounted-since YYYY-MM-DD] [--max-side PX]

Writes ``<output>/ingest_date=<run-date>/`` (valid images: the original's metadata and a normalized image, at most
``--max-side`` px, decoded once at the size the model needs) and ``<rejected>/ingest_date=<run-date>/`` (every
other file, with ``reason``). Every file under the input but hidden ones (``_*``, ``.*``) lands in exactly one of
the two. With ``--skip-accounted-since``, files already recorded (kept or rejected) in a partition from that date to
the day before the run date are skipped, with no new row: a nightly run reads a window of upload days and processes
only what no earlier run accounted for. Re-running a run-date replaces its two partitions and nothing else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, IntegerType, LongType, StringType, StructField, StructType

from fruits_common import files, images, schemas, storage
from fruits_common.errors import JobError
from fruits_common.spark import main, positive_int, run_date, session_conf

log = logging.getLogger("fruits.clean")

# Files per Arrow batch and per task. The JVM only carries paths in; each Python task reads its files itself, one at
# a time (fruits_common.files), and sends back normalized images (~30 KB). Per task, Spark's Python worker costs a
# fixed setup, so tasks are few and large: a partition holds up to PARTITION_BYTES of originals.
FILES_PER_BATCH = 16
PARTITION_BYTES = 128 * 1024 * 1024
RUN_FILE = "_run.json"  # what the run read, beside its clean partition

CHECKED = StructType(
    [
        StructField("image_id", StringType(), True),
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("width", IntegerType(), True),
        StructField("height", IntegerType(), True),
        StructField("format", StringType(), True),
        StructField("size_bytes", LongType(), False),
        StructField("orientation", IntegerType(), True),
        StructField("reason", StringType(), True),
        StructField("detail", StringType(), True),
        StructField("content", BinaryType(), True),
    ]
)


def build_parser() -> argparse.ArgumentParser:
    """The job's command line (an interface: the DAG and the docs call it)."""
    parser = argparse.ArgumentParser(prog="clean.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--input", required=True, nargs="+", help="folders of raw images, searched recursively (missing ones skipped)"
    )
    parser.add_argument("--output", required=True, help="root of the clean dataset (Parquet)")
    parser.add_argument("--rejected", required=True, help="root of the rejected-files dataset (Parquet)")
    parser.add_argument(
        "--run-date",
        type=run_date,
        default=dt.datetime.now(dt.UTC).date(),
        help="ingest_date partition to write (default: today, UTC)",
    )
    parser.add_argument(
        "--skip-accounted-since",
        type=run_date,
        default=None,
        help="skip files already kept or rejected in a partition from this date to the day before --run-date",
    )
    parser.add_argument(
        "--max-side",
        type=positive_int,
        default=images.DEFAULT_MAX_SIDE,
        help=f"longest side of the normalized images, in pixels (default {images.DEFAULT_MAX_SIDE})",
    )
    return parser


def _check_batches(input_roots: list[str], max_side: int):
    """mapInPandas function: read, hash, label, check and normalize every file of a batch (on the executors)."""

    def check(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = []
            for path, length in zip(batch["path"], batch["length"], strict=True):
                try:
                    content = files.read_bytes(path)
                except OSError as exc:  # listed, then deleted or not readable: recorded, not a failed task
                    result, content = images.CleanImage(reason=images.UNREADABLE, detail=str(exc)[:500]), None
                else:
                    result = images.clean_image(content, max_side)
                rows.append(
                    {
                        "image_id": images.content_id(content) if content is not None else None,
                        "path": path,
                        "label": _label(path, input_roots),
                        "width": result.width,
                        "height": result.height,
                        "format": result.format,
                        "size_bytes": len(content) if content is not None else int(length),
                        "orientation": result.orientation,
                        "reason": result.reason,
                        "detail": result.detail,
                        # The normalized image; rejected files keep no bytes (the rejected dataset records them).
                        "content": result.content,
                    }
                )
            yield pd.DataFrame(rows, columns=CHECKED.fieldNames()).astype(
                {"width": "Int32", "height": "Int32", "orientation": "Int32"}
            )

    return check


def _label_root(path: str, input_roots: list[str]) -> str | None:
    """The input folder a file was found under (the longest matching one)."""
    return max((r for r in input_roots if path.startswith(r.rstrip("/") + "/")), key=len, default=None)


def _label(path: str, input_roots: list[str]) -> str | None:
    """The label of a file, from the input folder it was found under."""
    root = _label_root(path, input_roots)
    return images.label_from_path(path, root) if root else None


def _files_frame(spark: SparkSession, listing: list[tuple[str, int]]) -> DataFrame:
    """The files to read as (path, length) rows, spread evenly over few large partitions (see PARTITION_BYTES)."""
    cores = spark.sparkContext.defaultParallelism
    rounds = max(1, -(-sum(length for _, length in listing) // (cores * PARTITION_BYTES)))
    partitions = rounds * cores  # a multiple of the cores: no round with idle cores but the last tasks' tails
    frame = pd.DataFrame(listing, columns=["path", "length"])
    # From pandas through Arrow: built in the JVM, no Python worker; round-robin keeps the partitions even.
    return spark.createDataFrame(frame, schema="path string, length long").repartition(partitions)


def _unreadable_files(spark: SparkSession, listing: list[tuple[str, int]], input_roots: list[str]) -> DataFrame:
    """Rejections decided from the listing alone: empty files and files over ``MAX_FILE_BYTES`` (never read)."""
    rows = []
    for path, length in listing:
        label = _label(path, input_roots)
        if length == 0:
            rows.append((images.content_id(b""), path, label, 0, images.EMPTY_FILE, "the file has no bytes"))
        elif length > images.MAX_FILE_BYTES:
            detail = f"{length} bytes is over the {images.MAX_FILE_BYTES} byte limit"
            rows.append((None, path, label, length, images.TOO_LARGE, detail))
    return spark.createDataFrame(
        rows, "image_id string, path string, label string, size_bytes long, reason string, detail string"
    )


def _accounted_paths(spark: SparkSession, output: str, rejected: str, since: dt.date, run_date: dt.date) -> set[str]:
    """Paths already kept or rejected by the runs of ``since`` up to the day before ``run_date``."""
    paths: set[str] = set()
    for root, schema in ((output, schemas.CLEAN), (rejected, schemas.REJECTED)):
        if storage.has_parquet(spark, root):
            days = (
                spark.read.schema(schema)
                .parquet(root)
                .filter(
                    (F.col(schemas.PARTITION_COLUMN) >= F.lit(since))
                    & (F.col(schemas.PARTITION_COLUMN) < F.lit(run_date))
                )
            )
            paths.update(r["path"] for r in days.select("path").collect())
    return paths


def run(
    spark: SparkSession,
    input: str | list[str],
    output: str,
    rejected: str,
    run_date: dt.date | None = None,
    max_side: int = images.DEFAULT_MAX_SIDE,
    skip_accounted_since: dt.date | None = None,
) -> dict:
    """Clean the files under ``input`` (one folder or several) into the ``run_date`` partitions of ``output`` and
    ``rejected``, skipping those accounted for since ``skip_accounted_since`` when it is given."""
    inputs = [input] if isinstance(input, str) else list(input)
    with session_conf(
        spark,
        {
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(FILES_PER_BATCH),
            "spark.sql.execution.arrow.pyspark.enabled": "true",  # the listing goes to the JVM as Arrow
        },
    ):
        day = run_date or dt.datetime.now(dt.UTC).date()
        return _run(spark, inputs, output, rejected, day, max_side, skip_accounted_since)


def _run(
    spark: SparkSession,
    inputs: list[str],
    output: str,
    rejected: str,
    run_date: dt.date,
    max_side: int,
    skip_accounted_since: dt.date | None,
) -> dict:
    existing = [i for i in inputs if storage.exists(spark, i)]
    if not existing:
        raise JobError(f"input folder does not exist: {', '.join(inputs)}")
    input_roots = [storage.qualify(spark, i) for i in existing]
    partition = f"{schemas.PARTITION_COLUMN}={run_date.isoformat()}"

    # Only paths reach the driver: the listing, and the paths earlier runs of the window accounted for.
    listing = storage.list_files(spark, existing)
    accounted_listed: list[str] = []
    if skip_accounted_since is not None:
        accounted = _accounted_paths(spark, output, rejected, skip_accounted_since, run_date)
        accounted_listed = [path for path, _ in listing if path in accounted]
        listing = [(path, length) for path, length in listing if path not in accounted]
    to_read = [(path, length) for path, length in listing if 0 < length <= images.MAX_FILE_BYTES]
    checked = _files_frame(spark, to_read).mapInPandas(_check_batches(input_roots, max_side), schema=CHECKED)
    checked = checked.persist()  # both outputs below come from it: decode once

    valid = checked.filter(F.col("reason").isNull())
    # Same content twice in this run: keep the first path (sorted, so re-runs keep the same one).
    first = Window.partitionBy("image_id").orderBy("path")
    valid = valid.withColumn("_rank", F.row_number().over(first)).withColumn("_first_path", F.first("path").over(first))

    # Same content in an earlier (or later) run-date's partition: already ingested, not written again.
    if storage.has_parquet(spark, output):
        earlier = (
            spark.read.schema(schemas.CLEAN)
            .parquet(output)
            .filter(F.col(schemas.PARTITION_COLUMN) != F.lit(run_date))
            .groupBy("image_id")
            .agg(F.min(F.struct(schemas.PARTITION_COLUMN, "path")).alias("_earlier"))
        )
        valid = valid.join(earlier, "image_id", "left")
    else:
        valid = valid.withColumn("_earlier", F.lit(None).cast("struct<ingest_date:date,path:string>"))

    is_duplicate = (F.col("_rank") > 1) | F.col("_earlier").isNotNull()
    duplicate_detail = F.when(F.col("_rank") > 1, F.concat(F.lit("same content as "), F.col("_first_path"))).otherwise(
        F.concat(
            F.lit("already ingested on "),
            F.col("_earlier.ingest_date").cast("string"),
            F.lit(" as "),
            F.col("_earlier.path"),
        )
    )

    kept = valid.filter(~is_duplicate).select(
        "image_id", "path", "label", "width", "height", "format", "size_bytes", "orientation", "content"
    )
    duplicates = valid.filter(is_duplicate).select(
        "image_id",
        "path",
        "label",
        "size_bytes",
        F.lit(images.DUPLICATE).alias("reason"),
        duplicate_detail.alias("detail"),
    )
    invalid = checked.filter(F.col("reason").isNotNull()).select(
        "image_id", "path", "label", "size_bytes", "reason", "detail"
    )
    rejects = invalid.unionByName(duplicates).unionByName(_unreadable_files(spark, listing, input_roots))

    # Writing the partition folder itself (not partitionBy + overwrite) replaces exactly this run-date.
    clean_schema = schemas.without_partition(schemas.CLEAN)
    (
        kept.select([F.col(f.name).cast(f.dataType) for f in clean_schema.fields])
        .coalesce(max(1, spark.sparkContext.defaultParallelism))
        .write.mode("overwrite")
        .option("compression", "zstd")
        .parquet(storage.join(output, partition))
    )
    rejected_schema = schemas.without_partition(schemas.REJECTED)
    (
        rejects.select([F.col(f.name).cast(f.dataType) for f in rejected_schema.fields])
        .coalesce(1)
        .write.mode("overwrite")
        .option("compression", "zstd")
        .parquet(storage.join(rejected, partition))
    )
    checked.unpersist()

    written = spark.read.schema(clean_schema).parquet(storage.join(output, partition))
    rejected_rows = spark.read.schema(rejected_schema).parquet(storage.join(rejected, partition))
    by_reason = {r["reason"]: r["count"] for r in rejected_rows.groupBy("reason").count().collect()}
    new_files = {root: sum(1 for path, _ in listing if _label_root(path, input_roots) == root) for root in input_roots}
    summary = {
        "run_date": run_date.isoformat(),
        "kept": written.count(),
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": by_reason,
        "skipped_accounted": len(accounted_listed),
        "inputs": [{"input": root, "new_files": n} for root, n in new_files.items()],
        # The upload days this run covered: the dated input folders in which it found files to process.
        "upload_days": sorted(_day_of(root) for root, n in new_files.items() if n and _day_of(root)),
    }
    # Beside the partition's data ('_': Parquet readers skip it), for the report.
    storage.write_text(spark, storage.join(output, partition, RUN_FILE), json.dumps(summary, indent=2))
    log.info("clean %s: %s", partition, summary)
    return summary


def _day_of(folder: str) -> str | None:
    """``YYYY-MM-DD`` when a folder's name is a date (``uploads/2026-05-01``), else None."""
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    try:
        return dt.date.fromisoformat(name).isoformat()
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main("fruits-clean", build_parser(), run))
