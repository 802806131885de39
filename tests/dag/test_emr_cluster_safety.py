"""One cluster per run, always terminated: ``create_cluster`` and ``terminate_cluster`` against moto, with AWS errors
injected test-side (:meth:`moto_emr.EmrEmulator.fail_next`).

* Under ``airflow dags test``: retries of ``create_cluster``, ``RunJobFlow`` resent by botocore, a failing last try,
  clusters the task did not make. Retries keep the DAG's own settings; only Airflow's global cap on the retry delay
  (``AIRFLOW__CORE__MAX_TASK_RETRY_DELAY``) is lowered so that a retry comes after a second instead of minutes.
* A run marked failed or cleared while a step runs: what Airflow does then (keep the teardown, kill or reset the
  tasks) is the scheduler's and the triggerer's work, which ``dags test`` does not do (it runs triggers inline,
  to their end). Those tests start a real Airflow (api-server, scheduler, dag-processor, triggerer; the harness of
  ``tests/ui/airflow_servers.py``) and act through its REST API, as an operator would in the UI.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dag_harness import (
    AIRFLOW_HOME,
    DAG_ID,
    REPO_ROOT,
    OpsTopic,
    dags_test,
    emr_clusters,
    emr_variables,
    reset_moto,
    with_settings,
)
from moto_emr import EmrEmulator

BUCKET = "fruits-test"
DATE = "2026-05-01"
ACTIVE = {"STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"}

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def emr(moto_endpoint, boto) -> EmrEmulator:
    """A fresh moto (bucket and uploads of DATE) and the EMR emulator installed."""
    reset_moto(moto_endpoint)
    s3 = boto("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=f"uploads/{DATE}/IMG_0001.jpg", Body=b"jpeg bytes")
    with EmrEmulator() as emulator:
        yield emulator


def run(moto_endpoint: str, weights: Path):
    """``airflow dags test`` of DATE on the EMR backend, retries one second apart."""
    env = {
        **with_settings(emr_variables(moto_endpoint, BUCKET, weights), fruits_sensor_timeout=20),
        "AIRFLOW__CORE__MAX_TASK_RETRY_DELAY": "1",
    }
    return dags_test(DATE, env)


def clusters(boto) -> dict[str, dict]:
    """Every cluster moto knows, by id, with its tags and whether it got steps."""
    return emr_clusters(boto("emr"))


def test_a_create_retry_after_an_error_following_run_job_flow_reuses_the_cluster(moto_endpoint, weights, boto, emr):
    # The first DescribeCluster comes after RunJobFlow answered 200 (the provider reads the cluster's LogUri).
    emr.fail_next("DescribeCluster")
    result = run(moto_endpoint, weights)

    assert result.returncode == 0, result.explain()
    assert set(result.states.values()) == {"success"}, result.states
    actions = [a for a, _ in emr.calls]
    failed = emr.calls.index(("DescribeCluster", 400))
    assert ("RunJobFlow", 200) in emr.calls[:failed], emr.calls
    assert emr.statuses("RunJobFlow") == [200], "the retry must not create a second cluster"
    assert "TerminateJobFlows" in actions
    log = result.log("create_cluster")
    assert "left for the retry" in log and "Reusing EMR cluster" in log

    (cluster,) = clusters(boto).values()
    assert cluster["Status"]["State"] == "TERMINATED"
    assert cluster["tags"]["airflow:run_id"] == result.run_id
    assert [s["Name"] for s in reversed(cluster["steps"])] == ["clean", "embed", "pca", "report"]


@pytest.mark.parametrize("server_errors", [1, 5], ids=["answered-500-once", "answered-500-every-attempt"])
def test_a_run_job_flow_carried_out_but_answered_500_leaves_no_cluster_running(
    moto_endpoint, weights, boto, emr, server_errors
):
    """botocore resends a RunJobFlow answered with a 5xx (5 attempts in its legacy retry mode): each one that AWS
    carried out is one more cluster of the run. Once: the second attempt succeeds, the task keeps the oldest
    cluster. Every attempt: the task fails, and its retry finds the clusters and keeps the oldest."""
    emr.fail_next("RunJobFlow", server_errors, status=500, code="InternalServerError", carry_out=True)
    result = run(moto_endpoint, weights)

    assert result.returncode == 0, result.explain()
    assert set(result.states.values()) == {"success"}, result.states
    made = clusters(boto)
    statuses = emr.statuses("RunJobFlow")
    assert statuses[:server_errors] == [500] * server_errors and len(made) == len(statuses) >= 2, statuses
    assert {c["tags"]["airflow:run_id"] for c in made.values()} == {result.run_id}
    assert {c["Status"]["State"] for c in made.values()} == {"TERMINATED"}
    with_steps = [c for c in made.values() if c["steps"]]
    (used,) = with_steps
    oldest = min(made.values(), key=lambda c: (c["Status"]["Timeline"]["CreationDateTime"], c["Id"]))
    assert used["Id"] == oldest["Id"] == result.rendered["terminate_cluster"]["job_flow_id"]


def test_add_steps_carried_out_but_answered_500_adds_each_step_once(moto_endpoint, weights, boto, emr):
    """AddJobFlowSteps has no idempotency token: the call is not resent by botocore, and the task's retry finds the
    steps the lost call added and watches those."""
    emr.fail_next("AddJobFlowSteps", status=500, code="InternalServerError", carry_out=True)
    result = run(moto_endpoint, weights)

    assert result.returncode == 0, result.explain()
    assert emr.statuses("AddJobFlowSteps") == [500]  # one call, not resent; the retry only listed the steps
    (cluster,) = clusters(boto).values()
    assert [s["Name"] for s in cluster["steps"]] == ["report", "pca", "embed", "clean"]  # each once (newest first)
    assert {s["Status"]["State"] for s in cluster["steps"]} == {"COMPLETED"}
    assert "The steps are already on cluster" in result.log("add_steps")


def test_a_create_task_failing_after_the_cluster_exists_terminates_it(moto_endpoint, weights, boto, emr):
    """The last try fails after RunJobFlow made the cluster (tries 1 and 2 fail before, listing the clusters):
    no retry will reuse it and the teardown does not run after a failed setup, so the task terminates it."""
    emr.fail_next("ListClusters", 2)
    emr.fail_next("RunJobFlow", carry_out=True)
    result = run(moto_endpoint, weights)

    assert result.returncode != 0
    assert result.states["create_cluster"] == "failed", result.explain()
    assert result.states["add_steps"] == "upstream_failed"
    assert result.states["terminate_cluster"] != "success"
    assert emr.statuses("ListClusters")[:2] == [400, 400] and emr.statuses("RunJobFlow") == [400]
    assert "the last try of create_cluster failed" in result.log("create_cluster")
    (cluster,) = clusters(boto).values()
    assert cluster["Status"]["State"] == "TERMINATED"
    assert not cluster["steps"]


def make_cluster(
    boto,
    run_id: str | None,
    with_step: bool = False,
    environment: str = BUCKET,
    name: str = "fruits-pipeline-made-by-the-test",
) -> str:
    """A cluster tagged as ``run_id``'s in ``environment`` (the DAG's default: its bucket), made behind the DAG's
    back (optionally with a step, as if it had worked); ``run_id`` None: no tags at all (another team's)."""
    client = boto("emr")
    tags = [
        {"Key": "airflow:dag_id", "Value": "fruits_pipeline"},
        {"Key": "airflow:run_id", "Value": run_id or ""},
        {"Key": "fruits:environment", "Value": environment},
    ]
    cluster_id = client.run_job_flow(
        Name=name,
        ReleaseLabel="emr-7.13.0",
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
        Tags=tags if run_id is not None else [],
    )["JobFlowId"]
    if with_step:
        step = {"Name": "old", "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}}
        client.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])
    return cluster_id


