"""The pipeline's outputs as Airflow Assets, so that other DAGs can be scheduled on them.

Each ``<job>_success`` task emits its job's asset when it confirms the job's fresh output, with extras a consumer
needs, read from the summary the job wrote (``run_date``, ``rows_added``, and for PCA the basis ``pca_version``,
whether the run ``refitted`` it and ``k``). Names are stable (``fruits_clean``, ``fruits_features``,
``fruits_pca``, ``fruits_report``); URIs are the datasets' places in the storage layout (``s3://<bucket>/...`` or
``file:///<root>/...``). A consumer schedules on a name: ``schedule=[Asset.ref(name="fruits_pca")]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow.sdk import Asset

from fruits_dag.plan import Layout
from fruits_dag.settings import AWS_CONN_ID, Settings

# job -> (asset name, where in the layout)
OUTPUTS = {
    "clean": ("fruits_clean", "stages/clean"),
    "embed": ("fruits_features", "stages/embed"),
    "pca": ("fruits_pca", "stages/pca"),
    "report": ("fruits_report", "reports"),
}


def pipeline_assets(settings: Settings) -> dict[str, Asset]:
    """The asset each job completes, for this deployment's storage root."""
    layout = Layout(settings.storage_root)
    assets = {}
    for job, (name, where) in OUTPUTS.items():
        uri = layout.join(where)
        assets[job] = Asset(name=name, uri=uri if "://" in uri else Path(uri).as_uri(), group="fruits")
    return assets


def read_summary(uri: str) -> dict[str, Any] | None:
    """A job's JSON summary from the storage layout (S3 through the AWS connection, else a local file)."""
    if uri.startswith("s3://"):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        hook = S3Hook(aws_conn_id=AWS_CONN_ID)
        bucket, key = hook.parse_s3_url(uri)
        return json.loads(hook.read_key(key, bucket)) if hook.check_for_key(key, bucket) else None
    path = Path(uri)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def extras(job: str, run_date: str, summary: dict[str, Any] | None) -> dict[str, Any]:
    """The asset event's extras from the job's summary (only the run date when the summary is missing)."""
    extra: dict[str, Any] = {"run_date": run_date}
    if not summary:
        return extra
    if job == "clean":
        extra.update(rows_added=summary.get("kept"), rejected=summary.get("rejected"),
                     upload_days=summary.get("upload_days", []))  # fmt: skip
    elif job == "embed":
        extra.update(rows_added=summary.get("embedded"))
    elif job == "pca":
        extra.update(rows_added=summary.get("rows_projected"), pca_version=summary.get("version"),
                     refitted=summary.get("refitted"), k=summary.get("k"))  # fmt: skip
    elif job == "report":
        extra.update(images_read=summary.get("images_read"), kept=summary.get("kept"),
                     pca_version=summary.get("pca_version"))  # fmt: skip
    return extra
