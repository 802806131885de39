"""Schemas of the intermediate datasets: the contract between the jobs (and with the product team)."""

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DateType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

PARTITION_COLUMN = "ingest_date"
# Written by pca next to its output, read by report ('_' prefix: Parquet readers skip it).
PCA_SUMMARY_FILE = "_summary.json"

# stages/clean/ingest_date=YYYY-MM-DD/: valid, de-duplicated images. `content` is the normalized image (JPEG or PNG,
# upright, longest side at most clean's --max-side; the original's bytes when it already was); the other columns
# describe the original, which stays where it was uploaded (`path`). width/height are the original's, upright;
# orientation its EXIF orientation tag (1: stored upright).
CLEAN = StructType(
    [
        StructField("image_id", StringType(), False),
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("width", IntegerType(), False),
        StructField("height", IntegerType(), False),
        StructField("format", StringType(), False),
        StructField("size_bytes", LongType(), False),
        StructField("orientation", IntegerType(), False),
        StructField("content", BinaryType(), False),
        StructField(PARTITION_COLUMN, DateType(), False),
    ]
)

# stages/rejected/ingest_date=YYYY-MM-DD/: every input file that was not kept, and why.
REJECTED = StructType(
    [
        StructField("image_id", StringType(), True),
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("size_bytes", LongType(), False),
        StructField("reason", StringType(), False),
        StructField("detail", StringType(), True),
        StructField(PARTITION_COLUMN, DateType(), False),
    ]
)

# stages/embed/: MobileNetV2 features, 1,280 float32 per image.
EMBED = StructType(
    [
        StructField("image_id", StringType(), False),
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("features", ArrayType(FloatType(), False), False),
        StructField(PARTITION_COLUMN, DateType(), False),
    ]
)

# stages/pca/pca_version=vNNNN/ingest_date=YYYY-MM-DD/: the product's output, the features projected onto one
# version of the PCA basis (models/pca/CURRENT names the version to read).
VERSION_COLUMN = "pca_version"
PCA = StructType(
    [
        StructField("image_id", StringType(), False),
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("pca", ArrayType(FloatType(), False), False),
        StructField(VERSION_COLUMN, StringType(), False),
        StructField(PARTITION_COLUMN, DateType(), False),
    ]
)


def without_partition(schema: StructType) -> StructType:
    """The schema of the files inside one partition folder (the partition values live in the path)."""
    return StructType([f for f in schema.fields if f.name not in (PARTITION_COLUMN, VERSION_COLUMN)])