def current_run_id() -> str:
    """The run id of the latest run of DATE (``dags test`` names it after the time it started)."""
    with sqlite3.connect(AIRFLOW_HOME / "airflow.db") as db:
        (run_id,) = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? AND logical_date LIKE ? ORDER BY id DESC LIMIT 1",
            (DAG_ID, f"{DATE}%"),
        ).fetchone()
    return run_id


def test_a_cluster_of_an_earlier_pass_of_the_run_is_terminated_and_not_reused(moto_endpoint, weights, boto, emr):
    """What a cleared run leaves: a cluster of the run that already ran steps. create_cluster terminates it and
    makes a new one; another run's cluster is left alone."""
    made_before: list[str] = []
    # Right before create_cluster first lists the clusters, the run is known: give it a cluster that ran steps.
    emr.before("ListClusters", lambda: made_before.append(make_cluster(boto, current_run_id(), with_step=True)))
    other = make_cluster(boto, "manual__2026-04-01T00:00:00+00:00")
    result = run(moto_endpoint, weights)

    assert result.returncode == 0, result.explain()
    (earlier,) = made_before
    made = clusters(boto)
    assert made[earlier]["tags"]["airflow:run_id"] == result.run_id
    assert made[earlier]["Status"]["State"] == "TERMINATED"
    assert made[other]["Status"]["State"] in ACTIVE
    assert "earlier pass of this run" in result.log("create_cluster")
    (ours,) = [c for i, c in made.items() if i not in (earlier, other)]
    assert ours["Status"]["State"] == "TERMINATED" and len(ours["steps"]) == 4


