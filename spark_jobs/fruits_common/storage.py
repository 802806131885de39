"""Small file operations on any Hadoop path (local folder, file://, s3:// on EMR) through Spark's JVM.

The jobs use these for what DataFrames don't cover: checking that a path exists and writing small
JSON/PNG files next to their outputs, with the same credentials and connectors as Spark itself.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from urllib.parse import unquote

from pyspark.sql import SparkSession


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
    """Whether ``uri`` is a folder holding at least one Parquet file (at any depth)."""
    fs, path = _hadoop_path(spark, uri)
    if not fs.exists(path):
        return False
    files = fs.listFiles(path, True)
    while files.hasNext():
        if files.next().getPath().getName().endswith(".parquet"):
            return True
    return False


def list_files(spark: SparkSession, uris: list[str]) -> list[tuple[str, int]]:
    """``(qualified path, length)`` of every file under the folders ``uris``, recursively, skipping hidden ones.

    Listed by Spark's file index in the JVM (in parallel when there are many folders) and brought to the driver
    in one transfer: no file is read (the scan's ``content`` column is pruned). Hidden means what Spark's file
    sources skip: a name under the folders that starts with ``_`` or ``.``. Paths are in the form Spark reports
    them (``file:/abs/a b.jpg``, ``s3://bucket/key``), sorted.
    """
    if not uris:
        return []
    index = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(uris)
    sized = {row["path"]: int(row["length"]) for row in index.select("path", "length").collect()}
    # The scan leaves out empty files; the index itself lists them (as URIs: file:///a%20b.jpg).
    listed = index._jdf.inputFiles()
    if len(listed) != len(sized):
        # One call, not one per file (URIs hold no raw newline; py4j can't pass a String[] to String.join).
        joined = spark.sparkContext._jvm.org.apache.hadoop.util.StringUtils.join("\n", listed)
        for uri in joined.split("\n"):
            sized.setdefault(_path_string(uri), 0)
    return sorted(sized.items())


def _path_string(uri: str) -> str:
    """A file index URI (``file:///a%20b``) as Spark's scans report the path (``file:/a b``)."""
    path = unquote(uri)
    return "file:/" + path[len("file:///") :] if path.startswith("file:///") else path


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
    """The values of the ``column=value`` folders directly under ``uri`` (sorted; none when it does not exist).

    A partition folder counts only when it holds a Parquet file: an empty folder left by a job that failed before
    writing anything is not a partition.
    """
    fs, path = _hadoop_path(spark, uri)
    if not fs.exists(path):
        return []
    values = []
    for status in fs.listStatus(path):
        name = status.getPath().getName()
        if status.isDirectory() and name.startswith(f"{column}="):
            files = [f.getPath().getName() for f in fs.listStatus(status.getPath())]
            if any(f.endswith(".parquet") for f in files):
                values.append(name.split("=", 1)[1])
    return sorted(values)


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
