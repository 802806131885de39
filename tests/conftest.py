"""Shared test fixtures: the real sample images and MobileNetV2 weights on this machine, a moto server as AWS with
boto3 clients on it, and the stand-in artifacts of the EMR tests (tests/dag, tests/stack)."""

from __future__ import annotations

import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from repo import REPO_ROOT, SAMPLE_DIR, STAND_IN_WHEELHOUSE, WEIGHTS_FILE

# The jobs, the DAG's package and the make-run tools are imported by tests the way spark-submit, Airflow (which
# puts the DAG bundle's folder on sys.path) and `make run` import them.
for _path in (REPO_ROOT / "spark_jobs", REPO_ROOT / "dags", REPO_ROOT / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real Fruits-360 sample (read-only: copy before adding files)."""
    if not SAMPLE_DIR.is_dir():
        pytest.fail(f"Fruits-360 sample not found at {SAMPLE_DIR}; set FRUITS_SAMPLE_DIR")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def weights_file() -> Path:
    """The real MobileNetV2 ImageNet weights (no top) as a Keras .h5 file."""
    if not WEIGHTS_FILE.is_file():
        pytest.fail(f"MobileNetV2 weights not found at {WEIGHTS_FILE}; set FRUITS_TEST_WEIGHTS")
    return WEIGHTS_FILE


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on 127.0.0.1 (real HTTP: the DAG's subprocess talks to it like to AWS)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


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
    export and a real wheelhouse are tested in tests/dag/test_artifacts.py."""
    folder = tmp_path_factory.mktemp("weights")
    with tarfile.open(folder / STAND_IN_WHEELHOUSE, "w") as archive:
        archive.addfile(tarfile.TarInfo("requirements.txt"))
    path = folder / "mobilenet_v2_test.onnx"
    path.write_bytes(b"ONNX stand-in " * 1000)
    return path