def test_the_teardown_terminates_every_cluster_of_the_run_not_only_the_xcom_one(moto_endpoint, weights, boto, emr):
    """A cluster of the run that create_cluster never saw (made while the steps are added) ends with the run."""
    late: list[str] = []
    emr.after("AddJobFlowSteps", lambda: late.append(make_cluster(boto, current_run_id())))
    result = run(moto_endpoint, weights)

    assert result.returncode == 0, result.explain()
    made = clusters(boto)
    (stray,) = late
    xcom_cluster = result.rendered["terminate_cluster"]["job_flow_id"]
    assert stray != xcom_cluster and set(made) == {stray, xcom_cluster}
    assert {c["Status"]["State"] for c in made.values()} == {"TERMINATED"}
    assert stray in result.log("terminate_cluster")


def test_another_teams_clusters_are_never_described_and_an_undescribable_one_breaks_nothing(
    moto_endpoint, weights, boto, emr
):
    """The account's other clusters: one of another team (not the pipeline's name) is not even described; one named
    like the pipeline's that the Airflow role may not describe (IAM's AccessDenied, injected) is skipped."""
    foreign = make_cluster(boto, None, name="analytics-nightly-etl")
    denied = make_cluster(boto, None, name="fruits-pipeline-someone-elses")
    emr.deny_describe(foreign)
    emr.deny_describe(denied)
    result = run(moto_endpoint, weights)
    described = list(emr.described)
    emr.undescribable.clear()  # for this test's own look-up below

    assert result.returncode == 0, result.explain()
    assert foreign not in described and denied in described
    made = clusters(boto)
    assert made[foreign]["Status"]["State"] in ACTIVE and made[denied]["Status"]["State"] in ACTIVE
    assert "may not be described" in result.log("create_cluster")
    assert "may not be described" in result.log("terminate_cluster")
    (ours,) = [c for i, c in made.items() if i not in (foreign, denied)]
    assert ours["Status"]["State"] == "TERMINATED" and len(ours["steps"]) == 4


