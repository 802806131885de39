"""The code bundle and the nodes' artifacts in S3 (``stage_code`` writes them, the cluster reads them)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from fruits_dag.bundle import BundleFile

log = logging.getLogger(__name__)

# A staged file older than this is copied onto itself (a new LastModified), so that the bucket's expiry of code/
# (CodeRetentionDays, at least REFRESH_AFTER_DAYS + 5 in infra/template.yaml) never removes one still in use.
REFRESH_AFTER_DAYS = 30


class S3CodeStore:
    """The bundle and the artifacts in S3, through the ``aws_default`` connection."""

    def __init__(self, aws_conn_id: str) -> None:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self.hook = S3Hook(aws_conn_id=aws_conn_id)

    def size_of(self, uri: str) -> int | None:
        bucket, key = self.hook.parse_s3_url(uri)
        head = self.hook.head_object(key=key, bucket_name=bucket)
        return None if head is None else int(head["ContentLength"])

    def write(self, uri: str, file: BundleFile) -> None:
        bucket, key = self.hook.parse_s3_url(uri)
        if file.data is not None:
            self.hook.load_bytes(file.data, key=key, bucket_name=bucket, replace=True)
        else:
            self.hook.load_file(str(file.path), key=key, bucket_name=bucket, replace=True)

    def refresh(self, uri: str) -> None:
        """Copy a staged file older than ``REFRESH_AFTER_DAYS`` onto itself: the bucket's expiry of ``code/``
        counts from the last write, so what every night still uses is never expired under a running cluster."""
        bucket, key = self.hook.parse_s3_url(uri)
        head = self.hook.head_object(key=key, bucket_name=bucket)
        if head is None or dt.datetime.now(dt.UTC) - head["LastModified"] < dt.timedelta(days=REFRESH_AFTER_DAYS):
            return
        # Server-side; a copy onto itself must replace something (its metadata, kept identical).
        self.hook.get_conn().copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            Metadata=head.get("Metadata", {}),
            MetadataDirective="REPLACE",
        )
        log.info("Refreshed %s (older than %d days)", uri, REFRESH_AFTER_DAYS)

    def download(self, uri: str, folder: Path) -> str:
        """A local copy of the S3 file ``uri`` under ``folder/<ETag>/`` (kept: fetched once per content)."""
        bucket, key = self.hook.parse_s3_url(uri)
        head = self.hook.head_object(key=key, bucket_name=bucket)
        if head is None:
            raise FileNotFoundError(f"weights file not found: {uri} (setting fruits_weights)")
        target = folder / head["ETag"].strip('"') / key.rsplit("/", 1)[-1]
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            self.hook.get_conn().download_file(bucket, key, str(partial))
            partial.replace(target)
        return str(target)
