"""Shared test fixtures: the real sample images and MobileNetV2 weights on this machine, and a moto server as AWS."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from repo import REPO_ROOT, SAMPLE_DIR, WEIGHTS_FILE

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
