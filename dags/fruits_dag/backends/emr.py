"""The EMR backend: the jobs run as steps of a transient Amazon EMR cluster created for the run; storage in S3.

Its tasks: ``create_cluster`` (the cluster request of :func:`cluster_config`), ``add_steps`` (one
``command-runner.jar spark-submit`` step per job), one :class:`EmrStepWatcher` per job, ``S3KeySensor``s on the
uploads and the ``_SUCCESS`` markers, and ``terminate_cluster`` as the teardown of ``create_cluster``.
The code bundle goes to ``s3://<bucket>/code/<digest>/`` through the ``aws_default`` connection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from airflow.providers.amazon.aws.operators.emr import (
    EmrAddStepsOperator,
    EmrCreateJobFlowOperator,
    EmrTerminateJobFlowOperator,
)
from airflow.providers.amazon.aws.sensors.emr import EmrStepSensor
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import BaseOperator, BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from fruits_dag import backends
from fruits_dag.bundle import BundleFile
from fruits_dag.params import RunParams
from fruits_dag.plan import RunPlan
from fruits_dag.settings import AWS_CONN_ID, Settings

# A failed step cancels the later ones and leaves the cluster up for the teardown task (and its logs intact).
ACTION_ON_FAILURE = "CANCEL_AND_WAIT"
PYTHON_ON_NODES = "/usr/bin/python3.11"  # installed by emr_bootstrap.sh; requirements.txt is tested on 3.11
CLUSTER_ID = "{{ ti.xcom_pull(task_ids='create_cluster') }}"


class EmrBackend(backends.Backend):
    """Jobs as steps of a transient EMR cluster that the ``terminate_cluster`` teardown always removes."""

    def code_store(self) -> S3CodeStore:
        return S3CodeStore(AWS_CONN_ID)

    def plan_extras(self, plan: RunPlan, params: RunParams, run_id: str) -> dict[str, Any]:
        return {
            "job_flow_overrides": cluster_config(self.settings, params, plan.run_date, plan.code_uri, run_id),
            "emr_steps": emr_steps(plan),
        }

    def key_sensor(self, task_id: str, keys: str, **kwargs: Any) -> BaseOperator:
        # The freshness check (check_fn) compares the markers' LastModified with the step's start.
        metadata = {"metadata_keys": ["Key", "LastModified"]} if kwargs.get("check_fn") else {}
        return S3KeySensor(
            task_id=task_id, bucket_key=keys, aws_conn_id=AWS_CONN_ID, **metadata, **self.sensor_args, **kwargs
        )

    def setup(self) -> Sequence[BaseOperator]:
        create_cluster = EmrCreateJobFlowOperator(
            task_id="create_cluster",
            aws_conn_id=AWS_CONN_ID,
            emr_conn_id=None,
            job_flow_overrides=backends.from_plan("job_flow_overrides"),
        )
        add_steps = EmrAddStepsOperator(
            task_id="add_steps", aws_conn_id=AWS_CONN_ID, job_flow_id=CLUSTER_ID, steps=backends.from_plan("emr_steps")
        )
        return (create_cluster, add_steps)

    def job_task(self, name: str, index: int) -> BaseOperator:
        return EmrStepWatcher(
            task_id=f"{name}_step",
            aws_conn_id=AWS_CONN_ID,
            job_flow_id=CLUSTER_ID,
            step_id=f"{{{{ ti.xcom_pull(task_ids='add_steps')[{index}] }}}}",
            **self.sensor_args,
        )

    def teardown(self, setup: Sequence[BaseOperator], last: BaseOperator) -> None:
        terminate_cluster = EmrTerminateJobFlowOperator(
            task_id="terminate_cluster", aws_conn_id=AWS_CONN_ID, job_flow_id=CLUSTER_ID
        )
        # Teardown: runs after success, failure or a cleared task, and the run still fails when a step failed.
        last >> terminate_cluster.as_teardown(setups=setup[0])


BACKEND = EmrBackend


def emr_steps(plan: RunPlan) -> list[dict[str, Any]]:
    """The plan's jobs as EMR steps: ``command-runner.jar spark-submit`` of the staged scripts."""
    return [
        {
            "Name": job.name,
            "ActionOnFailure": ACTION_ON_FAILURE,
            "HadoopJarStep": {
                "Jar": "command-runner.jar",
                # Client mode: the driver's output (and a job's error) lands in the step's stderr log.
                "Args": ["spark-submit", "--deploy-mode", "client", *job.submit_args()],
            },
        }
        for job in plan.jobs
    ]


