"""Shared test fixtures: where the real sample images and MobileNetV2 weights live on this machine."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRUITS_SHARED_DIR", REPO_ROOT.parent / "shared"))
SAMPLE_DIR = Path(os.environ.get("FRUITS_SAMPLE_DIR", SHARED / "data" / "fruits-360-sample"))
WEIGHTS_FILE = Path(
    os.environ.get(
        "FRUITS_TEST_WEIGHTS",
        SHARED / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    )
)

# The jobs and the DAG helpers are imported by tests the way spark-submit and Airflow import them.
for _path in (REPO_ROOT / "spark_jobs", REPO_ROOT / "plugins", REPO_ROOT / "dags"):
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
