"""clean's readers inside a Spark task: a file by the path Spark listed, locally and from S3 (a moto server), and
what a file that cannot be read becomes (a rejection, not a failed task)."""

from __future__ import annotations

import boto3
import pandas as pd
import pytest

import clean
from fruits_common import files, images
from repo import SAMPLE_DIR

PHOTO = next(iter(sorted(SAMPLE_DIR.glob("Training/*/*.jpg"))))


def test_local_paths_as_spark_lists_them(tmp_path):
    target = tmp_path / "a b é.jpg"  # Spark reports such paths unencoded: file:/.../a b é.jpg
    target.write_bytes(PHOTO.read_bytes())
    for path in (f"file:{target}", f"file://{target}", str(target)):
        assert files.read_bytes(path) == PHOTO.read_bytes()


def test_s3_paths_are_read_with_the_standard_aws_settings(moto_endpoint, monkeypatch):
    s3 = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    s3.create_bucket(Bucket="fruits-uploads")
    s3.put_object(Bucket="fruits-uploads", Key="uploads/2026-05-01/IMG 0001.jpg", Body=PHOTO.read_bytes())
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    files._s3.cache_clear()
    try:
        for scheme in ("s3", "s3a"):
            assert files.read_bytes(f"{scheme}://fruits-uploads/uploads/2026-05-01/IMG 0001.jpg") == PHOTO.read_bytes()
        with pytest.raises(FileNotFoundError):
            files.read_bytes("s3://fruits-uploads/uploads/2026-05-01/gone.jpg")
    finally:
        files._s3.cache_clear()


def test_an_unsupported_scheme_is_an_os_error():
    with pytest.raises(OSError, match="not supported"):
        files.read_bytes("hdfs://namenode/uploads/x.jpg")


def test_a_file_gone_before_its_task_reads_it_is_rejected_as_unreadable(tmp_path):
    kept = tmp_path / "Training" / "Apple" / "kept.jpg"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(PHOTO.read_bytes())
    gone = kept.with_name("gone.jpg")  # listed, then deleted by the time the task reads it
    batch = pd.DataFrame({"path": [f"file:{kept}", f"file:{gone}"], "length": [kept.stat().st_size, 1234]})
    check = clean._check_batches([f"file:{tmp_path}"], images.DEFAULT_MAX_SIDE)
    (rows,) = list(check(iter([batch])))
    by_name = {path.rsplit("/", 1)[-1]: row for path, row in zip(rows["path"], rows.to_dict("records"), strict=True)}
    assert by_name["kept.jpg"]["reason"] is None and by_name["kept.jpg"]["label"] == "Apple"
    assert by_name["kept.jpg"]["image_id"] == images.content_id(PHOTO.read_bytes())
    lost = by_name["gone.jpg"]
    assert lost["reason"] == images.UNREADABLE and "No such file" in lost["detail"]
    assert lost["size_bytes"] == 1234 and lost["image_id"] is None and lost["content"] is None
