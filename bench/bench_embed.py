"""Side-by-side benchmark of the embed step (issue: make the embedding step fast).

One run, the same real images, the same machine:
  1. the project's embed job in Spark local[*], warm (session and Python workers started before timing),
     at several input sizes;
  2. the reference: plain Keras ``model.predict`` on batches of the same decoded images, in one process;
  3. the classic notebook way: a Series-to-Series pandas UDF that rebuilds MobileNetV2 from broadcast
     weights for every batch;
  4. the whole pipeline (clean, embed, PCA) wall time.
Prints a table and writes ``bench/results/latest.json``. Usage: ``make bench [DATA=...] [WEIGHTS=...]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "spark_jobs"))

RUN_DATE = dt.date(2026, 1, 1)


class PeakRss:
    """Peak resident memory, sampled once a second: of this process and all its children (driver, Spark's
    JVM, Python workers), and of the Python workers alone (where the model and the image batches live).

    Python workers are forked from one daemon and share pages with it, so they are counted by PSS; reading
    PSS costs CPU (the kernel walks the page tables), which is why the JVM is counted by plain RSS and the
    sampling is slow: the probe must not slow down what it measures.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval, self.peak_mb, self.workers_peak_mb = interval, 0.0, 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = workers = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    if proc.pid != me.pid and "python" in proc.name().lower():
                        pss = proc.memory_full_info().pss
                        workers += pss
                        total += pss
                    else:
                        total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self.workers_peak_mb = max(self.workers_peak_mb, workers / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def copy_images(data: Path, target: Path, limit: int) -> list[Path]:
    """Up to ``limit`` images from ``data``, taken round-robin over labels, copied in the same layout."""
    by_folder: dict[Path, list[Path]] = {}
    for image in sorted(data.rglob("*")):
        if image.suffix.lower() in (".jpg", ".jpeg", ".png"):
            by_folder.setdefault(image.parent, []).append(image)
    chosen, queues = [], [list(v) for v in by_folder.values()]
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    for image in chosen:
        destination = target / image.relative_to(data)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, destination)
    return chosen


def spark_session():
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYTHONPATH"] = str(REPO / "spark_jobs")
    session = (
        SparkSession.builder.master("local[*]")
        .appName("fruits-bench")
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(os.cpu_count()))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def classic_udf_images_per_s(spark, clean_dir: str, weights: str, batch_size: int) -> tuple[float, int]:
    """The common notebook pattern: broadcast weights, rebuild the model in a pandas UDF per batch."""
    import keras
    from pyspark.sql.functions import col, pandas_udf

    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=weights)
    broadcast_weights = spark.sparkContext.broadcast(model.get_weights())

    @pandas_udf("array<float>")
    def featurize(content: pd.Series) -> pd.Series:
        import keras as k
        from keras.applications.mobilenet_v2 import preprocess_input

        from fruits_common.images import model_input

        rebuilt = k.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=None)
        rebuilt.set_weights(broadcast_weights.value)
        batch = np.stack([model_input(c) for c in content]).astype(np.float32)
        return pd.Series(list(rebuilt.predict(preprocess_input(batch), verbose=0)))

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    df = spark.read.parquet(clean_dir).repartition(spark.sparkContext.defaultParallelism)
    n = df.count()
    start = time.perf_counter()
    df.select(featurize(col("content")).alias("f")).write.mode("overwrite").format("noop").save()
    return n / (time.perf_counter() - start), n


