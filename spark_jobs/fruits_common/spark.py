"""Spark session and command-line plumbing shared by the jobs."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import json
import logging
import shutil
import sys
import tempfile
import zipimport
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pyspark.sql import SparkSession

from fruits_common.errors import JobError

log = logging.getLogger("fruits")
SHARED_PACKAGE = "fruits_common"


def get_spark(app_name: str) -> SparkSession:
    """The job's session: master and resources come from spark-submit (``local[*]`` when run directly)."""
    builder = SparkSession.builder.appName(app_name)
    if not SparkSession.getActiveSession():
        builder = builder.config("spark.sql.session.timeZone", "UTC")
    spark = builder.getOrCreate()
    ship_shared_package(spark)
    return spark


def ship_shared_package(spark: SparkSession) -> str | None:
    """Send this package to the executors when spark-submit did not (``--py-files``); returns the zip it sent.

    On EMR (and in the DAG) ``--py-files fruits_common.zip`` ships it, and the driver imports it from that zip. A bare
    ``spark-submit spark_jobs/clean.py ...`` finds it on the driver only (the script's folder is on ``sys.path``),
    so the job zips the package it imported and adds it, as ``--py-files`` would have.
    """
    import fruits_common

    py_files = spark.sparkContext.getConf().get("spark.submit.pyFiles", "") or ""
    shipped = any(Path(f).name == f"{SHARED_PACKAGE}.zip" for f in py_files.split(",") if f)
    if shipped or isinstance(getattr(fruits_common, "__loader__", None), zipimport.zipimporter):
        return None  # spark-submit distributes it already
    package = Path(fruits_common.__file__).parent
    folder = Path(tempfile.mkdtemp(prefix="fruits-common-"))
    archive = shutil.make_archive(str(folder / package.name), "zip", root_dir=package.parent, base_dir=package.name)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    spark.sparkContext.addPyFile(archive)
    log.info("shipped %s to the executors as %s", package, archive)
    return archive


@contextlib.contextmanager
def session_conf(spark: SparkSession, values: dict[str, str]) -> Iterator[None]:
    """Set SQL settings for the duration of a job, then restore them (tests run several jobs in one session)."""
    previous = {key: spark.conf.get(key, None) for key in values}
    for key, value in values.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def run_date(value: str) -> dt.date:
    """argparse type for ``YYYY-MM-DD``."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date in YYYY-MM-DD form: {value!r}") from None


def positive_int(value: str) -> int:
    """argparse type for an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {number}")
    return number


def fraction(value: str) -> float:
    """argparse type for a number in (0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]: {number}")
    return number


def main(
    app_name: str,
    parser: argparse.ArgumentParser,
    job: Callable[..., dict],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse arguments, run ``job(spark, **args)`` and turn a :class:`JobError` into a clear exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    spark = get_spark(app_name)
    try:
        result = job(spark, **vars(args))
        # One JSON line: `make run` (tools/local_run.py) reads the job's key figures from it.
        log.info("%s finished: %s", app_name, json.dumps(result, default=str))
        return 0
    except JobError as exc:
        print(f"{app_name}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
