"""Reading input files from inside a Spark task (Python worker), by the paths Spark's listing reports.

clean lists the uploads with Spark (:func:`fruits_common.storage.list_files`) and each task reads its photos here,
one at a time: the originals (2-4 MB phone photos) never travel through the JVM, Arrow and a Spark row, and a
task holds one of them at once whatever the batch. Local paths (``file:/...``) are plain files; ``s3://``
(EMRFS), ``s3a://`` and ``s3n://`` paths are read with PyArrow's S3 filesystem, which takes its credentials from
the standard AWS chain (on EMR: the nodes' instance profile) and honours ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` (an S3-compatible endpoint, such as the test suite's moto server).
"""

from __future__ import annotations

import functools
import os
from urllib.parse import urlsplit

S3_SCHEMES = ("s3", "s3a", "s3n")


def read_bytes(path: str) -> bytes:
    """The whole content of the file at ``path`` (``file:/a/b.jpg``, ``/a/b.jpg`` or ``s3://bucket/key``).

    Raises ``OSError`` (``FileNotFoundError`` included) when it cannot be read.
    """
    scheme, _, rest = path.partition(":")
    if scheme in S3_SCHEMES:
        bucket, _, key = rest.removeprefix("//").partition("/")
        with _s3(bucket).open_input_stream(f"{bucket}/{key}") as stream:
            return stream.read()
    if scheme == "file":
        path = "/" + rest.lstrip("/")  # file:/a, file:///a -> /a (Spark reports paths unencoded)
    elif scheme and len(scheme) > 1 and "/" not in scheme:
        raise OSError(f"cannot read {path!r} from a Spark task: scheme {scheme!r} is not supported")
    with open(path, "rb") as stream:
        return stream.read()


@functools.cache
def _s3(bucket: str):
    """One PyArrow S3 filesystem per bucket and worker process, in the bucket's region."""
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    retries = fs.AwsStandardS3RetryStrategy(max_attempts=10)  # throttling and 5xx of a busy prefix
    if endpoint:
        parts = urlsplit(endpoint)
        return fs.S3FileSystem(
            endpoint_override=parts.netloc,
            scheme=parts.scheme or "https",
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            retry_strategy=retries,
        )
    return fs.S3FileSystem(region=fs.resolve_s3_region(bucket), retry_strategy=retries)
