"""Fixtures for the DAG tests: a throw-away Airflow home (SQLite, migrated once), a moto server as AWS, and a
runner for ``airflow dags test`` that reports the run's task states and rendered templates from the database.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import logging

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_ID = "fruits_pipeline"

# Airflow reads its configuration when first imported: point it at a private home before any test imports it.
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="fruits-dag-tests-"))
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
}
os.environ.update(AIRFLOW_ENV)
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the moto server's access log


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any pipeline setting, plus ``extra`` (Variables, connection)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_VAR_", "AIRFLOW_CONN_"))}
    env.update(AIRFLOW_ENV)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The metadata database, migrated once per session (``airflow dags test`` needs it)."""
    subprocess.run([AIRFLOW, "db", "migrate"], env=clean_env({}), check=True, capture_output=True, timeout=300)
    return AIRFLOW_HOME / "airflow.db"


@dataclass
class DagRunResult:
    """What one ``airflow dags test`` left behind."""

    returncode: int
    output: str
    run_id: str
    states: dict[str, str | None]
    rendered: dict[str, dict[str, Any]]

    def log(self, task_id: str) -> str:
        """The task's log lines (every try): ``dags test`` prints them between its start and end lines."""
        lines, inside = [], False
        for line in self.output.splitlines():
            if f"[DAG TEST] starting task_id={task_id} " in line:
                inside = True
            elif f"[DAG TEST] end task task_id={task_id} " in line:
                inside = False
            elif inside:
                lines.append(line)
        return "\n".join(lines)

    def explain(self) -> str:
        """For assertion messages: the task states and the logs of the tasks that did not succeed."""
        lines = [f"exit status {self.returncode}; states: {self.states}"]
        for task_id, state in sorted(self.states.items()):
            if state not in ("success", "skipped"):
                lines += [f"--- {task_id} ({state}) ---", self.log(task_id)[-6000:]]
        return "\n".join(lines)


def dags_test(date: str, env: dict[str, str], conf: dict[str, Any] | None = None, timeout: int = 300) -> DagRunResult:
    """Run ``airflow dags test fruits_pipeline <date>`` in a subprocess and read the run back from SQLite."""
    command = [AIRFLOW, "dags", "test", DAG_ID, date]
    if conf is not None:
        command += ["--conf", json.dumps(conf)]
    proc = subprocess.run(command, env=clean_env(env), capture_output=True, text=True, timeout=timeout)
    with sqlite3.connect(AIRFLOW_HOME / "airflow.db") as db:
        row = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? AND logical_date LIKE ? "
                         "ORDER BY id DESC LIMIT 1", (DAG_ID, f"{date}%")).fetchone()
        assert row, f"no run of {date} in the database; output:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        run_id = row[0]
        states = dict(db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                                 (DAG_ID, run_id)))
        rendered = {task: json.loads(fields) for task, fields in db.execute(
            "SELECT task_id, rendered_fields FROM rendered_task_instance_fields WHERE dag_id = ? AND run_id = ?",
            (DAG_ID, run_id))}
    return DagRunResult(proc.returncode, proc.stdout + proc.stderr, run_id, states, rendered)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on 127.0.0.1 (real HTTP: the DAG's subprocess talks to it like to AWS)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def reset_moto(endpoint: str) -> None:
    """Forget every bucket, cluster and step."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30)


def aws_connection(endpoint: str) -> str:
    """``aws_default`` as an environment variable pointing at the moto server."""
    return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                       "extra": {"region_name": "us-east-1", "endpoint_url": endpoint}})


@pytest.fixture(scope="session")
def boto(moto_endpoint: str):
    """boto3 clients on the moto server: ``boto("s3")``."""
    import boto3

    def client(service: str):
        return boto3.client(service, endpoint_url=moto_endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    return client
