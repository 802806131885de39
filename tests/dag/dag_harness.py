"""Harness of the DAG tests: a throw-away Airflow home (SQLite), a runner for ``airflow dags test`` that reads the
run's task states, logs and rendered templates back, the moto connection, and the job contract's parsing helpers.

Importing this module points Airflow at the private home, so it must be imported before Airflow is (conftest.py
does it first thing).
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repo import (  # noqa: F401  (for the tests)
    AIRFLOW,
    DAG_ID,
    REPO_ROOT,
    SETTINGS_ENV,
    STAND_IN_WHEELHOUSE,
    airflow_env,
    with_settings,
)

# Airflow reads its configuration when first imported: point it at a private home before any test imports it.
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="fruits-dag-tests-"))
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)
AIRFLOW_ENV = airflow_env(AIRFLOW_HOME)
# Another team's DAG, scheduled on the pipeline's PCA asset (registered once by the airflow_db fixture).
CONSUMER_DAGS = Path(__file__).with_name("consumer")
os.environ.update(AIRFLOW_ENV)
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the moto server's access log


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any pipeline setting, plus ``extra`` (Variables, connection)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_VAR_", "AIRFLOW_CONN_"))}
    env.update(AIRFLOW_ENV)
    env.update(extra)
    return env


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
    # Tests point the DAG at other storage roots (a temporary folder, a moto bucket), so its assets' URIs change from
    # one run to the next; in a deployment the scheduler's orphanage pass then retires the old URIs, here nothing
    # runs between two `dags test`: retire them the same way, so this run's assets can be activated.
    with sqlite3.connect(AIRFLOW_HOME / "airflow.db") as db:
        db.execute("DELETE FROM asset_active WHERE name LIKE 'fruits\\_%' ESCAPE '\\'")
    command = [AIRFLOW, "dags", "test", DAG_ID, date]
    if conf is not None:
        command += ["--conf", json.dumps(conf)]
    proc = subprocess.run(command, env=clean_env(env), capture_output=True, text=True, timeout=timeout)
    with sqlite3.connect(AIRFLOW_HOME / "airflow.db") as db:
        row = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? AND logical_date LIKE ? ORDER BY id DESC LIMIT 1",
            (DAG_ID, f"{date}%"),
        ).fetchone()
        assert row, f"no run of {date} in the database; output:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        run_id = row[0]
        states = dict(
            db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (DAG_ID, run_id))
        )
        rendered = {
            task: json.loads(fields)
            for task, fields in db.execute(
                "SELECT task_id, rendered_fields FROM rendered_task_instance_fields WHERE dag_id = ? AND run_id = ?",
                (DAG_ID, run_id),
            )
        }
    return DagRunResult(proc.returncode, proc.stdout + proc.stderr, run_id, states, rendered)


def reset_moto(endpoint: str) -> None:
    """Forget every bucket, cluster and step."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30)


def aws_connection(endpoint: str) -> str:
    """``aws_default`` as an environment variable pointing at the moto server."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"region_name": "us-east-1", "endpoint_url": endpoint},
        }
    )


def emr_variables(endpoint: str, bucket: str, weights: Path) -> dict[str, str]:
    """The connection and Variables of a run on the EMR backend against moto: ``weights`` (a stand-in ONNX
    export, staged as is) and the stand-in wheelhouse beside it (both made by the ``weights`` fixture)."""
    return with_settings(
        {"AIRFLOW_CONN_AWS_DEFAULT": aws_connection(endpoint)},
        fruits_bucket=bucket,
        fruits_backend="emr",
        fruits_weights=str(weights),
        fruits_wheelhouse=str(weights.parent / STAND_IN_WHEELHOUSE),
        fruits_poke_interval=1,
    )


SPARK_SUBMIT_OPTIONS_WITH_VALUE = {
    "--deploy-mode",
    "--py-files",
    "--master",
    "--driver-memory",
    "--driver-java-options",
    "--conf",
}


def emr_clusters(emr_client: Any) -> dict[str, dict]:
    """Every cluster moto knows, by id, with its tags (``tags``: a dict) and its steps (``steps``)."""
    found = {}
    for summary in emr_client.list_clusters()["Clusters"]:
        cluster = emr_client.describe_cluster(ClusterId=summary["Id"])["Cluster"]
        cluster["tags"] = {t["Key"]: t["Value"] for t in cluster["Tags"]}
        cluster["steps"] = emr_client.list_steps(ClusterId=summary["Id"])["Steps"]
        found[summary["Id"]] = cluster
    return found


def split_spark_submit(argv: list[str]) -> tuple[dict[str, str], str, list[str]]:
    """``spark-submit [options] script args`` -> (options, script, args), the way spark-submit reads it."""
    options, index = {}, 1
    while argv[index].startswith("--"):
        assert argv[index] in SPARK_SUBMIT_OPTIONS_WITH_VALUE, f"unexpected spark-submit option {argv[index]}"
        options[argv[index]] = argv[index + 1]
        index += 2
    return options, argv[index], argv[index + 1 :]


def parse_with_job(script: str, args: list[str]) -> argparse.Namespace:
    """Parse ``args`` with the parser of the job module named by ``script`` (``.../clean.py`` -> ``clean``)."""
    module = importlib.import_module(Path(script).stem)
    return module.build_parser().parse_args(args)


class OpsTopic:
    """The ops SNS topic on moto, with an SQS queue subscribed to it: what the DAG publishes is read back from the
    queue, as a person's e-mail or pager subscription would receive it."""

    NAME = "fruits-ops"

    def __init__(self, boto: Any) -> None:
        self.sns, self.sqs = boto("sns"), boto("sqs")
        self.arn = self.sns.create_topic(Name=self.NAME)["TopicArn"]
        self.queue = self.sqs.create_queue(QueueName=f"{self.NAME}-inbox")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"]
        self.sns.subscribe(TopicArn=self.arn, Protocol="sqs", Endpoint=queue_arn["QueueArn"])

    def told(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` with this topic as the DAG's alert topic."""
        return with_settings(env, fruits_alert_topic_arn=self.arn)

    def messages(self) -> list[dict[str, str]]:
        """Every message published so far (``Subject``, ``Message``), taken off the queue."""
        found = []
        while batch := self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get("Messages"):
            for message in batch:
                envelope = json.loads(message["Body"])  # SNS's JSON envelope (no raw delivery)
                found.append({"Subject": envelope.get("Subject", ""), "Message": envelope["Message"]})
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])
        return found
