"""Fixtures of the cluster tests: one Spark standalone cluster for the session, the uploads, and the fault-free run.

* ``spark_cluster``: a master and two workers (1 core, 1.5 GB each) as processes of their own; a test that kills a
  worker gets a fresh one before the next test (``cluster``).
* ``uploads``: real sample photos (a few per label), a duplicate and one bad file per rejection reason.
* ``local_run``: the four jobs on ``local[2]`` over those uploads, the reference every cluster run is compared with.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_jobs import Run, new_run, run_jobs
from spark_cluster import SparkCluster

from bad_images import write_bad_files
from sample_images import copy_images

PER_LABEL = 8  # 8 labels: 64 photos, enough tasks' worth for a fault to land in the middle of a job


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory) -> Iterator[SparkCluster]:
    """The session's standalone cluster (stopped by PID at the end, also when a test failed)."""
    cluster = SparkCluster(tmp_path_factory.mktemp("spark-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def cluster(spark_cluster) -> Iterator[SparkCluster]:
    """The cluster with all its workers; whatever a test killed is replaced after it."""
    spark_cluster.replace_lost_workers()
    yield spark_cluster
    spark_cluster.replace_lost_workers()


@pytest.fixture(scope="session")
def uploads(tmp_path_factory, sample_dir) -> Path:
    """Real photos in the Fruits-360 layout, a duplicate of one of them, and the bad files clean rejects."""
    folder = tmp_path_factory.mktemp("uploads")
    copied = copy_images(sample_dir, folder, per_label=PER_LABEL, splits=("Training",))
    shutil.copy(copied[0], copied[0].with_name("copy_of_" + copied[0].name))
    write_bad_files(folder / "Training" / "Unsorted", copied[0])
    return folder


@pytest.fixture(scope="session")
def local_run(tmp_path_factory, uploads, weights_file) -> Run:
    """The fault-free reference: the four jobs on ``local[2]``."""
    run = new_run(tmp_path_factory.mktemp("local-run"), uploads, weights_file)
    run_jobs(run.plan, ["clean", "embed", "pca", "report"], "local[2]", run.root / "logs")
    return run
