"""Reading run reports from the pipeline's storage: the local folder or the S3 bucket.

Only ``reports/<YYYY-MM-DD>/<name>`` can be read, with ``name`` one of :data:`REPORT_FILES`: the callers pass a
date and a name, never a path, so no request can reach another part of the storage. S3 is read with the
credentials of the Airflow connection ``aws_default``; nothing here returns or logs them.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

REPORTS = "reports"
REPORT_JSON = "report.json"
PLOTS = ("explained_variance.png", "pca_scatter.png", "images_per_label.png")
REPORT_FILES = (REPORT_JSON, *PLOTS)
MEDIA_TYPES = {".json": "application/json", ".png": "image/png"}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class NotAReportFile(ValueError):
    """A name or date that is not one of a report's files (refused before any storage access)."""


def parse_day(text: str) -> dt.date:
    """``YYYY-MM-DD`` as a date; anything else (``..``, ``2026-3-1``, ``2026-02-30``) raises NotAReportFile."""
    if not _DAY.fullmatch(text):
        raise NotAReportFile(f"not a report date: {text!r}")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise NotAReportFile(f"not a report date: {text!r}") from None


def check_name(name: str) -> str:
    """The name itself when it is one of a report's files, else NotAReportFile."""
    if name not in REPORT_FILES:
        raise NotAReportFile(f"not a report file: {name!r}")
    return name


class ReportStore(Protocol):
    """Where the reports are: :class:`LocalReportStore` or :class:`S3ReportStore`."""

    root: str

    def read(self, day: dt.date, name: str) -> bytes | None:
        """The file's bytes, or None when the run date has no such file."""
        ...

    def days(self) -> list[dt.date]:
        """Every run date with a report folder, newest first."""
        ...


def read_report(store: ReportStore, day: dt.date) -> dict[str, Any] | None:
    """The run date's ``report.json`` as a dict, or None when there is none."""
    data = store.read(day, REPORT_JSON)
    if data is None:
        return None
    report = json.loads(data)
    if not isinstance(report, dict):
        raise ValueError(f"{REPORT_JSON} of {day} is not a JSON object")
    return report


@dataclass(frozen=True)
class LocalReportStore:
    """Reports under ``<fruits_local_root>/reports/``."""

    local_root: Path

    @property
    def root(self) -> str:
        return str(self.local_root)

    def read(self, day: dt.date, name: str) -> bytes | None:
        base = (self.local_root / REPORTS).resolve()
        path = (base / day.isoformat() / check_name(name)).resolve()
        # A symbolic link inside reports/ must not lead out of it either.
        if not path.is_relative_to(base) or not path.is_file():
            return None
        return path.read_bytes()

    def days(self) -> list[dt.date]:
        folder = self.local_root / REPORTS
        if not folder.is_dir():
            return []
        found = []
        for child in folder.iterdir():
            try:
                day = parse_day(child.name)
            except NotAReportFile:
                continue
            if child.is_dir():
                found.append(day)
        return sorted(found, reverse=True)


@dataclass(frozen=True)
class S3ReportStore:
    """Reports under ``s3://<fruits_bucket>/reports/``, read through the Airflow connection ``conn_id``."""

    bucket: str
    conn_id: str

    @property
    def root(self) -> str:
        return f"s3://{self.bucket}"

    @functools.cached_property
    def _client(self) -> Any:
        """One S3 client per store (a store serves one request): the connection is looked up once."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook  # lazy: only the S3 backend needs the provider

        return S3Hook(aws_conn_id=self.conn_id).get_conn()

    def read(self, day: dt.date, name: str) -> bytes | None:
        from botocore.exceptions import ClientError

        key = f"{REPORTS}/{day.isoformat()}/{check_name(name)}"
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def days(self) -> list[dt.date]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{REPORTS}/", Delimiter="/"
        )
        found = []
        for page in pages:
            for prefix in page.get("CommonPrefixes", []):
                try:
                    found.append(parse_day(prefix["Prefix"][len(REPORTS) + 1 :].rstrip("/")))
                except NotAReportFile:
                    continue
        return sorted(found, reverse=True)
