"""The pipeline's own settings code (``dags/fruits_dag``), shared with the DAG so that both read the same settings.

The DAG processor and the workers import ``fruits_dag`` from the DAGs folder; the API server, where this plugin
runs, puts only the plugins and config folders on ``sys.path``, so the DAGs folder is added here when missing.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fruits_dag.plan import Layout
    from fruits_dag.settings import Settings

DAG_ID = "fruits_pipeline"


def _dags_folder_on_path() -> None:
    from airflow.configuration import conf

    folder = conf.get("core", "dags_folder")
    if folder and folder not in sys.path:
        sys.path.append(folder)


class BadSettings(ValueError):
    """A setting has a value the pipeline cannot use; the message names it (and is safe to show)."""


def load_settings() -> Settings:
    """The deployment's settings (backend, bucket, local root), read as the DAG reads them."""
    _dags_folder_on_path()
    from fruits_dag import settings

    try:
        return settings.read()
    except settings.SettingsError as exc:
        raise BadSettings(str(exc)) from exc


def aws_conn_id() -> str:
    """The Airflow connection the pipeline uses for AWS."""
    _dags_folder_on_path()
    from fruits_dag import settings

    return settings.AWS_CONN_ID


def run_date_of(logical_date: dt.datetime | None, run_after: dt.datetime) -> dt.date:
    """The run date of a DAG run (:func:`fruits_dag.plan.run_date`)."""
    _dags_folder_on_path()
    from fruits_dag.plan import run_date

    return run_date(logical_date, run_after)


def layout(root: str) -> Layout:
    """The storage layout under ``root`` (:class:`fruits_dag.plan.Layout`: where each output lives)."""
    _dags_folder_on_path()
    from fruits_dag.plan import Layout

    return Layout(root)
