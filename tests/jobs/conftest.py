"""Fixtures for the Spark job tests: one local[2] session, and the whole pipeline run once on the sample."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from repo import REPO_ROOT

RUN_DATE = dt.date(2026, 11, 24)


@pytest.fixture(scope="session")
def spark():
    """A real local Spark with 2 cores; Python workers import the jobs' shared package like on a cluster."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT / "spark_jobs"), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("fruits-tests")
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    # py4j logs at INFO while the interpreter shuts down, after pytest has closed its capture streams.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    yield session
    session.stop()


@dataclass
class PipelineRun:
    """Where one run of clean -> embed -> pca on the whole sample wrote its outputs."""

    root: Path
    clean: dict
    embed: dict
    pca: dict

    @property
    def paths(self) -> dict[str, str]:
        return {name: str(self.root / name) for name in ("clean", "rejected", "embed", "pca", "model")}


@pytest.fixture(scope="session")
def full_run(spark, sample_dir, weights_file, tmp_path_factory) -> PipelineRun:
    """All 4,800 real sample images through the three jobs once (the slow part of the suite)."""
    import clean
    import embed
    import pca

    root = tmp_path_factory.mktemp("full_run")
    # The images only: the sample's own README.md would be rejected (not_an_image), as any other file would be.
    images = root / "sample"
    for split in ("Training", "Test"):
        shutil.copytree(sample_dir / split, images / split)
    clean_summary = clean.run(spark, str(images), str(root / "clean"), str(root / "rejected"), RUN_DATE)
    embed_summary = embed.run(spark, str(root / "clean"), str(root / "embed"), str(weights_file))
    pca_summary = pca.run(spark, str(root / "embed"), str(root / "pca"), str(root / "model"), variance=0.9)
    return PipelineRun(root, clean_summary, embed_summary, pca_summary)
