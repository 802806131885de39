"""Side-by-side benchmark of the pca step: a night's cost over a small and a large history, and the two refits.

One run, one Spark session (``local[*]``), synthetic 1,280-d features with a low-rank structure like MobileNetV2's:
  1. a night of ``--night`` new images over a history of 5,000 and of 50,000 embeddings (history fitted and
     projected first, untimed; then the night's ``pca.run`` is timed): the night's time should not follow the
     history's size;
  2. a refit of the 50,000-row history from the moments stored per date, against a fit that re-reads every row
     (the covariance aggregated from the features again), both followed by the same eigendecomposition.
Writes ``bench/results/pca.json``. Usage: ``make bench`` (or ``python bench/bench_pca.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "spark_jobs"), str(REPO / "bench")]

from bench_embed import spark_session  # noqa: E402

FEATURES = 1280
RANK = 64
NIGHT_DAY = dt.date(2026, 6, 1)


def write_night(root: Path, day: dt.date, rows: int, seed: int, basis: np.ndarray) -> None:
    """One ingest_date partition of synthetic features, as the embed job writes it (row groups of 1,000)."""
    rng = np.random.default_rng(seed)
    strengths = np.geomspace(8.0, 0.2, RANK)
    features = ((rng.normal(size=(rows, RANK)) * strengths) @ basis + rng.normal(0, 0.05, (rows, FEATURES))).astype(
        np.float32
    )
    offsets = pa.array(np.arange(0, (rows + 1) * FEATURES, FEATURES, dtype=np.int32))
    table = pa.table(
        {
            "image_id": [f"{day}-{seed}-{i}" for i in range(rows)],
            "path": [f"/uploads/{day}/{i}.jpg" for i in range(rows)],
            "label": pa.nulls(rows, pa.string()),
            "features": pa.ListArray.from_arrays(offsets, pa.array(features.ravel(), pa.float32())),
        }
    )
    folder = root / f"ingest_date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-0.parquet", row_group_size=1000, compression="zstd")


def history(root: Path, rows: int, basis: np.ndarray, per_night: int = 5000) -> None:
    """``rows`` embeddings as nights of ``per_night`` before NIGHT_DAY."""
    nights = max(1, rows // per_night)
    for n in range(nights):
        write_night(root, NIGHT_DAY - dt.timedelta(days=nights - n), rows // nights, seed=n, basis=basis)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--histories", default="5000,50000", help="history sizes, comma-separated")
    parser.add_argument("--night", type=int, default=500, help="new images in the timed night")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "pca.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.histories.split(",")]

    import pca
    from fruits_common import covariance, drift, embedding

    basis = np.random.default_rng(0).normal(size=(RANK, FEATURES)) / np.sqrt(FEATURES)
    spark = spark_session()
    nights, refits = [], {}
    with tempfile.TemporaryDirectory(prefix="fruits-bench-pca-") as work:
        for size in sizes:
            root = Path(work) / f"h{size}"
            embed, out, model = root / "stages/embed", root / "stages/pca", root / "models/pca"
            history(embed, size, basis)
            pca.run(spark, str(embed), str(out), str(model), variance=0.95)  # the history, fitted and projected
            write_night(embed, NIGHT_DAY, args.night, seed=10_000, basis=basis)
            start = time.perf_counter()
            summary = pca.run(spark, str(embed), str(out), str(model), variance=0.95, run_date=NIGHT_DAY)
            seconds = time.perf_counter() - start
            assert not summary["refitted"] and summary["rows_projected"] == args.night, summary
            nights.append({"history": size, "night": args.night, "seconds": round(seconds, 2)})
            print(json.dumps(nights[-1]), flush=True)

            if size == max(sizes):
                store = pca.Store(spark, str(embed), str(out), str(model))
                days = [d for d in sorted(p.name.split("=")[1] for p in embed.glob("ingest_date=*"))]
                start = time.perf_counter()
                merged = pca.load_moments(store, days, {}, set(days))
                from_moments = pca.model_from_moments(merged, None, 0.95)
                moments_s = time.perf_counter() - start
                start = time.perf_counter()
                fit_rows = store.features(days).filter(~drift.held_out())  # what a fit reads: all but the held-out
                reread = covariance.column_moments(fit_rows, "features", embedding.FEATURE_SIZE)
                from_rows = pca.model_from_moments(reread, None, 0.95)
                rows_s = time.perf_counter() - start
                assert from_moments.pc.numCols == from_rows.pc.numCols
                refits = {
                    "rows": merged.count,
                    "dates": len(days),
                    "fit_from_stored_moments_seconds": round(moments_s, 2),
                    "fit_rereading_rows_seconds": round(rows_s, 2),
                    "speedup": round(rows_s / moments_s, 1),
                }
                start = time.perf_counter()
                forced = pca.run(spark, str(embed), str(out), str(model), variance=0.95, refit="always")
                refits["whole_refit_seconds"] = round(time.perf_counter() - start, 2)  # fit + every row re-projected
                refits["whole_refit_rows"] = forced["rows_projected"]
                print(json.dumps(refits), flush=True)
    spark.stop()

    small, large = nights[0], nights[-1]
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nights": nights,
        "night_ratio_large_vs_small_history": round(large["seconds"] / small["seconds"], 2),
        "refit": refits,
        "machine": {
            "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"pca night of {args.night}: {small['seconds']} s over {small['history']:,} rows, {large['seconds']} s over "
        f"{large['history']:,} (x{result['night_ratio_large_vs_small_history']}); fit from stored moments "
        f"{refits.get('fit_from_stored_moments_seconds')} s vs re-reading the rows "
        f"{refits.get('fit_rereading_rows_seconds')} s -> {args.output}"
    )


if __name__ == "__main__":
    main()
