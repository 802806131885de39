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

from fruits_common import files, images, listing, schemas, storage
from fruits_common.errors import JobError
from fruits_common.spark import main, positive_int, run_date, session_conf

log = logging.getLogger("fruits.clean")

# Files per Arrow batch and per task. The JVM only carries paths in; each Python task reads its files itself, one at
# a time (fruits_common.files), and sends back normalized images (~30 KB). Per task, Spark's Python worker costs a
# fixed setup, so tasks are few and large: a partition holds up to PARTITION_BYTES of originals.
FILES_PER_BATCH = 16
PARTITION_BYTES = 128 * 1024 * 1024
RUN_FILE = "_run.json"  # what the run read, beside its clean partition
# A night's clean partition is written in files of about this size (at most one per core): few files per night,
# whatever the cluster's size, so later nights' look-ups open few footers.
FILE_BYTES = 256 * 1024 * 1024
# Up to this many distinct ids a night, the de-duplication look-up is pushed into the Parquet reader as equalities
# on image_id (row groups skipped by their bloom filters); above (a reload), it is a broadcast semi-join.
PUSHED_IDS = 2000
# Parquet writer options of the clean partitions: a bloom filter on image_id, and no dictionary for it (unique ids
# make a dictionary as large as the column, read for every look-up).
ID_BLOOM_OPTIONS = {
    "parquet.bloom.filter.enabled#image_id": "true",
    # A row group (128 MB) holds ~4,000 normalized phone photos: a 1% filter for that many is ~5 KB. Smaller
    # rows (Fruits-360) overfill it: more row groups read, never a wrong answer.
    "parquet.bloom.filter.expected.ndv#image_id": "4000",
    "parquet.enable.dictionary#image_id": "false",
}

