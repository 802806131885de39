"""embed: MobileNetV2 transfer learning, 1,280 features per image.

    spark-submit embed.py \
        --input URI --output URI --weights WEIGHTS [--run-date YYYY-MM-DD] [--batch-size N] [--engine onnx|keras]

Embeds the clean dataset's ``ingest_date`` partitions that ``<output>`` has no partition for yet, and
``--run-date``'s, and writes them to ``<output>`` partitioned by ``ingest_date``, replacing exactly those
partitions (a re-run gives the same rows). Other partitions are neither listed file by file nor read. WEIGHTS is
``imagenet`` (Keras downloads them) or a path or s3:// URI of the Keras ``.h5`` file
(``mobilenet_v2_..._1.0_224_no_top.h5``). The ``onnx`` engine (default) runs the same model exported to ONNX once
(cached next to the weights); ``keras`` is the reference.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark import SparkFiles
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from fruits_common import embedding, images, schemas, storage
from fruits_common.errors import JobError
from fruits_common.spark import main, positive_int, run_date, session_conf

log = logging.getLogger("fruits.embed")

# Measured on 2 cores (bench/): 16-64 run at the same speed, 128 is ~15% slower; 32 keeps Arrow batches small.
DEFAULT_BATCH_SIZE = 32
# Rows of features per output file (~2.8 KB each with zstd: ~140 MB files).
ROWS_PER_FILE = 50_000


def build_parser() -> argparse.ArgumentParser:
    """The job's command line (an interface: the DAG and the docs call it)."""
    parser = argparse.ArgumentParser(prog="embed.py", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="root of the clean dataset (Parquet)")
    parser.add_argument("--output", required=True, help="root of the features dataset (Parquet)")
    parser.add_argument(
        "--weights", required=True, help="'imagenet', or a path or s3:// URI of the MobileNetV2 no-top .h5 weights"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per inference batch (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--run-date",
        type=run_date,
        default=None,
        help="an ingest_date to (re)embed even if the features dataset holds it (the run's own date)",
    )
    parser.add_argument(
        "--engine",
        choices=embedding.ENGINES,
        default="onnx",
        help="inference engine (default onnx; keras is the reference)",
    )
    return parser


def _local_weights(spark: SparkSession, weights: str, scratch: Path) -> str:
    """The Keras weights as a file on the driver: ``imagenet`` resolved, s3:// copied."""
    if weights == embedding.IMAGENET:
        return embedding.download_imagenet_weights()
    if not storage.exists(spark, weights):
        raise JobError(f"weights file not found: {weights}")
    if os.path.isfile(weights):
        return weights
    return storage.copy_to_local(spark, weights, scratch / os.path.basename(weights.rstrip("/")))


def _onnx_model(spark: SparkSession, weights: str, local_weights: str) -> str:
    """The ONNX export of the weights: reused from next to them (or the local cache), else exported now
    and kept next to them, so that a cluster converts once and its executors never need TensorFlow."""
    name = embedding.onnx_name(local_weights)
    beside = None if weights == embedding.IMAGENET else storage.join(os.path.dirname(weights.rstrip("/")), name)
    cached = embedding.MODEL_CACHE / name
    if beside and storage.exists(spark, beside):
        return beside
    if cached.is_file():
        return str(cached)
    log.info("exporting %s to ONNX (once)", local_weights)
    embedding.export_onnx(local_weights, cached)
    if beside:
        try:
            storage.copy_from_local(spark, str(cached), beside)
            return beside
        except Exception as exc:  # a read-only weights folder only costs this node's cache
            log.warning("could not keep the ONNX model next to the weights (%s); using %s", exc, cached)
    return str(cached)


def _ship_model(spark: SparkSession, weights: str, engine: str, scratch: Path) -> str:
    """Make the engine's model file available on every executor; returns its name for ``SparkFiles.get``.

    Everything is resolved on the driver (``imagenet`` from the Keras cache or one download), so executors
    need no internet and a problem fails here with a clear message instead of inside a Spark task.
    """
    if weights.endswith(".onnx"):
        if engine != "onnx":
            raise JobError("an .onnx model file needs --engine onnx")
        model = weights
        if not storage.exists(spark, model):
            raise JobError(f"ONNX model file not found: {model}")
    else:
        local_weights = _local_weights(spark, weights, scratch)
        model = local_weights if engine == "keras" else _onnx_model(spark, weights, local_weights)
    # addFile copies from any Hadoop path (s3:// on EMR) to each executor's work directory once.
    spark.sparkContext.addFile(model)
    return os.path.basename(model.rstrip("/"))


def _embed_batches(model_name: str, engine: str, threads: int):
    """mapInPandas function: decode, resize and embed each Arrow batch with the worker's cached model."""

    def embed(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = embedding.get_model(SparkFiles.get(model_name), engine, threads)
        for batch in batches:
            pixels = np.stack([images.model_input(c) for c in batch["content"]])
            features = model(pixels)
            yield pd.DataFrame(
                {
                    "image_id": batch["image_id"],
                    "path": batch["path"],
                    "label": batch["label"],
                    "features": list(features),
                    schemas.PARTITION_COLUMN: batch[schemas.PARTITION_COLUMN],
                }
            )

    return embed


def pending_dates(spark: SparkSession, input: str, output: str, run_date: dt.date | None) -> list[str]:
    """The clean partitions to embed: those the features dataset has no partition for (a night not embedded yet,
    whatever the reason), and ``run_date``'s (a re-run of clean replaced it). Two listings, no data read."""
    clean_days = storage.list_partitions(spark, input, schemas.PARTITION_COLUMN)
    done = set(storage.list_partitions(spark, output, schemas.PARTITION_COLUMN))
    forced = run_date.isoformat() if run_date else None
    return [d for d in clean_days if d not in done or d == forced]


def run(
    spark: SparkSession,
    input: str,
    output: str,
    weights: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    engine: str = "onnx",
    run_date: dt.date | None = None,
) -> dict:
    """Embed the clean partitions under ``input`` that ``output`` does not hold yet (and ``run_date``'s), replacing
    exactly those partitions of ``output``."""
    if not storage.exists(spark, input):
        raise JobError(f"input (clean dataset) does not exist: {input}")
    days = pending_dates(spark, input, output, run_date)
    # Only the pending partitions are listed and read (the clean history's image bytes are never touched).
    folders = [storage.join(input, f"{schemas.PARTITION_COLUMN}={d}") for d in days]
    clean = (
        spark.read.schema(schemas.CLEAN).option("basePath", input).parquet(*folders)
        if folders
        else spark.createDataFrame([], schemas.CLEAN)
    )
    new = clean.select("image_id", "path", "label", "content", schemas.PARTITION_COLUMN)

    todo = clean.select("image_id").count() if folders else 0  # ids only (column pruning): sizes the tasks below
    cores = spark.sparkContext.defaultParallelism
    # Few large partitions (one per core at least) keep each worker's model busy; cap at ~4,000 images
    # per task so a lost executor costs minutes, not the whole run.
    partitions = max(cores, -(-todo // 4000))
    threads = int(spark.conf.get("spark.task.cpus", "1"))

    # What this run adds, written before the rows (the DAG reads it once the fresh _SUCCESS marker is there).
    run_summary = {"embedded": todo, "ingest_dates": days, "engine": engine}
    storage.write_text(spark, storage.join(output, "_summary.json"), json.dumps(run_summary, indent=2))
    with (
        tempfile.TemporaryDirectory(prefix="fruits-embed-") as scratch,
        session_conf(
            spark,
            {
                "spark.sql.execution.arrow.maxRecordsPerBatch": str(batch_size),
                # Replace the pending dates' partitions, and only them: a re-run gives the same rows, no duplicate.
                "spark.sql.sources.partitionOverwriteMode": "dynamic",
            },
        ),
    ):
        if folders:
            model_name = _ship_model(spark, weights, engine, Path(scratch))
            # Repartition first, then drop duplicates (clean guarantees none; cheap insurance) within those
            # partitions. The other way round, the explicit repartition is planned away and adaptive execution
            # coalesces the dedup's shuffle by bytes: a night's photos ran in ONE inference task on the cluster.
            spread = new.repartition(partitions, "image_id").dropDuplicates(["image_id"])
            embedded = spread.mapInPandas(_embed_batches(model_name, engine, threads), schema=schemas.EMBED)
            # One file per date per ROWS_PER_FILE rows, however many tasks embedded it: files stay few.
            files_per_date = max(1, -(-todo // ROWS_PER_FILE))
            (
                embedded.repartition(
                    len(days) * files_per_date,
                    schemas.PARTITION_COLUMN,
                    F.pmod(F.xxhash64("image_id"), F.lit(files_per_date)),
                )
                .write.mode("overwrite")
                .option("compression", "zstd")
                .partitionBy(schemas.PARTITION_COLUMN)
                .parquet(output)
            )
    # Written last, also on a night with nothing to embed: the DAG waits for a fresh one.
    storage.write_bytes(spark, storage.join(output, "_SUCCESS"), b"")
    summary = {
        "embedded": todo,
        "ingest_dates": days,
        "partitions": partitions,
        "batch_size": batch_size,
        "engine": engine,
    }
    log.info("embed: %s", summary)
    return summary


if __name__ == "__main__":
    sys.exit(main("fruits-embed", build_parser(), run))
