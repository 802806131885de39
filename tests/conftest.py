"""Shared test fixtures: where the real sample images and MobileNetV2 weights live on this machine."""

from __future__ import annotations

import sys
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
