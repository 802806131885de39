"""Listing an upload tree on the executors: every file under some folders, as a DataFrame of ``(path, length)``.

The driver lists the first levels of the tree (one call per folder, until there are enough sub-folders to spread),
and each executor task lists its sub-folders recursively with :func:`fruits_common.files.list_folder` (PyArrow's S3
filesystem, or the local disk). So a reload over millions of uploads never holds their paths on the driver, and
nothing hides a name: unlike Spark's file sources, ``_DSC0001.JPG`` and ``.hidden`` are listed, and an entry that
is not a regular file is listed with length :data:`fruits_common.files.NOT_A_FILE` for clean to record.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from fruits_common import files

LISTING_SCHEMA = "path string, length long"
# The driver expands the tree's first levels until it has this many folders per core to hand out (or hits the
# depth limit): enough tasks to balance, few enough listing calls on the driver.
FOLDERS_PER_CORE = 4
MAX_DRIVER_DEPTH = 3


def list_files(spark: SparkSession, roots: list[str], cores: int) -> DataFrame:
    """Every file under the folders ``roots`` (URIs as Spark reports them), recursively, hidden names included.

    Files directly in the first levels come from the driver's listing; every deeper folder is listed by an
    executor task. ``cores`` sizes the listing tasks.
    """
    shallow: list[tuple[str, int]] = []
    # A root inside another is listed with it: no path is listed twice (and no shuffle is needed to dedupe).
    folders = [r for r in dict.fromkeys(roots) if not any(r.startswith(o.rstrip("/") + "/") for o in roots if o != r)]
    target = FOLDERS_PER_CORE * max(1, cores)
    for _ in range(MAX_DRIVER_DEPTH):
        if len(folders) >= target:
            break
        deeper: list[str] = []
        for folder in folders:
            found, children = files.list_folder(folder, recursive=False)
            shallow.extend(found)
            deeper.extend(children)
        folders = deeper
        if not folders:
            break
    frames = []
    if shallow:
        frames.append(spark.createDataFrame(shallow, LISTING_SCHEMA))
    if folders:
        tasks = spark.sparkContext.parallelize(sorted(folders), min(len(folders), target))
        listed = tasks.flatMap(lambda folder: files.list_folder(folder, recursive=True)[0])
        frames.append(spark.createDataFrame(listed, LISTING_SCHEMA))
    if not frames:
        return spark.createDataFrame([], LISTING_SCHEMA)
    return frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
