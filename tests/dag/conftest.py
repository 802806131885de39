"""Fixtures for the DAG tests: the migrated Airflow database, boto3 clients on the moto server, stand-in artifacts."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from dag_harness import (  # first: points Airflow at the private home
    AIRFLOW,
    AIRFLOW_HOME,
    STAND_IN_WHEELHOUSE,
    clean_env,
)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The metadata database, migrated once per session (``airflow dags test`` needs it)."""
    subprocess.run([AIRFLOW, "db", "migrate"], env=clean_env({}), check=True, capture_output=True, timeout=300)
    return AIRFLOW_HOME / "airflow.db"


@pytest.fixture(scope="session")
def boto(moto_endpoint: str):
    """boto3 clients on the moto server: ``boto("s3")``."""
    import boto3

    def client(service: str):
        return boto3.client(
            service,
            endpoint_url=moto_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    return client


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """Stand-ins for the EMR tests: the MobileNetV2 ONNX export (a given .onnx is staged as is, bytes copied) and,
    beside it, a prebuilt x86_64 wheelhouse (staged and passed to the bootstrap, which moto never runs). The real
    export and a real wheelhouse are tested in test_artifacts.py."""
    folder = tmp_path_factory.mktemp("weights")
    with tarfile.open(folder / STAND_IN_WHEELHOUSE, "w") as archive:
        archive.addfile(tarfile.TarInfo("requirements.txt"))
    path = folder / "mobilenet_v2_test.onnx"
    path.write_bytes(b"ONNX stand-in " * 1000)
    return path
