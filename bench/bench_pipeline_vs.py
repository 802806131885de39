"""The whole pipeline (clean, embed, PCA) on the same Fruits-360 images, this tree against a baseline commit, in one
run on one machine: the only fair way to say whether a change made the pipeline slower.

    python bench/bench_pipeline_vs.py --baseline <git ref> [--images 4000] [--rounds 2]

The baseline is checked out into a temporary git worktree; each side runs in a fresh Python process (its own Spark
session, cold Python workers, as a nightly run), alternating, ``--rounds`` times. Prints the seconds of each run
and the ratio of the medians, and writes ``bench/results/pipeline_vs.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run inside each side's tree: its own jobs, the same images and weights; prints the pipeline's seconds.
RUNNER = """
import datetime as dt, os, sys, time
jobs = sys.argv[1]
sys.path.insert(0, jobs)
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYTHONPATH"] = jobs
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[*]").config("spark.driver.memory", "4g")
         .config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
import clean, embed, pca
images, work, weights = sys.argv[2], sys.argv[3], sys.argv[4]
start = time.perf_counter()
clean.run(spark, images, f"{work}/clean", f"{work}/rejected", dt.date(2026, 1, 1))
embed.run(spark, f"{work}/clean", f"{work}/embed", weights)
pca.run(spark, f"{work}/embed", f"{work}/pca", f"{work}/model", variance=0.95)
print("SECONDS", time.perf_counter() - start)
spark.stop()
"""


def run_side(jobs: Path, images: Path, weights: str) -> float:
    with tempfile.TemporaryDirectory(prefix="fruits-vs-") as work:
        result = subprocess.run(
            [sys.executable, "-c", RUNNER, str(jobs), str(images), work, weights],
            capture_output=True,
            text=True,
            check=False,
        )
    seconds = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("SECONDS")]
    if result.returncode or not seconds:
        raise SystemExit(f"the run in {jobs} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return float(seconds[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="git ref to compare with (e.g. a commit before a change)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "fruits-360-sample"))
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "pipeline_vs.json"))
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "bench"))
    from bench_embed import copy_images

    with tempfile.TemporaryDirectory(prefix="fruits-vs-tree-") as tmp:
        baseline = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline), args.baseline],
                       check=True, capture_output=True)  # fmt: skip
        try:
            images = Path(tmp) / "images"
            copy_images(Path(args.data), images, args.images)
            times: dict[str, list[float]] = {"baseline": [], "this tree": []}
            for _ in range(args.rounds):
                for side, jobs in (("baseline", baseline / "spark_jobs"), ("this tree", REPO / "spark_jobs")):
                    times[side].append(round(run_side(jobs, images, args.weights), 1))
                    print(side, times[side][-1], flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=False)
            shutil.rmtree(baseline, ignore_errors=True)

    medians = {side: statistics.median(values) for side, values in times.items()}
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "baseline": args.baseline,
        "images": args.images,
        "seconds": times,
        "ratio_this_vs_baseline": round(medians["this tree"] / medians["baseline"], 2),
        "machine": {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"pipeline on {args.images} images: baseline {medians['baseline']} s, this tree {medians['this tree']} s "
          f"(x{result['ratio_this_vs_baseline']}) -> {args.output}")  # fmt: skip


if __name__ == "__main__":
    main()
