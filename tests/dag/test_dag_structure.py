"""The DAG as Airflow parses it: imports, schedule, retries, task order, trigger rules, sensors, params."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from typing import Any

import pytest

from dag_harness import REPO_ROOT, SETTINGS_ENV

EMR_ORDER = [
    "stage_code",
    "wait_for_uploads",
    "take_lease",
    "create_cluster",
    "add_steps",
    "clean_step",
    "clean_success",
    "embed_step",
    "embed_success",
    "pca_step",
    "pca_success",
    "report_step",
    "report_success",
    "publish_metrics",
    "terminate_cluster",
    "give_back_lease",
]
LOCAL_ORDER = [t for t in EMR_ORDER if t not in ("create_cluster", "add_steps", "publish_metrics", "terminate_cluster")]
TEARDOWNS = {"terminate_cluster", "give_back_lease"}
TOPIC = "arn:aws:sns:eu-west-1:123456789012:fruits-ops"
SENSORS = ["wait_for_uploads", "clean_success", "embed_success", "pca_success", "report_success"]

pytestmark = pytest.mark.usefixtures("airflow_db")


def parse(monkeypatch, variable: str | None = None, **settings: Any):
    """Parse the DAG folder the way the dag-processor does, with these settings (and no others) in the Variable
    ``fruits_settings``; or with ``variable`` as its text."""
    from airflow.dag_processing.dagbag import BundleDagBag

    for name in [n for n in os.environ if n.startswith("AIRFLOW_VAR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(SETTINGS_ENV, variable if variable is not None else json.dumps(settings))
    # What the dag-processor uses: it puts the bundle's folder (dags/) on sys.path, so fruits_dag imports.
    return BundleDagBag(dag_folder=str(REPO_ROOT / "dags"), bundle_path=REPO_ROOT / "dags")


@pytest.fixture
def emr_dag(monkeypatch):
    bag = parse(monkeypatch, fruits_bucket="fruits-prod", fruits_poke_interval="300", fruits_sensor_timeout="7200")
    assert bag.import_errors == {}
    return bag.dags["fruits_pipeline"]


@pytest.fixture
def local_dag(monkeypatch, tmp_path):
    bag = parse(monkeypatch, fruits_local_root=str(tmp_path))
    assert bag.import_errors == {}
    return bag.dags["fruits_pipeline"]


def test_dag_folder_imports_without_errors_in_both_modes(monkeypatch, tmp_path):
    assert parse(monkeypatch, fruits_bucket="fruits-prod").import_errors == {}
    assert parse(monkeypatch, fruits_local_root=str(tmp_path)).import_errors == {}


def test_a_bad_variable_is_an_import_error_that_names_it(monkeypatch):
    errors = parse(monkeypatch, fruits_backend="emr").import_errors
    assert len(errors) == 1 and "fruits_bucket is required" in next(iter(errors.values()))
    errors = parse(monkeypatch, fruits_bucket="bucket-one", fruits_poke_interval="soon").import_errors
    assert "Setting fruits_poke_interval must be a whole number" in next(iter(errors.values()))


def test_settings_are_one_json_variable_and_a_typo_or_bad_json_is_named(monkeypatch):
    # JSON numbers and lists are taken as they are.
    bag = parse(
        monkeypatch,
        fruits_bucket="bucket-one",
        fruits_sensor_timeout=7200,
        fruits_emr_spot_instance_types=["m5.xlarge", "m6i.xlarge"],
    )
    assert bag.import_errors == {}
    assert bag.dags["fruits_pipeline"].task_dict["clean_step"].timeout == 7200
    errors = parse(monkeypatch, fruits_bucket="bucket-one", fruits_sensor_timout=7200).import_errors
    message = next(iter(errors.values()))
    assert (
        "Variable fruits_settings has no setting 'fruits_sensor_timout' (did you mean fruits_sensor_timeout?)"
        in message
    )
    errors = parse(monkeypatch, variable='{"fruits_bucket": "bucket-one",}').import_errors
    assert "Variable fruits_settings must be a JSON object of settings" in next(iter(errors.values()))
    errors = parse(monkeypatch, variable='["fruits_bucket"]').import_errors
    assert "must be a JSON object of settings, got list" in next(iter(errors.values()))


def test_a_parse_looks_up_one_variable(monkeypatch):
    """With a secrets backend every Variable.get is a call: a parse makes exactly one, for fruits_settings."""
    from airflow.sdk import Variable

    asked = []
    real_get = Variable.get.__func__

    def counting_get(cls, key, *args, **kwargs):
        asked.append(key)
        return real_get(cls, key, *args, **kwargs)

    monkeypatch.setattr(Variable, "get", classmethod(counting_get))
    bag = parse(monkeypatch, fruits_bucket="fruits-prod", fruits_alert_topic_arn=TOPIC)
    assert bag.import_errors == {} and "fruits_pipeline" in bag.dags
    assert asked == ["fruits_settings"]


def test_schedule_retries_tags_and_docs(emr_dag):
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    from fruits_dag.plan import run_date

    # The nightly run after 2026-05-01 starts at 02:00 UTC on the 2nd and processes uploads/2026-05-01/.
    timetable = coerce_to_core_timetable(emr_dag.timetable)
    assert timetable.summary == "0 2 * * *"
    earliest = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=earliest, latest=None, catchup=True)
    )
    assert info.run_after == dt.datetime(2026, 5, 2, 2, 0, tzinfo=dt.UTC)
    assert run_date(info.logical_date, info.run_after) == dt.date(2026, 5, 1)
    assert emr_dag.catchup is False and emr_dag.max_active_runs == 1
    assert {"fruits", "spark", "emr"} <= set(emr_dag.tags)
    assert emr_dag.description and "fruits_bucket" in emr_dag.doc_md and "fruits_sensor_timeout" in emr_dag.doc_md
    for task in emr_dag.tasks:
        if task.task_id in ("create_cluster", "add_steps", "terminate_cluster", "stage_code"):
            assert task.retries == 2, task.task_id
            assert task.retry_exponential_backoff and task.retry_delay == dt.timedelta(minutes=1)
            assert task.max_retry_delay == dt.timedelta(minutes=10)


def test_emr_task_order_and_trigger_rules(emr_dag):
    tasks = emr_dag.task_dict
    assert set(tasks) == set(EMR_ORDER)
    for upstream, downstream in zip(EMR_ORDER, EMR_ORDER[1:], strict=False):
        assert tasks[downstream].upstream_task_ids >= {upstream}, (upstream, downstream)
    # Nothing skips a step: every task but the teardowns has exactly its predecessor upstream.
    for upstream, downstream in zip(EMR_ORDER[:-3], EMR_ORDER[1:-2], strict=False):
        assert tasks[downstream].upstream_task_ids == {upstream}, downstream
    assert tasks["terminate_cluster"].upstream_task_ids == {"publish_metrics", "create_cluster"}
    # The lease goes back once the cluster is gone: nothing of the run writes after that.
    assert tasks["give_back_lease"].upstream_task_ids == {"terminate_cluster", "take_lease"}
    assert tasks["create_cluster"].is_setup and tasks["take_lease"].is_setup
    assert all(tasks[t].is_teardown and tasks[t].trigger_rule == "all_done_setup_success" for t in TEARDOWNS)
    assert {t.trigger_rule for t in emr_dag.tasks if t.task_id not in TEARDOWNS} == {"all_success"}
    # A held lease cannot be fixed by retrying: the second writer fails at once.
    assert tasks["take_lease"].retries == 0


def test_local_mode_has_the_same_tasks_without_the_cluster(local_dag):
    tasks = local_dag.task_dict
    assert set(tasks) == set(LOCAL_ORDER)
    for upstream, downstream in zip(LOCAL_ORDER[:-1], LOCAL_ORDER[1:-1], strict=False):
        assert tasks[downstream].upstream_task_ids == {upstream}
    assert tasks["give_back_lease"].upstream_task_ids == {"report_success", "take_lease"}
    assert {type(tasks[f"{n}_step"]).__name__ for n in ("clean", "embed", "pca", "report")} == {"LocalSparkJobOperator"}
    assert type(tasks["wait_for_uploads"]).__name__ == "LocalUploadsSensor"
    assert {type(tasks[s]).__name__ for s in SENSORS[1:]} == {"LocalKeySensor"}
    assert "local" in local_dag.tags


def test_sensors_reschedule_with_the_configured_timing(emr_dag):
    for task_id in [*SENSORS, "clean_step", "embed_step", "pca_step", "report_step"]:
        task = emr_dag.task_dict[task_id]
        assert (task.mode, task.poke_interval, task.timeout) == ("reschedule", 300, 7200), task_id
    # wait_for_uploads skips (or alerts) by itself: soft_fail would also skip on errors.
    assert not any(emr_dag.task_dict[s].soft_fail for s in SENSORS)
    assert emr_dag.task_dict["wait_for_uploads"].wildcard_match is True
    assert emr_dag.task_dict["wait_for_uploads"].quiet_nights == 3


def test_every_task_and_the_run_have_a_timeout(emr_dag):
    assert emr_dag.dagrun_timeout == dt.timedelta(hours=20)
    for task in emr_dag.tasks:
        limit = dt.timedelta(seconds=7200 + 600) if task.task_id.endswith("_step") else dt.timedelta(hours=1)
        assert task.execution_timeout == limit, task.task_id


def test_without_a_topic_nothing_is_told_and_with_one_every_task_and_the_deadline_are(monkeypatch, emr_dag):
    assert emr_dag.deadline is None
    assert not any(t.on_failure_callback for t in emr_dag.tasks)

    bag = parse(monkeypatch, fruits_bucket="fruits-prod", fruits_alert_topic_arn=TOPIC, fruits_run_deadline="5400")
    assert bag.import_errors == {}
    dag = bag.dags["fruits_pipeline"]
    assert all(len(t.on_failure_callback) == 1 for t in dag.tasks)
    (deadline,) = dag.deadline
    assert deadline.interval == dt.timedelta(days=1, minutes=90)  # from the logical date: the night's start + 90 min
    assert type(deadline.reference).__name__ == "DagRunLogicalDateDeadline"
    assert deadline.callback.path == "airflow.providers.amazon.aws.notifications.sns.SnsNotifier"
    assert deadline.callback.kwargs["target_arn"] == TOPIC


def test_a_deadline_past_the_run_timeout_or_a_bad_topic_is_an_import_error(monkeypatch):
    errors = parse(monkeypatch, fruits_bucket="b-one", fruits_run_deadline="80000").import_errors
    assert "fruits_run_deadline (80000 s) must be less than fruits_run_timeout" in next(iter(errors.values()))
    errors = parse(monkeypatch, fruits_bucket="b-one", fruits_alert_topic_arn="ops-topic").import_errors
    assert "fruits_alert_topic_arn must be an SNS topic ARN" in next(iter(errors.values()))


def test_params_are_validated_with_clear_messages(emr_dag):
    from airflow.sdk.exceptions import ParamValidationError

    assert emr_dag.params.validate() == {
        "input_uri": "uploads",
        "mode": "incremental",
        "pca_k": None,
        "pca_variance": 0.95,
        "pca_refit": "auto",
        "core_instance_count": 2,
        "core_instance_type": "m5.xlarge",
        "spot_task_instances": 0,
        "max_instances": None,
    }
    for name, bad in [
        ("mode", "everything"),
        ("pca_k", 0),
        ("pca_variance", 1.5),
        ("core_instance_count", "two"),
        ("core_instance_type", "big one"),
        ("pca_refit", "sometimes"),
        ("input_uri", ""),
        ("spot_task_instances", -1),
        ("max_instances", 0),
    ]:
        params = copy.deepcopy(emr_dag.params)
        with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}"):
            params[name] = bad


def test_docs_list_every_variable_and_param(emr_dag):
    from fruits_dag.settings import SETTINGS

    docs = (REPO_ROOT / "docs" / "dag.md").read_text(encoding="utf-8")
    for setting in SETTINGS:
        assert f"| `{setting.name}` | {setting.shown_default} |" in docs, setting.name
    for param in emr_dag.params:
        assert f"| `{param}` |" in docs, param
