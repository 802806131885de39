"""The run's figures as CloudWatch metrics: what the stack's alarms watch after the cluster is gone.

After the report, ``publish_metrics`` (EMR backend) reads the run's ``report.json`` and its steps' timelines and
puts them in the namespace :data:`NAMESPACE` with the dimension ``Environment`` (setting ``fruits_environment``,
by default the bucket), so a staging and a production deployment have their own series:

* ``ImagesRead``, ``Kept``, ``Rejected`` (counts), ``RejectedShare`` (rejected / read, 0-1);
* ``NothingKept``: 1 when the night read uploads and kept none, else 0 (an alarm needs a plain metric);
* ``PcaDrift`` (when the run measured it), ``PcaRefitted`` (0/1);
* ``JobSeconds`` per job (dimension ``Job`` too): how long each step ran.

infra/template.yaml's alarms watch ``NothingKept`` and ``RejectedShare`` and tell the ops topic.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

NAMESPACE = "FruitsPipeline"  # the stack's alarms use the same (infra/template.yaml)


def run_metrics(
    report: dict[str, Any], steps: dict[str, dict[str, Any]], environment: str, when: dt.datetime
) -> list[dict[str, Any]]:
    """``PutMetricData`` entries for one run: its ``report.json`` and its steps' ``{"started", "ended"}``."""
    env = [{"Name": "Environment", "Value": environment}]

    def datum(name: str, value: float, unit: str = "Count", extra: list[dict[str, str]] | None = None) -> dict:
        return {
            "MetricName": name,
            "Dimensions": env + (extra or []),
            "Timestamp": when,
            "Value": float(value),
            "Unit": unit,
        }

    read, kept, rejected = (int(report.get(k) or 0) for k in ("images_read", "kept", "rejected"))
    data = [
        datum("ImagesRead", read),
        datum("Kept", kept),
        datum("Rejected", rejected),
        datum("RejectedShare", rejected / read if read else 0.0, "None"),
        datum("NothingKept", 1 if read and not kept else 0),
        datum("PcaRefitted", 1 if report.get("pca_refitted") else 0),
    ]
    drift = report.get("pca_drift")
    if isinstance(drift, dict):  # the drift test's figures (fruits_common.drift): the drop of the captured share
        drift = drift.get("drift")
    if isinstance(drift, (int, float)):
        data.append(datum("PcaDrift", drift, "None"))
    for job, timeline in steps.items():
        if timeline.get("started") and timeline.get("ended"):
            seconds = (
                dt.datetime.fromisoformat(timeline["ended"]) - dt.datetime.fromisoformat(timeline["started"])
            ).total_seconds()
            data.append(datum("JobSeconds", seconds, "Seconds", [{"Name": "Job", "Value": job}]))
    return data


def publish(
    report_uri: str, steps: dict[str, dict[str, Any]], environment: str, aws_conn_id: str
) -> list[dict[str, Any]]:
    """Read the run's report and put its metrics to CloudWatch; returns what was put."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    from fruits_dag.assets import read_summary

    report = read_summary(report_uri)
    if report is None:
        raise FileNotFoundError(f"the run's report {report_uri} is missing: nothing to publish")
    data = run_metrics(report, steps, environment, dt.datetime.now(dt.UTC))
    client = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="cloudwatch").get_conn()
    for start in range(0, len(data), 20):  # PutMetricData takes up to 1,000 items; keep requests small
        client.put_metric_data(Namespace=NAMESPACE, MetricData=data[start : start + 20])
    return data