CHECKED = StructType(
    [
        StructField("image_id", StringType(), True),
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("input_root", StringType(), True),
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
        "--skip-accounted",
        action="store_true",
        help="skip files already kept or rejected in any other partition (a reload: mode=full)",
    )
    parser.add_argument(
        "--max-side",
        type=positive_int,
        default=images.DEFAULT_MAX_SIDE,
        help=f"longest side of the normalized images, in pixels (default {images.DEFAULT_MAX_SIDE})",
    )
    return parser


def _check_batches(input_roots: list[str], max_side: int):
    """mapInPandas function: read, hash, label, check and normalize every file of a batch (on the executors).

    Files the listing already condemns (empty, over ``MAX_FILE_BYTES``, not a regular file) are never read."""

    def check(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = []
            for path, length in zip(batch["path"], batch["length"], strict=True):
                content = None
                result = _listing_verdict(int(length))
                if result is None:
                    try:
                        content = files.read_bytes(path)
                    except OSError as exc:  # listed, then deleted or not readable: recorded, not a failed task
                        result = images.CleanImage(reason=images.UNREADABLE, detail=str(exc)[:500])
                    else:
                        result = images.clean_image(content, max_side)
                rows.append(
                    {
                        # An empty file has an identity too (that of no bytes), as if it had been read.
                        "image_id": images.content_id(content if content is not None else b"")
                        if content is not None or length == 0
                        else None,
                        "path": path,
                        "label": _label(path, input_roots),
                        "input_root": _label_root(path, input_roots),
                        "width": result.width,
                        "height": result.height,
                        "format": result.format,
                        "size_bytes": len(content) if content is not None else max(0, int(length)),
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


def _listing_verdict(length: int) -> images.CleanImage | None:
    """The rejection a file gets from its listed length alone (None: it has to be read)."""
    if length == files.NOT_A_FILE:
        return images.CleanImage(reason=images.UNREADABLE, detail="not a regular file (a dangling link?)")
    if length == 0:
        return images.CleanImage(reason=images.EMPTY_FILE, detail="the file has no bytes")
    if length > images.MAX_FILE_BYTES:
        return images.CleanImage(
            reason=images.TOO_LARGE, detail=f"{length} bytes is over the {images.MAX_FILE_BYTES} byte limit"
        )
    return None


def _input_root(spark: SparkSession, uri: str) -> str | None:
    """The input folder as Spark reports paths (``file:/a/b``, ``s3://bucket/prefix``), None when it is missing.

    S3 folders are checked through PyArrow, like their listing and reads: the input side of clean needs no Hadoop
    S3 connector (EMRFS on EMR), so a Spark without one (the tests' cluster) reads uploads from S3 too.
    """
    if files.is_s3(uri):
        return uri.rstrip("/") if files.s3_folder_exists(uri) else None
    return storage.qualify(spark, uri) if storage.exists(spark, uri) else None


def _label_root(path: str, input_roots: list[str]) -> str | None:
    """The input folder a file was found under (the longest matching one)."""
    return max((r for r in input_roots if path.startswith(r.rstrip("/") + "/")), key=len, default=None)


def _label(path: str, input_roots: list[str]) -> str | None:
    """The label of a file, from the input folder it was found under."""
    root = _label_root(path, input_roots)
    return images.label_from_path(path, root) if root else None


def _spread(listed: DataFrame, cores: int) -> DataFrame:
    """The files to check, spread evenly over few large partitions (see PARTITION_BYTES)."""
    to_read = listed.filter((F.col("length") > 0) & (F.col("length") <= images.MAX_FILE_BYTES))
    total = to_read.agg(F.sum("length")).first()[0] or 0
    rounds = max(1, -(-int(total) // (cores * PARTITION_BYTES)))
    # A multiple of the cores: no round with idle cores but the last tasks' tails; round-robin keeps them even.
    return listed.repartition(rounds * cores)


def _accounted(
    spark: SparkSession, roots: tuple[str, str], run_date: dt.date, since: dt.date | None
) -> DataFrame | None:
    """Paths already kept or rejected in the partitions from ``since`` to the day before ``run_date``, or (``since``
    None) in every partition but ``run_date``'s; None when there are none. Only those partitions' ``path`` column
    is read (partition pruning and column pruning)."""
    frames = []
    for root in roots:
        days = [d for d in storage.list_partitions(spark, root, schemas.PARTITION_COLUMN) if d != run_date.isoformat()]
        if since is not None:
            days = [d for d in days if since.isoformat() <= d < run_date.isoformat()]
        if days:
            folders = [storage.join(root, f"{schemas.PARTITION_COLUMN}={d}") for d in days]
            frames.append(spark.read.option("basePath", root).parquet(*folders).select("path"))
    if not frames:
        return None
    return frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])


def _ingested_earlier(spark: SparkSession, output: str, run_date: dt.date, night: DataFrame) -> DataFrame | None:
    """For the night's image ids found in another run-date's clean partition: ``image_id, _earlier`` (the first
    such date and path). None when the clean dataset has no other partition.

    A lookup, not an aggregation of the history: the night's ids (collected when few, else broadcast) filter the
    history's ``image_id`` column. With few ids the filter goes down to Parquet as equalities, and the bloom
    filter clean writes on ``image_id`` (:data:`ID_BLOOM_OPTIONS`) lets the reader skip every row group that holds
    none of them: per earlier night, a footer and a bloom filter are read, not its ids (docs/jobs.md).
    """
    days = [d for d in storage.list_partitions(spark, output, schemas.PARTITION_COLUMN) if d != run_date.isoformat()]
    if not days:
        return None
    folders = [storage.join(output, f"{schemas.PARTITION_COLUMN}={d}") for d in days]
    history = (
        spark.read.schema(schemas.CLEAN)
        .option("basePath", output)
        .parquet(*folders)
        .select("image_id", F.struct(schemas.PARTITION_COLUMN, "path").alias("_at"))
    )
    ids = night.select("image_id").distinct()
    few = [r[0] for r in ids.limit(PUSHED_IDS + 1).collect()]
    if len(few) <= PUSHED_IDS:
        if not few:
            return None
        found = history.filter(F.col("image_id").isin(few))
    else:
        found = history.join(F.broadcast(ids), "image_id", "left_semi")
    return found.groupBy("image_id").agg(F.min("_at").alias("_earlier"))


def run(
    spark: SparkSession,
    input: str | list[str],
    output: str,
    rejected: str,
    run_date: dt.date | None = None,
    max_side: int = images.DEFAULT_MAX_SIDE,
    skip_accounted_since: dt.date | None = None,
    skip_accounted: bool = False,
) -> dict:
    """Clean the files under ``input`` (one folder or several) into the ``run_date`` partitions of ``output`` and
    ``rejected``, skipping those accounted for since ``skip_accounted_since`` (or, with ``skip_accounted``, in any
    other partition) when it is given."""
    inputs = [input] if isinstance(input, str) else list(input)
    with session_conf(
        spark,
        {
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(FILES_PER_BATCH),
            "spark.sql.execution.arrow.pyspark.enabled": "true",  # the listing goes to the JVM as Arrow
            # The night's ids reach Parquet as equalities (bloom filters), not as one min-max range.
            "spark.sql.parquet.pushdown.inFilterThreshold": str(PUSHED_IDS),
        },
    ):
        day = run_date or dt.datetime.now(dt.UTC).date()
        return _run(spark, inputs, output, rejected, day, max_side, skip_accounted_since, skip_accounted)


def _run(
    spark: SparkSession,
    inputs: list[str],
    output: str,
    rejected: str,
    run_date: dt.date,
    max_side: int,
    skip_accounted_since: dt.date | None,
    skip_accounted: bool,
) -> dict:
    input_roots = [root for root in (_input_root(spark, i) for i in inputs) if root is not None]
    if not input_roots:
        raise JobError(f"input folder does not exist: {', '.join(inputs)}")
    partition = f"{schemas.PARTITION_COLUMN}={run_date.isoformat()}"
    cores = spark.sparkContext.defaultParallelism

    # The listing stays on the executors (paths only); so does the filter of what earlier runs accounted for:
    # those files are skipped before a byte of them is read.
    listed = listing.list_files(spark, input_roots, cores).persist()
    skipped = 0
    if skip_accounted_since is not None or skip_accounted:
        accounted = _accounted(spark, (output, rejected), run_date, skip_accounted_since)
        if accounted is not None:
            skipped = listed.join(accounted, "path", "left_semi").count()
            listed = listed.join(accounted, "path", "left_anti")
    checked = _spread(listed, cores).mapInPandas(_check_batches(input_roots, max_side), schema=CHECKED)
    checked = checked.persist()  # both outputs below come from it: decode once

    valid = checked.filter(F.col("reason").isNull())
    # Same content twice in this run: keep the first path (sorted, so re-runs keep the same one).
    first = Window.partitionBy("image_id").orderBy("path")
    valid = valid.withColumn("_rank", F.row_number().over(first)).withColumn("_first_path", F.first("path").over(first))

    # Same content in an earlier (or later) run-date's partition: already ingested, not written again.
    earlier = _ingested_earlier(spark, output, run_date, valid)
    if earlier is not None:
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
    rejects = invalid.unionByName(duplicates)

    # Writing the partition folder itself (not partitionBy + overwrite) replaces exactly this run-date. Files of
    # ~FILE_BYTES, sorted by id, with a bloom filter on it, for later nights' look-ups.
    clean_schema = schemas.without_partition(schemas.CLEAN)
    content_bytes = valid.agg(F.sum(F.length("content"))).first()[0] or 0
    files_tonight = max(1, min(cores, -(-int(content_bytes) // FILE_BYTES)))
    writer = (
        kept.select([F.col(f.name).cast(f.dataType) for f in clean_schema.fields])
        .coalesce(files_tonight)
        .sortWithinPartitions("image_id")
        .write.mode("overwrite")
        .option("compression", "zstd")
    )
    for key, value in ID_BLOOM_OPTIONS.items():
        writer = writer.option(key, value)
    writer.parquet(storage.join(output, partition))
    rejected_schema = schemas.without_partition(schemas.REJECTED)
    (
        rejects.select([F.col(f.name).cast(f.dataType) for f in rejected_schema.fields])
        .coalesce(1)
        .write.mode("overwrite")
        .option("compression", "zstd")
        .parquet(storage.join(rejected, partition))
    )
    new_files = {r["input_root"]: int(r["count"]) for r in checked.groupBy("input_root").count().collect()}
    checked.unpersist()
    listed.unpersist()

    written = spark.read.schema(clean_schema).parquet(storage.join(output, partition))
    rejected_rows = spark.read.schema(rejected_schema).parquet(storage.join(rejected, partition))
    by_reason = {r["reason"]: r["count"] for r in rejected_rows.groupBy("reason").count().collect()}
    summary = {
        "run_date": run_date.isoformat(),
        "kept": written.count(),
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": by_reason,
        "skipped_accounted": skipped,
        "inputs": [{"input": root, "new_files": new_files.get(root, 0)} for root in input_roots],
        # The upload days this run covered: the dated input folders in which it found files to process.
        "upload_days": sorted(_day_of(root) for root in input_roots if new_files.get(root) and _day_of(root)),
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
