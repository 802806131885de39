"""
# fruits_pipeline

Every night the photos uploaded the day before are **cleaned** (checked, de-duplicated, labelled; the rest
kept with a reason), **embedded** (MobileNetV2, 1,280 features), **reduced** (PCA) and **reported** (numbers and
plots), by the four Spark jobs in `spark_jobs/`.

* **Backends** (Variable `fruits_backend`): `emr` runs the jobs as steps of a transient EMR cluster that the
  `terminate_cluster` teardown always removes, storage in `s3://<fruits_bucket>/`; `local` runs the same jobs,
  with the same arguments, through `spark-submit --master local[*]` on the worker, storage in
  `fruits_local_root`. The cluster tasks exist only with `emr`.
* **Schedule**: 02:00 UTC; a run processes `uploads/<its logical date>/`, i.e. the previous UTC day's uploads
  (a manual run without a logical date processes the day it was triggered). No uploads by the sensor timeout:
  the run ends with every later task skipped, and no cluster is created.
* **Tasks**: `stage_code` (job scripts, shared module zip, bootstrap script and weights to
  `code/<content hash>/`; the run's plan to XCom) → `wait_for_uploads` → [`create_cluster` → `add_steps`] →
  for each of clean, embed, pca, report: `<job>_step` (watch the EMR step / run the local job) →
  `<job>_success` (its `_SUCCESS` marker, written during this step) → [`terminate_cluster`].
* **Failures**: a failed step cancels the later ones; the error names the step, EMR's reason and the logs.
  To retry, clear the whole run (a new cluster is created).
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.amazon.aws.operators.emr import (
    EmrAddStepsOperator,
    EmrCreateJobFlowOperator,
    EmrTerminateJobFlowOperator,
)
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import DAG, BaseOperator, CronDataIntervalTimetable, chain, task
from airflow.sdk.exceptions import AirflowFailException

from fruits_airflow import settings as fruits_settings
from fruits_airflow.bundle import build_bundle
from fruits_airflow.local_spark import LocalSparkJobOperator
from fruits_airflow.params import RunParams, dag_params
from fruits_airflow.plan import STEP_NAMES, PlanError, build_plan, run_date
from fruits_airflow.sensors import EmrStepWatcher, LocalKeySensor, marker_is_fresh
from fruits_airflow.staging import LocalCodeStore, S3CodeStore, stage

# Read when the file is parsed; workers parse it again before each task, so tasks see current values.
SETTINGS = fruits_settings.load()
ON_EMR = SETTINGS.backend == "emr"
AWS = fruits_settings.AWS_CONN_ID

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "data-engineering",
    # Transient AWS errors (throttling, a blip of the API): retry with back-off 1, 2, 4... up to 10 minutes.
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=1),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=10),
}
# Sensors give their worker slot back between pokes.
SENSOR_ARGS: dict[str, Any] = {
    "mode": "reschedule",
    "poke_interval": SETTINGS.poke_interval,
    "timeout": SETTINGS.sensor_timeout,
}


def from_plan(key: str) -> str:
    """Template for one value of the run's plan (``stage_code``'s XCom); the DAG renders templates natively.

    Templates rather than XComArgs keep the graph a chain: an XComArg would add an edge from stage_code to each task.
    """
    return f"{{{{ ti.xcom_pull(task_ids='stage_code', key='{key}') }}}}"


def key_sensor(task_id: str, keys: str, **kwargs: Any) -> BaseOperator:
    """``S3KeySensor`` on EMR, its local twin otherwise: same keys, same wildcard and freshness rules."""
    if ON_EMR:
        # The freshness check (check_fn) compares the markers' LastModified with the step's start.
        metadata = {"metadata_keys": ["Key", "LastModified"]} if kwargs.get("check_fn") else {}
        return S3KeySensor(task_id=task_id, bucket_key=keys, aws_conn_id=AWS, **metadata, **SENSOR_ARGS, **kwargs)
    return LocalKeySensor(task_id=task_id, path=keys, **SENSOR_ARGS, **kwargs)


@task(multiple_outputs=True)
def stage_code(**context: Any) -> dict[str, Any]:
    """Stage the code bundle under ``code/<digest>/`` (only missing files) and return the run's plan."""
    try:
        bundle = build_bundle(SETTINGS.jobs_dir, SETTINGS.weights)
        day = run_date(context.get("logical_date"), context["dag_run"].run_after)
        plan = build_plan(SETTINGS, RunParams.from_mapping(context["params"]), day, bundle, context["run_id"])
    except (PlanError, FileNotFoundError) as exc:
        raise AirflowFailException(str(exc)) from exc  # a retry cannot fix a bad param or a missing file
    stage(bundle, plan.code_uri, S3CodeStore(AWS) if ON_EMR else LocalCodeStore())
    return plan.to_xcom()


with DAG(
    dag_id="fruits_pipeline",
    description=f"Nightly clean, embed (MobileNetV2), PCA and report of the uploaded fruit photos ({SETTINGS.backend})",
    doc_md=__doc__ + "\n## Settings (Airflow Variables)\n\n" + fruits_settings.variables_markdown(),
    # A data-interval timetable: the run at 02:00 UTC on day D+1 has logical date D 02:00 and reads uploads/D/.
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=dag_params(),
    # Lists and dicts from XCom (sensor keys, steps, cluster configuration) render as themselves, not as text.
    render_template_as_native_obj=True,
    tags=["fruits", "spark", SETTINGS.backend],
) as dag:
    plan = stage_code()

    wait_for_uploads = key_sensor(
        "wait_for_uploads", from_plan("uploads_pattern"), wildcard_match=True,
        soft_fail=True,  # nothing uploaded by the timeout: skip the rest of the run, don't fail it
    )

    if ON_EMR:
        create_cluster = EmrCreateJobFlowOperator(
            task_id="create_cluster", aws_conn_id=AWS, emr_conn_id=None,
            job_flow_overrides=from_plan("job_flow_overrides"),
        )
        cluster_id = "{{ ti.xcom_pull(task_ids='create_cluster') }}"
        add_steps = EmrAddStepsOperator(
            task_id="add_steps", aws_conn_id=AWS, job_flow_id=cluster_id, steps=from_plan("emr_steps"),
        )
        steps = [
            EmrStepWatcher(task_id=f"{name}_step", aws_conn_id=AWS, job_flow_id=cluster_id,
                           step_id=f"{{{{ ti.xcom_pull(task_ids='add_steps')[{index}] }}}}", **SENSOR_ARGS)
            for index, name in enumerate(STEP_NAMES)
        ]
        terminate_cluster = EmrTerminateJobFlowOperator(
            task_id="terminate_cluster", aws_conn_id=AWS, job_flow_id=cluster_id,
        )
    else:
        steps = [
            # A failed job fails the same way again: no retries.
            LocalSparkJobOperator(task_id=f"{name}_step", job=from_plan(f"{name}_job"),
                                  driver_memory=SETTINGS.local_driver_memory, retries=0)
            for name in STEP_NAMES
        ]

    markers = [
        key_sensor(f"{name}_success", from_plan(f"{name}_markers"), check_fn=marker_is_fresh(f"{name}_step"))
        for name in STEP_NAMES
    ]
    step_then_marker = [task for pair in zip(steps, markers) for task in pair]

    if ON_EMR:
        chain(plan, wait_for_uploads, create_cluster, add_steps, *step_then_marker)
        # Teardown: runs after success, failure or a cleared task, and the run still fails when a step failed.
        markers[-1] >> terminate_cluster.as_teardown(setups=create_cluster)
    else:
        chain(plan, wait_for_uploads, *step_then_marker)
