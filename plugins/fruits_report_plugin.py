"""Airflow plugin: the "Fruits report" of each ``fruits_pipeline`` run inside the Airflow UI.

* a FastAPI app under ``/fruits-report`` in the API server (``fruits_report/app.py``), which reads
  ``reports/<run date>/`` from the storage of the configured backend (the local folder, or S3 through the
  ``aws_default`` connection) and requires a valid Airflow session or token on every request;
* a "Fruits report" tab on every DAG run's page (an iframe of ``/fruits-report/runs/{DAG_ID}/{RUN_ID}``; runs of
  other DAGs get a one-line note) and a "Fruits reports" entry in the navigation (the recent reports).

The only module of ``plugins/`` that the plugin manager imports; ``.airflowignore`` keeps it out of the package.
"""

from __future__ import annotations

from urllib.parse import urlparse

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

from fruits_report.app import URL_PREFIX, create_app


def _prefix() -> str:
    # The UI puts the href into an iframe as is: include the path of the server's base URL, if any.
    base_path = urlparse(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    return base_path + URL_PREFIX


class FruitsReportPlugin(AirflowPlugin):
    """The report view of fruits_pipeline runs."""

    name = "fruits_report"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Fruits report"}]
    external_views = [
        {
            "name": "Fruits report",
            "href": _prefix() + "/runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "fruits-report",
        },
        {
            "name": "Fruits reports",
            "href": _prefix() + "/",
            "destination": "nav",
            "url_route": "fruits-reports",
            "category": "browse",
        },
    ]