def keras_images_per_s(files: list[Path], weights: str, batch_size: int) -> float:
    """Plain Keras ``model.predict`` on batches of the same decoded images, in this process."""
    import keras
    from keras.applications.mobilenet_v2 import preprocess_input

    from fruits_common.images import model_input

    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=weights)
    pixels = np.stack([model_input(f.read_bytes()) for f in files]).astype(np.float32)
    model.predict(preprocess_input(pixels[:batch_size]), batch_size=batch_size, verbose=0)  # warm
    start = time.perf_counter()
    model.predict(preprocess_input(pixels), batch_size=batch_size, verbose=0)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder of images (Fruits-360 layout)")
    parser.add_argument("--weights", required=True, help="MobileNetV2 no-top .h5 weights")
    parser.add_argument("--sizes", default="1000,2000,4000", help="embed input sizes, comma-separated")
    parser.add_argument(
        "--reference-images", type=int, default=1000, help="images for the Keras and classic UDF references"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--engine", default="onnx")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "latest.json"))
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    from pyspark.sql import functions as F

    import clean
    import embed
    import pca

    work = Path(tempfile.mkdtemp(prefix="fruits-bench-"))
    try:
        files = copy_images(Path(args.data), work / "images", max(sizes))
        sizes = [s for s in sizes if s <= len(files)]
        spark = spark_session()

        # 4. The whole pipeline, as a nightly run would do it (cold Python workers included).
        start = time.perf_counter()
        clean.run(spark, str(work / "images"), str(work / "clean"), str(work / "rejected"), RUN_DATE)
        embed.run(spark, str(work / "clean"), str(work / "embed_all"), args.weights, args.batch_size, args.engine)
        pca.run(spark, str(work / "embed_all"), str(work / "pca"), str(work / "model"), variance=0.95)
        pipeline_seconds = time.perf_counter() - start

        # Fixed subsets of the clean dataset, one per size (untimed).
        clean_df = spark.read.parquet(str(work / "clean")).orderBy(F.xxhash64("image_id"))
        for size in [*sizes, args.reference_images]:
            clean_df.limit(size).write.mode("overwrite").partitionBy("ingest_date").parquet(str(work / f"clean_{size}"))
        # Warm-up: every Python worker loads its model before timing.
        embed.run(
            spark,
            str(work / f"clean_{args.reference_images}"),
            str(work / "warm"),
            args.weights,
            args.batch_size,
            args.engine,
        )

        # 1. The embed job at each size.
        per_size = []
        for size in sizes:
            with PeakRss() as rss:
                start = time.perf_counter()
                embed.run(
                    spark,
                    str(work / f"clean_{size}"),
                    str(work / f"embed_{size}"),
                    args.weights,
                    args.batch_size,
                    args.engine,
                )
                seconds = time.perf_counter() - start
            per_size.append(
                {
                    "images": size,
                    "seconds": round(seconds, 2),
                    "images_per_s": round(size / seconds, 1),
                    "peak_rss_mb": round(rss.peak_mb),
                    "workers_peak_rss_mb": round(rss.workers_peak_mb),
                }
            )

        # 3. The classic UDF, then 2. Keras in one process, on the same reference images.
        classic, _ = classic_udf_images_per_s(
            spark, str(work / f"clean_{args.reference_images}"), args.weights, args.batch_size
        )
        reference_paths = [
            Path(r["path"].removeprefix("file:"))
            for r in spark.read.parquet(str(work / f"clean_{args.reference_images}")).select("path").collect()
        ]
        spark.stop()
        keras_rate = keras_images_per_s(reference_paths, args.weights, args.batch_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    largest = per_size[-1]
    import onnxruntime
    import pyspark
    import tensorflow as tf

    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "images": largest["images"],
        "embed_images_per_s": largest["images_per_s"],
        "keras_images_per_s": round(keras_rate, 1),
        "classic_images_per_s": round(classic, 1),
        "ratio_vs_keras": round(largest["images_per_s"] / keras_rate, 2),
        "ratio_vs_classic": round(largest["images_per_s"] / classic, 2),
        "pipeline_seconds": round(pipeline_seconds, 1),
        "pipeline_images": len(files),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in per_size),
        "workers_peak_rss_mb": max(s["workers_peak_rss_mb"] for s in per_size),
        "by_size": per_size,
        "reference_images": args.reference_images,
        "machine": {
            "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "versions": {
            "pyspark": pyspark.__version__,
            "tensorflow": tf.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "settings": {
            "engine": args.engine,
            "batch_size": args.batch_size,
            "master": "local[*]",
            "threads_per_task": 1,
            "data": args.data,
        },
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nEmbedding benchmark, {os.cpu_count()} cores, engine={args.engine}, batch={args.batch_size}")
    print(f"{'what':<46}{'images':>8}{'images/s':>10}{'peak RSS MB (all / workers)':>30}")
    for s in per_size:
        print(
            f"{'embed job, Spark local[*] (warm)':<46}{s['images']:>8}{s['images_per_s']:>10}"
            f"{s['peak_rss_mb']:>20} / {s['workers_peak_rss_mb']}"
        )
    print(f"{'Keras model.predict, one process':<46}{len(reference_paths):>8}{result['keras_images_per_s']:>10}")
    print(
        f"{'classic pandas UDF, model rebuilt per batch':<46}{args.reference_images:>8}"
        f"{result['classic_images_per_s']:>10}"
    )
    print(f"{'whole pipeline (clean+embed+PCA), seconds':<46}{len(files):>8}{result['pipeline_seconds']:>10}")
    print(f"ratio embed/keras = {result['ratio_vs_keras']}  (target >= 2.0)")
    print(f"ratio embed/classic = {result['ratio_vs_classic']}  (target >= 3.0)")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
