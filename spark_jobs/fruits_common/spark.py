"""Spark session and command-line plumbing shared by the jobs."""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from typing import Callable, Sequence

from pyspark.sql import SparkSession

from fruits_common.errors import JobError

log = logging.getLogger("fruits")


def get_spark(app_name: str) -> SparkSession:
    """The job's session: master and resources come from spark-submit (``local[*]`` when run directly)."""
    builder = SparkSession.builder.appName(app_name)
    if not SparkSession.getActiveSession():
        builder = builder.config("spark.sql.session.timeZone", "UTC")
    return builder.getOrCreate()


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
        log.info("%s finished: %s", app_name, result)
        return 0
    except JobError as exc:
        print(f"{app_name}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
