"""Fixtures for the DAG tests: the migrated Airflow database (boto3 clients on the moto server and the stand-in
artifacts are in tests/conftest.py, shared with tests/stack)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dag_harness import (  # first: points Airflow at the private home
    AIRFLOW,
    AIRFLOW_HOME,
    clean_env,
)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The metadata database, migrated once per session (``airflow dags test`` needs it)."""
    subprocess.run([AIRFLOW, "db", "migrate"], env=clean_env({}), check=True, capture_output=True, timeout=300)
    return AIRFLOW_HOME / "airflow.db"
