"""Staging the code bundle under ``code/<digest>/``, in S3 or in the local root, uploading only what is missing."""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from fruits_airflow.bundle import Bundle, BundleFile

log = logging.getLogger(__name__)


class CodeStore(Protocol):
    """Where a bundle goes: answers whether a staged file is complete and writes one."""

    def size_of(self, uri: str) -> int | None: ...

    def write(self, uri: str, file: BundleFile) -> None: ...


class S3CodeStore:
    """The bundle in S3, through the ``aws_default`` connection."""

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


class LocalCodeStore:
    """The bundle in the local root (the local backend)."""

    def size_of(self, uri: str) -> int | None:
        path = Path(uri)
        return path.stat().st_size if path.is_file() else None

    def write(self, uri: str, file: BundleFile) -> None:
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, then rename: a reader never sees half a file.
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
            if file.data is not None:
                tmp.write(file.data)
            else:
                with open(file.path, "rb") as source:  # type: ignore[arg-type]
                    shutil.copyfileobj(source, tmp)
        Path(tmp.name).replace(target)


def stage(bundle: Bundle, code_uri: str, store: CodeStore) -> list[str]:
    """Put each bundle file at ``<code_uri>/<name>`` unless it is already there; returns the names written.

    The prefix is the bundle's content digest, so a file present with the right size is this very file (S3 and
    the local store both write a file whole or not at all).
    """
    written = []
    for file in bundle.files:
        uri = f"{code_uri}/{file.name}"
        if store.size_of(uri) == file.size:
            continue
        store.write(uri, file)
        written.append(file.name)
    if written:
        log.info("Staged %s under %s", ", ".join(written), code_uri)
    else:
        log.info("Code already staged under %s: nothing uploaded", code_uri)
    return written
