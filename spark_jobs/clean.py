"""clean: read raw images, check and decode them, drop duplicates, label them, keep the rejects with a reason.

    spark-submit --py-files fruits_common.zip clean.py \
        --input URI --output URI --rejected URI [--run-date YYYY-MM-DD]

Writes ``<output>/ingest_date=<run-date>/`` (valid images, original bytes) and
``<rejected>/ingest_date=<run-date>/`` (every other input file, with ``reason``). Every input image file
lands in exactly one of the two. Re-running a run-date replaces its two partitions and nothing else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, IntegerType, LongType, StringType, StructField, StructType

from fruits_common import images, schemas, storage
from fruits_common.errors import JobError
from fruits_common.spark import main, run_date

log = logging.getLogger("fruits.clean")

CHECKED = StructType(
    [
        StructField("image_id", StringType(), True),
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("width", IntegerType(), True),
        StructField("height", IntegerType(), True),
        StructField("format", StringType(), True),
        StructField("size_bytes", LongType(), False),
        StructField("reason", StringType(), True),
        StructField("detail", StringType(), True),
        StructField("content", BinaryType(), True),
    ]
)


def build_parser() -> argparse.ArgumentParser:
    """The job's command line (an interface: the DAG and the docs call it)."""
    parser = argparse.ArgumentParser(prog="clean.py", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="folder of raw images, searched recursively")
    parser.add_argument("--output", required=True, help="root of the clean dataset (Parquet)")
    parser.add_argument("--rejected", required=True, help="root of the rejected-files dataset (Parquet)")
    parser.add_argument(
        "--run-date",
        type=run_date,
        default=dt.datetime.now(dt.UTC).date(),
        help="ingest_date partition to write (default: today, UTC)",
    )
    return parser


def _check_batches(input_root: str):
    """mapInPandas function: hash, label and check every file of a batch (runs on the executors)."""

    def check(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = []
            for path, content, length in zip(batch["path"], batch["content"], batch["length"], strict=True):
                result = images.check_image(content)
                rows.append(
                    {
                        "image_id": images.content_id(content or b""),
                        "path": path,
                        "label": images.label_from_path(path, input_root),
                        "width": result.width,
                        "height": result.height,
                        "format": result.format,
                        "size_bytes": int(length),
                        "reason": result.reason,
                        "detail": result.detail,
                        # Rejected files keep no bytes: the rejected dataset records them, it does not store them.
                        "content": content if result.reason is None else None,
                    }
                )
            yield pd.DataFrame(rows, columns=CHECKED.fieldNames()).astype({"width": "Int32", "height": "Int32"})

    return check


def _read_files(spark: SparkSession, input_uri: str) -> DataFrame:
    """Image files under ``input_uri`` with 1 byte to ``MAX_FILE_BYTES``, as (path, content, length)."""
    return (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", images.IMAGE_GLOB)
        .load(input_uri)
        # Pushed down to the file listing: oversized files are never read.
        .filter(F.col("length") <= images.MAX_FILE_BYTES)
        .select("path", "content", "length")
    )


def _unreadable_files(spark: SparkSession, input_uri: str, input_root: str) -> DataFrame:
    """Rejections for image files Spark's scan cannot hold: empty ones (Spark skips them silently)
    and ones over ``MAX_FILE_BYTES``. Only their paths reach the driver."""
    rows = []
    for path, length in storage.list_files(spark, input_uri):
        if not images.IMAGE_NAME.search(path):
            continue
        label = images.label_from_path(path, input_root)
        if length == 0:
            rows.append((images.content_id(b""), path, label, 0, images.EMPTY_FILE, "the file has no bytes"))
        elif length > images.MAX_FILE_BYTES:
            rows.append(
                (
                    None,
                    path,
                    label,
                    length,
                    images.TOO_LARGE,
                    f"{length} bytes is over the {images.MAX_FILE_BYTES} byte limit",
                )
            )
    return spark.createDataFrame(
        rows, "image_id string, path string, label string, size_bytes long, reason string, detail string"
    )


def run(spark: SparkSession, input: str, output: str, rejected: str, run_date: dt.date | None = None) -> dict:
    """Clean the images under ``input`` into the ``run_date`` partitions of ``output`` and ``rejected``."""
    run_date = run_date or dt.datetime.now(dt.UTC).date()
    if not storage.exists(spark, input):
        raise JobError(f"input folder does not exist: {input}")
    input_root = storage.qualify(spark, input)
    partition = f"{schemas.PARTITION_COLUMN}={run_date.isoformat()}"

    checked = _read_files(spark, input).mapInPandas(_check_batches(input_root), schema=CHECKED)
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
        "image_id", "path", "label", "width", "height", "format", "size_bytes", "content"
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
    rejects = invalid.unionByName(duplicates).unionByName(_unreadable_files(spark, input, input_root))

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
    summary = {
        "run_date": run_date.isoformat(),
        "kept": written.count(),
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": by_reason,
    }
    log.info("clean %s: %s", partition, summary)
    return summary


if __name__ == "__main__":
    sys.exit(main("fruits-clean", build_parser(), run))