def test_two_environments_sharing_run_ids_never_touch_each_others_clusters(moto_endpoint, weights, boto, emr):
    """Staging and production in one account: the same dag and run ids, other environments. Staging's cluster of
    'this' run (even one that ran steps, which would be terminated as an earlier pass) is left alone."""
    staging: list[str] = []
    emr.before(
        "ListClusters",
        lambda: staging.append(make_cluster(boto, current_run_id(), with_step=True, environment="fruits-staging")),
    )
    result = run(moto_endpoint, weights)

    assert result.returncode == 0, result.explain()
    (theirs,) = staging
    made = clusters(boto)
    assert made[theirs]["tags"]["airflow:run_id"] == result.run_id
    assert made[theirs]["Status"]["State"] in ACTIVE
    (ours,) = [c for i, c in made.items() if i != theirs]
    assert ours["tags"]["fruits:environment"] == BUCKET
    assert ours["Status"]["State"] == "TERMINATED" and len(ours["steps"]) == 4
    assert theirs not in result.log("terminate_cluster")


# -- a run stopped while its step runs, a run past its deadline: on a real Airflow -----------------------------------
OPS_TOPIC_ARN = f"arn:aws:sns:us-east-1:123456789012:{OpsTopic.NAME}"  # what moto names the topic OpsTopic creates
DEADLINE_SECONDS = 40


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, moto_endpoint, weights) -> Iterator[Any]:
    """A real Airflow with a triggerer, the pipeline on the EMR backend against moto, unpaused, nothing scheduled."""
    sys.path.insert(0, str(REPO_ROOT / "tests" / "ui"))
    from airflow_servers import COMPONENTS, AirflowServers

    servers = AirflowServers(
        home=tmp_path_factory.mktemp("airflow-servers"),
        dags_folder=REPO_ROOT / "dags",
        plugins_folder=REPO_ROOT / "plugins",
        components=(*COMPONENTS, "triggerer"),
        extra_env={
            **with_settings(
                emr_variables(moto_endpoint, BUCKET, weights),
                fruits_sensor_timeout=600,
                fruits_alert_topic_arn=OPS_TOPIC_ARN,
                fruits_run_deadline=DEADLINE_SECONDS,
            ),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        },
    )
    servers.migrate()
    servers.start()
    try:
        servers.wait_healthy()
        servers.login()
        servers.wait_for_dag(DAG_ID)
        assert servers.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False}).ok
        yield servers
    except BaseException:
        print(servers.logs(100), servers.task_logs(60))
        raise
    finally:
        servers.stop()


