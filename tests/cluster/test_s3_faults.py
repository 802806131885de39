"""clean's S3 reads behind the fault-injecting proxy (no Spark): throttling and lost connections are tried
again; S3 failing on every try fails the task (Spark then retries it) instead of rejecting the photo."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import boto3
import pytest
from s3_faults import FaultyS3Proxy

from fruits_common import files
from repo import SAMPLE_DIR

PHOTO = next(iter(sorted(SAMPLE_DIR.glob("Training/*/*.jpg"))))
BUCKET = "fruits-faults"
URI = f"s3://{BUCKET}/uploads/2026-05-01/IMG_0001.jpg"


@pytest.fixture
def proxied(moto_endpoint, monkeypatch) -> Iterator[Callable[..., FaultyS3Proxy]]:
    """A photo in moto; ``proxied(**faults)`` is a proxy in front of it that clean's S3 reads go through."""
    s3 = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=URI.split("/", 3)[3], Body=PHOTO.read_bytes())
    for name, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    started: list[FaultyS3Proxy] = []

    def start(**faults: int) -> FaultyS3Proxy:
        proxy = FaultyS3Proxy(moto_endpoint, **faults).__enter__()
        started.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        files._s3.cache_clear()
        return proxy

    yield start
    for proxy in started:
        proxy.__exit__(None, None, None)
    files._s3.cache_clear()


def test_a_read_goes_through_throttling_and_dropped_connections(proxied):
    proxy = proxied(slowdown_every=2, drop_every=3)
    for _ in range(5):
        assert files.read_bytes(URI) == PHOTO.read_bytes()
    assert proxy.counts["slowdown"] and proxy.counts["dropped"], proxy.counts


def test_s3_failing_on_every_try_fails_the_task_instead_of_rejecting_the_photo(proxied, monkeypatch):
    # Fewer tries than in production (each of the client's own waits longer than the last): the same path, faster.
    monkeypatch.setattr(files, "S3_READ_ATTEMPTS", 2)
    monkeypatch.setattr(files, "S3_CLIENT_ATTEMPTS", 2)
    proxied(drop_every=1)  # every connection is dropped
    with pytest.raises(files.S3ReadError, match="after 2 tries") as caught:
        files.read_bytes(URI)
    assert not isinstance(caught.value, OSError)  # clean records OSErrors as unreadable files


def test_a_missing_key_is_not_tried_again(proxied):
    proxy = proxied(slowdown_every=1000)
    with pytest.raises(FileNotFoundError):
        files.read_bytes(URI.replace("IMG_0001", "gone"))
    assert proxy.counts["forwarded"] <= 2, proxy.counts
