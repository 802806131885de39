"""
# fruits_pipeline

Every night the photos uploaded the day before are **cleaned** (checked, de-duplicated, labelled; the rest
kept with a reason), **embedded** (MobileNetV2, 1,280 features), **reduced** (PCA) and **reported** (numbers and
plots), by the four Spark jobs in `spark_jobs/`.

* **Backends** (setting `fruits_backend`, one module each in `fruits_dag/backends/`): `emr` runs the jobs as
  steps of a transient EMR cluster that the `terminate_cluster` teardown always removes, storage in
  `s3://<fruits_bucket>/`; `local` runs the same jobs, with the same arguments, through
  `spark-submit --master local[*]` on the worker, storage in `fruits_local_root`. The backend supplies its own
  tasks (the cluster tasks exist only with `emr`).
* **Schedule**: 02:00 UTC; a run processes `uploads/<its logical date>/`, i.e. the previous UTC day's uploads
  (a manual run without a logical date processes the day it was triggered). No uploads by the sensor timeout:
  the run ends with every later task skipped, and no cluster is created.
* **Tasks**: `stage_code` (job scripts, shared module zip, bootstrap script and weights to
  `code/<content hash>/`; with `emr`, the ONNX export and the nodes' wheelhouses to `code/artifacts/`, built once;
  the run's plan to XCom) → `wait_for_uploads` → [`create_cluster` → `add_steps`] →
  for each of clean, embed, pca, report: `<job>_step` (watch the EMR step / run the local job) →
  `<job>_success` (its `_SUCCESS` marker, written during this step) → [`terminate_cluster`].
* **One writer**: `take_lease` takes the storage root's writer lease (`locks/writer.json`, a conditional write)
  before anything is written, and the `give_back_lease` teardown returns it; a second writer (another deployment
  on the same bucket, an `airflow dags test`) fails there at once, naming the holder.
* **Failures**: a failed step cancels the later ones; the error names the step, EMR's reason and the logs.
  To retry, clear the whole run: the old cluster, if still up, is terminated and a new one created.
* **Alerts** (setting `fruits_alert_topic_arn`): a task failing for good, a run past `fruits_run_deadline` and
  `fruits_alert_after_empty_nights` nights without uploads publish to the ops SNS topic. Every task has a
  timeout, and a run is stopped after `fruits_run_timeout`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, CronDataIntervalTimetable, chain, task
from airflow.sdk.exceptions import AirflowFailException

from fruits_dag import alerts, lease
from fruits_dag import settings as fruits_settings
from fruits_dag.assets import pipeline_assets
from fruits_dag.backends import from_plan, get_backend, marker_is_fresh
from fruits_dag.bundle import stage
from fruits_dag.params import RunParams, dag_params
from fruits_dag.plan import STEP_NAMES, PlanError, build_plan, run_date

# Read when the file is parsed; workers parse it again before each task, so tasks see current values.
SETTINGS = fruits_settings.read()  # one Variable look-up per parse
BACKEND = get_backend(SETTINGS)
ASSETS = pipeline_assets(SETTINGS)  # what each job completes, for DAGs scheduled on data

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "data-engineering",
    # Transient AWS errors (throttling, a blip of the API): retry with back-off 1, 2, 4... up to 10 minutes.
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=1),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=10),
    # The jobs and the step watchers set their own (fruits_sensor_timeout); a hung call never holds a slot for ever.
    "execution_timeout": dt.timedelta(seconds=SETTINGS.task_timeout),
    "on_failure_callback": alerts.failure_callbacks(SETTINGS),  # a task failed for good: tell the ops topic
}


@task(multiple_outputs=True)
def stage_code(**context: Any) -> dict[str, Any]:
    """Stage the code bundle under ``code/<digest>/`` (only missing files) and what else the backend needs (the
    EMR nodes' ONNX model and wheelhouses, built once), and return the run's plan."""
    try:
        bundle = BACKEND.bundle()
        day = run_date(context.get("logical_date"), context["dag_run"].run_after)
        params = RunParams.from_mapping(context["params"])
        prepared = BACKEND.prepare(params)
        plan = build_plan(SETTINGS, params, day, bundle, model=prepared.model)
    except (PlanError, FileNotFoundError) as exc:
        raise AirflowFailException(str(exc)) from exc  # a retry cannot fix a bad param or a missing file
    stage(bundle, plan.code_uri, BACKEND.code_store())
    return {**plan.to_xcom(), **BACKEND.plan_extras(plan, params, context["run_id"], prepared)}


def _holder(context: dict[str, Any]) -> lease.Holder:
    dag_run = context["dag_run"]
    return lease.Holder.of_run(
        dag_run.dag_id,
        dag_run.run_id,
        SETTINGS.environment,
        dt.timedelta(seconds=SETTINGS.run_timeout),  # no run outlives its dagrun_timeout
        dt.datetime.now(dt.UTC),
    )


@task(retries=0)
def take_lease(lease_uri: str, **context: Any) -> dict[str, str]:
    """Take the storage root's writer lease, before anything of the run is written; held: fail at once."""
    me = _holder(context)
    try:
        return vars(lease.take(BACKEND.lease_store(lease_uri), me, dt.datetime.now(dt.UTC)))
    except lease.LeaseHeld as exc:
        raise AirflowFailException(str(exc)) from exc


@task
def give_back_lease(lease_uri: str, **context: Any) -> bool:
    """Give the writer lease back once nothing of the run writes any more (after the cluster's end)."""
    return lease.give_back(BACKEND.lease_store(lease_uri), _holder(context))


with DAG(
    dag_id="fruits_pipeline",
    description=f"Nightly clean, embed (MobileNetV2), PCA and report of the uploaded fruit photos ({SETTINGS.backend})",
    doc_md=__doc__
    + "\n## Settings (Variable `fruits_settings`, a JSON object)\n\n"
    + fruits_settings.variables_markdown(),
    # A data-interval timetable: the run at 02:00 UTC on day D+1 has logical date D 02:00 and reads uploads/D/.
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=dag_params(),
    dagrun_timeout=dt.timedelta(seconds=SETTINGS.run_timeout),
    deadline=alerts.deadline_alert(SETTINGS, data_interval=dt.timedelta(days=1)),  # the cron below: daily
    # Lists and dicts from XCom (sensor keys, steps, cluster configuration) render as themselves, not as text.
    render_template_as_native_obj=True,
    tags=["fruits", "spark", SETTINGS.backend],
) as dag:
    plan = stage_code()
    # Nothing uploaded by the timeout: skip the rest of the run; the Nth such night in a row fails (an alert).
    wait_for_uploads = BACKEND.uploads_sensor(
        "wait_for_uploads", from_plan("uploads_pattern"), earlier=from_plan("earlier_uploads")
    )
    writer = take_lease(from_plan("lease_uri"))
    setup = BACKEND.setup()
    # Each job, then its _SUCCESS marker(s), which must have been written during this step; that sensor emits the
    # job's asset, with the job's figures as extras.
    jobs = [
        (
            BACKEND.job_task(name, index),
            BACKEND.key_sensor(
                f"{name}_success",
                from_plan(f"{name}_markers"),
                check_fn=marker_is_fresh(f"{name}_step", name, ASSETS[name]),
                outlets=[ASSETS[name]],
            ),
        )
        for index, name in enumerate(STEP_NAMES)
    ]
    after = BACKEND.after_jobs()
    chain(plan, wait_for_uploads, writer, *setup, *(t for pair in jobs for t in pair), *after)
    done_writing = BACKEND.teardown(setup, last=(list(after) or [jobs[-1][-1]])[-1])
    done_writing >> give_back_lease(from_plan("lease_uri")).as_teardown(setups=writer)
