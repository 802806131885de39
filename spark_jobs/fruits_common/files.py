"""Reading input files from inside a Spark task (Python worker), by the paths Spark's listing reports.

clean lists the uploads on the executors (:mod:`fruits_common.listing`) and each task reads its photos here,
one at a time: the originals (2-4 MB phone photos) never travel through the JVM, Arrow and a Spark row, and a
task holds one of them at once whatever the batch. Local paths (``file:/...``) are plain files; ``s3://``
(EMRFS), ``s3a://`` and ``s3n://`` paths are read with PyArrow's S3 filesystem, which takes its credentials from
the standard AWS chain (on EMR: the nodes' instance profile) and honours ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` (an S3-compatible endpoint, such as the test suite's moto server).
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

S3_SCHEMES = ("s3", "s3a", "s3n")
# The length a listing gives an entry that is not a regular file it can read (a dangling link, a socket): clean
# records it as unreadable instead of dropping it.
NOT_A_FILE = -1
# Tries of one request by PyArrow's S3 client (its standard retry strategy, with backoff).
S3_CLIENT_ATTEMPTS = 10
# Reads of one object from S3 before a transient failure fails the task (which Spark then retries).
S3_READ_ATTEMPTS = 5
# What PyArrow's S3 errors say when another try may succeed.
S3_TRANSIENT_ERRORS = (
    "NETWORK_CONNECTION",
    "INTERNAL_FAILURE",
    "SLOW_DOWN",
    "SERVICE_UNAVAILABLE",
    "THROTTLING",
    "REQUEST_TIMEOUT",
    "Failed to flush response stream",
    "curlCode",
)


def read_bytes(path: str) -> bytes:
    """The whole content of the file at ``path`` (``file:/a/b.jpg``, ``/a/b.jpg`` or ``s3://bucket/key``).

    Raises ``OSError`` (``FileNotFoundError`` included) when it cannot be read, and :class:`S3ReadError` when S3
    kept failing transiently (throttled, connection lost) after :data:`S3_READ_ATTEMPTS` tries.
    """
    scheme, _, rest = path.partition(":")
    if scheme in S3_SCHEMES:
        bucket, _, key = rest.removeprefix("//").partition("/")
        return _read_s3(bucket, key)
    if scheme == "file":
        path = "/" + rest.lstrip("/")  # file:/a, file:///a -> /a (Spark reports paths unencoded)
    elif scheme and len(scheme) > 1 and "/" not in scheme:
        raise OSError(f"cannot read {path!r} from a Spark task: scheme {scheme!r} is not supported")
    with open(path, "rb") as stream:
        return stream.read()


class S3ReadError(RuntimeError):
    """S3 failed transiently on every try. Not an ``OSError`` on purpose: the file is not unreadable, the task
    fails and Spark runs it again (clean records ``OSError`` as a rejection, which later runs would skip)."""


def _transient(exc: OSError) -> bool:
    """Whether an error of PyArrow's S3 client is worth another try: throttling, 5xx, a connection lost mid-answer
    (``Failed to flush response stream``), as opposed to a missing key or a denied access."""
    text = str(exc)
    return not isinstance(exc, FileNotFoundError | PermissionError) and any(
        marker in text for marker in S3_TRANSIENT_ERRORS
    )


def _read_s3(bucket: str, key: str) -> bytes:
    """The object's bytes, tried again with jittered backoff while S3 fails transiently. The client's own retries
    cover the request; these cover the response stream breaking after its headers came, which it does not retry."""
    for attempt in range(1, S3_READ_ATTEMPTS + 1):
        try:
            with _s3(bucket).open_input_stream(f"{bucket}/{key}") as stream:
                return stream.read()
        except OSError as exc:
            if not _transient(exc):
                raise
            if attempt == S3_READ_ATTEMPTS:
                raise S3ReadError(f"s3://{bucket}/{key}: {exc} (after {attempt} tries)") from exc
            time.sleep(min(5.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


@functools.cache
def _s3(bucket: str):
    """One PyArrow S3 filesystem per bucket and worker process, in the bucket's region."""
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    retries = fs.AwsStandardS3RetryStrategy(max_attempts=S3_CLIENT_ATTEMPTS)  # throttling, 5xx of a busy prefix
    if endpoint:
        parts = urlsplit(endpoint)
        return fs.S3FileSystem(
            endpoint_override=parts.netloc,
            scheme=parts.scheme or "https",
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            retry_strategy=retries,
        )
    return fs.S3FileSystem(region=fs.resolve_s3_region(bucket), retry_strategy=retries)


def locate(uri: str) -> tuple[object, str, Callable[[str], str]]:
    """The PyArrow filesystem holding ``uri``, the path in it, and the function that turns a path in that
    filesystem back into a URI in the form Spark reports (``file:/a b.jpg``, ``s3://bucket/key``)."""
    from pyarrow import fs

    scheme, _, rest = uri.partition(":")
    if scheme in S3_SCHEMES:
        path = rest.removeprefix("//").rstrip("/")
        return _s3(path.partition("/")[0]), path, lambda p: f"{scheme}://{p}"
    if scheme == "file":
        path = "/" + rest.lstrip("/")
    elif scheme and len(scheme) > 1 and "/" not in scheme:
        raise OSError(f"cannot list {uri!r}: scheme {scheme!r} is not supported")
    else:
        path = uri
    return fs.LocalFileSystem(), path.rstrip("/") or "/", lambda p: f"file:{p}"


def is_s3(uri: str) -> bool:
    """Whether ``uri`` is an S3 URI (``s3://``, ``s3a://``, ``s3n://``)."""
    return uri.partition(":")[0] in S3_SCHEMES


def s3_folder_exists(uri: str) -> bool:
    """Whether anything is stored under the S3 folder (prefix) or at the key ``uri``; one request."""
    filesystem, path, _ = locate(uri)
    return filesystem.get_file_info(path).type != _file_type().NotFound


def _file_type():
    from pyarrow import fs

    return fs.FileType


def list_folder(uri: str, recursive: bool) -> tuple[list[tuple[str, int]], list[str]]:
    """``([(file URI, length)], [folder URI])`` under the folder ``uri``: every name, hidden ones (``_x``, ``.x``)
    included; an entry that is neither a file nor a folder gets length :data:`NOT_A_FILE`. Missing: empty lists.

    One listing call (S3: ListObjectsV2 pages of 1,000 keys; recursive is one flat listing of the prefix).
    """
    filesystem, path, to_uri = locate(uri)
    if isinstance(filesystem, _local_type()):
        return _list_local(path, recursive)
    from pyarrow import fs

    selector = fs.FileSelector(path, recursive=recursive, allow_not_found=True)
    found, folders = [], []
    for info in filesystem.get_file_info(selector):
        if info.type == fs.FileType.Directory:
            folders.append(to_uri(info.path))
        else:
            found.append((to_uri(info.path), int(info.size) if info.type == fs.FileType.File else NOT_A_FILE))
    return found, folders


def _local_type() -> type:
    from pyarrow import fs

    return fs.LocalFileSystem


def _list_local(path: str, recursive: bool) -> tuple[list[tuple[str, int]], list[str]]:
    """A local folder with ``os`` (PyArrow's local listing leaves dangling links out without a word)."""
    found, folders = [], []
    if not os.path.isdir(path):
        return found, folders
    walk = os.walk(path, followlinks=True)  # links to folders are followed, as Hadoop's local filesystem does
    for top, names, file_names in walk if recursive else [next(walk)]:
        folders.extend(f"file:{os.path.join(top, n)}" for n in names)
        for name in file_names:
            full = os.path.join(top, name)
            try:
                info = os.stat(full)
            except OSError:
                found.append((f"file:{full}", NOT_A_FILE))
                continue
            found.append((f"file:{full}", info.st_size if os.path.isfile(full) else NOT_A_FILE))
    return found, folders