def wait_until(check: Callable[[], Any], what: str, airflow: Any, timeout: float = 240) -> Any:
    """Poll ``check`` every 2 s until it returns something true; the servers' logs on time-out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        airflow.check_alive()
        if value := check():
            return value
        time.sleep(2)
    raise AssertionError(f"not {what} after {timeout} s\n{airflow.logs(60)}\n{airflow.task_logs(40)}")


def task_states(airflow: Any, run_id: str) -> dict[str, str | None]:
    resp = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
    assert resp.ok, resp.text
    return {ti["task_id"]: ti["state"] for ti in resp.json()["task_instances"]}


def start_run_until_the_clean_step_runs(
    airflow: Any, boto, date: str, logical_date: str | None = None
) -> tuple[str, str]:
    """Trigger a run of ``date`` (at midnight, or at ``logical_date``) and wait until its clean step is deferred;
    returns (run id, cluster id)."""
    boto("s3").put_object(Bucket=BUCKET, Key=f"uploads/{date}/IMG_0001.jpg", Body=b"jpeg bytes")
    resp = airflow.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": logical_date or f"{date}T00:00:00Z"})
    assert resp.ok, resp.text
    run_id = resp.json()["dag_run_id"]
    wait_until(lambda: task_states(airflow, run_id).get("clean_step") == "deferred", "clean_step deferred", airflow)
    (cluster,) = [c for c in clusters(boto).values() if c["Status"]["State"] in ACTIVE]
    assert cluster["tags"]["airflow:run_id"] == run_id
    assert {s["Name"]: s["Status"]["State"] for s in cluster["steps"]}["clean"] == "RUNNING"
    return run_id, cluster["Id"]


def test_a_run_marked_failed_while_a_step_runs_terminates_its_cluster(airflow, moto_endpoint, boto, emr):
    emr.step_seconds = 3600  # the clean step runs until the run is stopped
    run_id, cluster_id = start_run_until_the_clean_step_runs(airflow, boto, "2026-06-01")

    resp = airflow.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}", json={"state": "failed"})
    assert resp.ok, resp.text
    # Airflow 3 fails the running tasks, skips the pending ones and still runs the teardown.
    wait_until(
        lambda: clusters(boto)[cluster_id]["Status"]["State"] == "TERMINATED", "cluster terminated", airflow, 120
    )
    airflow.wait_for_run(DAG_ID, run_id, timeout=120)
    # (Airflow 3.3 then computes the run's state from its leaves, all skipped: it ends "success".)
    states = task_states(airflow, run_id)
    assert states["clean_step"] == "failed" and states["terminate_cluster"] == "success", states
    assert [c["Status"]["State"] for c in clusters(boto).values()] == ["TERMINATED"]


def test_a_run_cleared_while_a_step_runs_terminates_its_cluster(airflow, moto_endpoint, boto, emr):
    emr.step_seconds = 3600
    run_id, first = start_run_until_the_clean_step_runs(airflow, boto, "2026-06-02")

    resp = airflow.api("POST", f"/dags/{DAG_ID}/dagRuns/{run_id}/clear", json={"dry_run": False})
    assert resp.ok, f"{resp.text}\n{airflow.logs(120)}"
    # The run starts again: its create_cluster finds the cluster that ran steps, terminates it, makes a new one.
    wait_until(lambda: clusters(boto)[first]["Status"]["State"] == "TERMINATED", "first cluster terminated", airflow)
    second = wait_until(
        lambda: [i for i, c in clusters(boto).items() if c["Status"]["State"] in ACTIVE and c["steps"]],
        "a new cluster with the steps",
        airflow,
    )
    assert second[0] != first
    # End the second pass the other way, and nothing of the run is left running.
    wait_until(lambda: task_states(airflow, run_id).get("clean_step") == "deferred", "clean_step deferred", airflow)
    assert airflow.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}", json={"state": "failed"}).ok
    airflow.wait_for_run(DAG_ID, run_id, timeout=120)
    assert {c["Status"]["State"] for c in clusters(boto).values()} == {"TERMINATED"}
    assert {c["tags"]["airflow:run_id"] for c in clusters(boto).values()} == {run_id}


def test_a_run_past_its_deadline_tells_the_ops_topic_once_and_goes_on(airflow, moto_endpoint, boto, emr):
    ops = OpsTopic(boto)
    assert ops.arn == OPS_TOPIC_ARN
    emr.step_seconds = 3600  # the clean step outlasts the deadline
    # A night that started now (its logical date is a day ago): its deadline is DEADLINE_SECONDS from now.
    logical = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)
    started = time.monotonic()
    run_id, cluster_id = start_run_until_the_clean_step_runs(
        airflow, boto, logical.date().isoformat(), logical.isoformat()
    )

    # The scheduler sees the deadline pass and queues the callback; the triggerer publishes.
    (alert,) = wait_until(ops.messages, "a deadline message on the ops topic", airflow, timeout=DEADLINE_SECONDS + 150)
    assert time.monotonic() - started >= DEADLINE_SECONDS - 5
    assert alert["Subject"] == f"[fruits-pipeline] {DAG_ID} missed its deadline"
    assert f"Run {run_id} of {DAG_ID} had not ended by" in alert["Message"]
    assert "It goes on" in alert["Message"]
    # Told, not stopped: the step is still watched, and nothing is told twice.
    assert task_states(airflow, run_id)["clean_step"] == "deferred"
    time.sleep(10)
    assert ops.messages() == []

    assert airflow.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}", json={"state": "failed"}).ok
    wait_until(
        lambda: clusters(boto)[cluster_id]["Status"]["State"] == "TERMINATED", "cluster terminated", airflow, 120
    )
