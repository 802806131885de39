"""Where things are: the repository, the shared sample images and weights, the Airflow environment of tests, and
the free port on 127.0.0.1 a test server listens on.

The one place the tests' paths and Airflow settings are defined; the DAG and UI harnesses build on it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRUITS_SHARED_DIR", REPO_ROOT.parent / "shared"))
SAMPLE_DIR = Path(os.environ.get("FRUITS_SAMPLE_DIR", SHARED / "data" / "fruits-360-sample"))
WEIGHTS_FILE = Path(
    os.environ.get(
        "FRUITS_TEST_WEIGHTS",
        SHARED / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    )
)
VENV_BIN = Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")
DAG_ID = "fruits_pipeline"
# The pipeline's one Variable (dags/fruits_dag/settings.py), as an environment variable.
SETTINGS_ENV = "AIRFLOW_VAR_FRUITS_SETTINGS"
# The prebuilt wheelhouse the EMR tests stage (made beside the stand-in weights by the ``weights`` fixture).
STAND_IN_WHEELHOUSE = "wheelhouse-test-cp311-x86_64.tar"


def with_settings(env: dict[str, str], **settings: Any) -> dict[str, str]:
    """``env`` with ``settings`` (``fruits_bucket="b"``...) merged into its ``fruits_settings`` JSON."""
    merged = {**json.loads(env.get(SETTINGS_ENV) or "{}"), **settings}
    return {**env, SETTINGS_ENV: json.dumps(merged)}


def airflow_env(home: Path, **overrides: str) -> dict[str, str]:
    """The Airflow settings every test Airflow uses: a private home with SQLite, this repository's DAGs and
    plugins, no examples; ``overrides`` are more ``AIRFLOW__...`` settings (or replace these)."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Tests re-parse the DAG with other Variables (another backend, another storage root) seconds apart: write
        # each parse's serialized DAG (Airflow skips writes within 30 s by default, and the API side would then
        # check a task's assets against the previous test's DAG).
        "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "0",
        **overrides,
    }


def free_port() -> int:
    """A TCP port nothing listens on right now (on 127.0.0.1): where a test starts a server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
