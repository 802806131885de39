"""Small file operations on any Hadoop path (local folder, file://, s3:// on EMR) through Spark's JVM, and listings.

The jobs use these for what DataFrames don't cover: checking that a path exists and writing small
JSON/PNG files next to their outputs, with the same credentials and connectors as Spark itself. Listings go
through PyArrow (:mod:`fruits_common.files`): one call for a whole tree, where Hadoop's API through py4j costs a
round trip per file.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from pyspark.sql import SparkSession

from fruits_common import files


def _hadoop_path(spark: SparkSession, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, path


def qualify(spark: SparkSession, uri: str) -> str:
    """The fully qualified form of ``uri`` (``file:/abs/dir`` or ``s3://bucket/key``), as Spark reports paths."""
    fs, path = _hadoop_path(spark, uri)
    return fs.makeQualified(path).toString().rstrip("/")


def exists(spark: SparkSession, uri: str) -> bool:
    """Whether a file or folder exists at ``uri``."""
    fs, path = _hadoop_path(spark, uri)
    return bool(fs.exists(path))


def has_parquet(spark: SparkSession, uri: str) -> bool:
    """Whether ``uri`` is a folder holding at least one Parquet file (at any depth); one listing call."""
    return any(name.endswith(".parquet") for name, _ in files.list_folder(qualify(spark, uri), recursive=True)[0])


def partition_files(uri: str, column: str) -> dict[str, list[str]]:
    """The file names (hidden ones included) in each ``column=value`` folder directly under ``uri``, by value.

    One recursive listing of ``uri`` (on S3, one ListObjectsV2 page per 1,000 files), not a call per folder: what a
    job's look-up of its partitions costs grows with the files of the dataset, never with round trips.
    """
    filesystem, path, to_uri = files.locate(uri)
    base = to_uri(path).rstrip("/") + "/"
    by_value: dict[str, list[str]] = {}
    for found, _ in files.list_folder(uri, recursive=True)[0]:
        parts = found[len(base) :].split("/") if found.startswith(base) else []
        if len(parts) == 2 and parts[0].startswith(f"{column}="):
            by_value.setdefault(parts[0].split("=", 1)[1], []).append(parts[1])
    return dict(sorted(by_value.items()))


def partitions(uri: str, column: str) -> list[str]:
    """The values of the ``column=value`` folders directly under ``uri`` that hold a Parquet file (sorted; none
    when it does not exist): an empty folder left by a job that failed before writing is not a partition."""
    return [v for v, names in partition_files(uri, column).items() if any(n.endswith(".parquet") for n in names)]


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    """Write (replace) a file from the driver.

    Through a local file and Hadoop's copy: handing megabytes to the JVM through py4j is slow (a 13 MB covariance
    took ~1 s that way).
    """
    with tempfile.TemporaryDirectory(prefix="fruits-write-") as folder:
        local = Path(folder) / "data"
        local.write_bytes(data)
        copy_from_local(spark, local, uri)


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    """Read a file on the driver (through a local copy, for the same reason as :func:`write_bytes`)."""
    with tempfile.TemporaryDirectory(prefix="fruits-read-") as folder:
        local = Path(folder) / "data"
        copy_to_local(spark, uri, local)
        return local.read_bytes()


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    """Write (replace) a small UTF-8 text file from the driver."""
    write_bytes(spark, uri, text.encode("utf-8"))


def read_text(spark: SparkSession, uri: str) -> str:
    """Read a small UTF-8 text file on the driver."""
    fs, path = _hadoop_path(spark, uri)
    jvm = spark.sparkContext._jvm
    stream = fs.open(path)
    try:
        return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def copy_to_local(spark: SparkSession, uri: str, local_path) -> str:
    """Copy a file from any Hadoop path to the driver's disk; returns the local path."""
    fs, path = _hadoop_path(spark, uri)
    jvm = spark.sparkContext._jvm
    fs.copyToLocalFile(False, path, jvm.org.apache.hadoop.fs.Path(str(local_path)), True)
    return str(local_path)


def copy_from_local(spark: SparkSession, local_path, uri: str) -> None:
    """Copy a file from the driver's disk to any Hadoop path (replacing it)."""
    fs, path = _hadoop_path(spark, uri)
    jvm = spark.sparkContext._jvm
    fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path(str(local_path)), path)


def list_partitions(spark: SparkSession, uri: str, column: str) -> list[str]:
    """:func:`partitions` of ``uri`` in any form Spark takes (a bare local path included)."""
    return partitions(qualify(spark, uri), column)


def list_folders(spark: SparkSession, uri: str) -> list[str]:
    """The names of the folders directly under ``uri`` (sorted; none when it does not exist)."""
    fs, path = _hadoop_path(spark, uri)
    if not fs.exists(path):
        return []
    return sorted(s.getPath().getName() for s in fs.listStatus(path) if s.isDirectory())


def delete(spark: SparkSession, uri: str) -> bool:
    """Delete a file or a folder (recursively); returns whether anything was there."""
    fs, path = _hadoop_path(spark, uri)
    return bool(fs.delete(path, True))


def replace_text(spark: SparkSession, uri: str, text: str) -> None:
    """Replace a small text file so that a reader sees the old content or the new one, never a mix or nothing.

    On a local disk: write a hidden file beside it, then rename it over (POSIX rename is atomic). On an object
    store (S3), a PUT is atomic already: the object is replaced whole when the upload completes.
    """
    fs, path = _hadoop_path(spark, uri)
    if fs.getUri().getScheme() == "file":
        local = Path(fs.pathToFile(path).getPath())
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.{uuid.uuid4().hex}.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, local)
    else:
        write_text(spark, uri, text)


def join(base: str, *parts: str) -> str:
    """Join URI parts with single slashes (``s3://b/stages/`` + ``clean`` -> ``s3://b/stages/clean``)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