def cluster_config(settings: Settings, params: RunParams, day: dt.date, code_uri: str, run_id: str) -> dict[str, Any]:
    """``RunJobFlow`` arguments of the run's transient cluster (``EmrCreateJobFlowOperator`` overrides)."""
    instances: dict[str, Any] = {
        "InstanceGroups": [
            {
                "Name": "primary",
                "InstanceRole": "MASTER",
                "Market": "ON_DEMAND",
                "InstanceType": settings.emr_primary_instance_type,
                "InstanceCount": 1,
            },
            {
                "Name": "core",
                "InstanceRole": "CORE",
                "Market": "ON_DEMAND",
                "InstanceType": params.core_instance_type,
                "InstanceCount": params.core_instance_count,
            },
        ],
        # Steps are added after creation; the teardown task (or the idle timeout) ends the cluster.
        "KeepJobFlowAliveWhenNoSteps": True,
        "TerminationProtected": False,
    }
    if settings.emr_subnet_id:
        instances["Ec2SubnetId"] = settings.emr_subnet_id
    python = {"PYSPARK_PYTHON": PYTHON_ON_NODES, "PYSPARK_DRIVER_PYTHON": PYTHON_ON_NODES}
    return {
        "Name": f"fruits-pipeline-{day.isoformat()}",
        "ReleaseLabel": settings.emr_release,
        "Applications": [{"Name": "Spark"}],
        "LogUri": settings.emr_log_uri,
        "Instances": instances,
        "BootstrapActions": [
            {
                "Name": "python dependencies",
                "ScriptBootstrapAction": {
                    "Path": f"{code_uri}/emr_bootstrap.sh",
                    "Args": [f"{code_uri}/requirements.txt"],
                },
            }
        ],
        "Configurations": [
            # Spark's own Python on EMR 7 is 3.9; the jobs' dependencies are installed for 3.11.
            {"Classification": "spark-env", "Configurations": [{"Classification": "export", "Properties": python}]},
        ],
        "AutoTerminationPolicy": {"IdleTimeout": settings.emr_idle_timeout},
        "ServiceRole": settings.emr_service_role,
        "JobFlowRole": settings.emr_instance_profile,
        "VisibleToAllUsers": True,
        "Tags": [
            {"Key": "project", "Value": "fruits"},
            {"Key": "airflow:dag_id", "Value": "fruits_pipeline"},
            {"Key": "airflow:run_id", "Value": run_id[:256]},
            {"Key": "fruits:run_date", "Value": day.isoformat()},
        ],
    }


class S3CodeStore:
    """The bundle in S3, through the ``aws_default`` connection."""

    def __init__(self, aws_conn_id: str) -> None:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self.hook = S3Hook(aws_conn_id=aws_conn_id)

    def size_of(self, uri: str) -> int | None:
        bucket, key = self.hook.parse_s3_url(uri)
        head = self.hook.head_object(key=key, bucket_name=bucket)
        return None if head is None else int(head["ContentLength"])

    def write(self, uri: str, file: BundleFile) -> None:
        bucket, key = self.hook.parse_s3_url(uri)
        if file.data is not None:
            self.hook.load_bytes(file.data, key=key, bucket_name=bucket, replace=True)
        else:
            self.hook.load_file(str(file.path), key=key, bucket_name=bucket, replace=True)


class EmrStepWatcher(EmrStepSensor):
    """``EmrStepSensor`` that, when the step completes, returns its timeline (for :func:`marker_is_fresh`) and,
    when it fails or is cancelled, fails the task without retries, naming the step, EMR's failure reason and the
    logs.

    EMR does not always give ``FailureDetails`` (moto never does, nor a step cancelled after an earlier one
    failed); the message then says so and points at the step's logs under the cluster's ``LogUri``.
    """

    def __init__(self, **kwargs: Any) -> None:
        # Poke or reschedule mode only: the deferrable path of EmrStepSensor has no timeline to return.
        super().__init__(**{**kwargs, "deferrable": False})

    def execute(self, context: Any) -> Any:
        # EmrStepSensor.execute drops what poke returns; keep it (the step's timeline) as this task's XCom.
        return BaseSensorOperator.execute(self, context)

    def poke(self, context: Any) -> bool | PokeReturnValue:
        response = self.get_emr_response(context=context)
        step = response["Step"]
        status = step["Status"]
        state = status["State"]
        self.log.info("EMR step %r (%s) is %s", step.get("Name"), self.step_id, state)
        if state in self.target_states:
            timeline = status.get("Timeline", {})
            started = timeline.get("StartDateTime") or timeline.get("CreationDateTime")
            return PokeReturnValue(
                is_done=True,
                xcom_value={
                    "step_id": self.step_id,
                    "state": state,
                    "started": started.isoformat() if started else None,
                    "ended": timeline["EndDateTime"].isoformat() if timeline.get("EndDateTime") else None,
                },
            )
        if state in self.failed_states:
            # Retrying this sensor cannot re-run the step: fail now, with everything needed to investigate.
            raise AirflowFailException(self.describe_failure(step))
        return False

    def describe_failure(self, step: dict[str, Any]) -> str:
        """One paragraph: which step, what EMR says, the cluster's state and where the logs are."""
        status = step["Status"]
        state = status["State"]
        cluster = self.hook.conn.describe_cluster(ClusterId=self.job_flow_id)["Cluster"]
        log_uri = (cluster.get("LogUri") or "").replace("s3n://", "s3://")
        parts = [f"EMR step {step.get('Name')!r} ({self.step_id}) on cluster {self.job_flow_id} ended {state}."]

        details = status.get("FailureDetails") or {}
        if details:
            parts.append(
                f"Reason: {details.get('Reason') or 'not given'}; message: {details.get('Message') or 'none'}"
                + (f"; log file: {details['LogFile']}." if details.get("LogFile") else ".")
            )
        elif state == "CANCELLED":
            parts.append("EMR cancelled it: a step before it failed, or the cluster stopped.")
        else:
            parts.append("EMR gave no failure details.")

        change = (status.get("StateChangeReason") or {}).get("Message")
        if change:
            parts.append(f"Step state change: {change}.")
        cluster_status = cluster.get("Status", {})
        reason = cluster_status.get("StateChangeReason") or {}
        parts.append(
            f"Cluster state: {cluster_status.get('State')}"
            + (f" ({reason.get('Code')}: {reason.get('Message')})" if reason.get("Message") else "")
            + "."
        )
        if log_uri:
            parts.append(
                f"Step logs (stderr has the job's error): {log_uri.rstrip('/')}/{self.job_flow_id}/steps/"
                f"{self.step_id}/ ; cluster logs: {log_uri}"
            )
        else:
            parts.append("The cluster has no LogUri: its step logs were not kept.")
        return " ".join(parts)
