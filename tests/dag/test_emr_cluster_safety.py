"""One cluster per run, always terminated: ``create_cluster`` and ``terminate_cluster`` against moto, with AWS errors
injected test-side (:meth:`moto_emr.EmrEmulator.fail_next`), under ``airflow dags test``.

Retries keep the DAG's own settings; only Airflow's global cap on the retry delay
(``AIRFLOW__CORE__MAX_TASK_RETRY_DELAY``) is lowered so that a retry comes after a second instead of minutes.
A run marked failed or cleared while its cluster works needs a real scheduler: see ``test_emr_run_stopped.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dag_harness import aws_connection, dags_test, reset_moto
from moto_emr import EmrEmulator

BUCKET = "fruits-test"
DATE = "2026-05-01"
ACTIVE = {"STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"}

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A stand-in for the MobileNetV2 .h5 file: staging only copies bytes."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_test_weights.h5"
    path.write_bytes(b"HDF5 stand-in " * 100)
    return path


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
        "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(moto_endpoint),
        "AIRFLOW_VAR_FRUITS_BUCKET": BUCKET,
        "AIRFLOW_VAR_FRUITS_BACKEND": "emr",
        "AIRFLOW_VAR_FRUITS_WEIGHTS": str(weights),
        "AIRFLOW_VAR_FRUITS_POKE_INTERVAL": "1",
        "AIRFLOW_VAR_FRUITS_SENSOR_TIMEOUT": "20",
        "AIRFLOW__CORE__MAX_TASK_RETRY_DELAY": "1",
    }
    return dags_test(DATE, env)


def clusters(boto) -> dict[str, dict]:
    """Every cluster moto knows, by id, with its tags and whether it got steps."""
    client = boto("emr")
    found = {}
    for summary in client.list_clusters()["Clusters"]:
        cluster = client.describe_cluster(ClusterId=summary["Id"])["Cluster"]
        cluster["tags"] = {t["Key"]: t["Value"] for t in cluster["Tags"]}
        cluster["steps"] = client.list_steps(ClusterId=summary["Id"])["Steps"]
        found[summary["Id"]] = cluster
    return found


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


def make_cluster(boto, run_id: str, with_step: bool = False) -> str:
    """A cluster tagged as ``run_id``'s, made behind the DAG's back (optionally with a step, as if it had worked)."""
    client = boto("emr")
    cluster_id = client.run_job_flow(
        Name="made by the test",
        ReleaseLabel="emr-7.13.0",
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
        Tags=[{"Key": "airflow:dag_id", "Value": "fruits_pipeline"}, {"Key": "airflow:run_id", "Value": run_id}],
    )["JobFlowId"]
    if with_step:
        step = {"Name": "old", "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}}
        client.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])
    return cluster_id


# `airflow dags test` names its run manual__<logical date>.
RUN_ID = f"manual__{DATE}T00:00:00+00:00"


def test_a_cluster_of_an_earlier_pass_of_the_run_is_terminated_and_not_reused(moto_endpoint, weights, boto, emr):
    """What a cleared run leaves: a cluster of the run that already ran steps. create_cluster terminates it and
    makes a new one; another run's cluster is left alone."""
    earlier = make_cluster(boto, RUN_ID, with_step=True)
    other = make_cluster(boto, "manual__2026-04-01T00:00:00+00:00")
    result = run(moto_endpoint, weights)

    assert result.returncode == 0, result.explain()
    made = clusters(boto)
    assert made[earlier]["Status"]["State"] == "TERMINATED"
    assert made[other]["Status"]["State"] in ACTIVE
    assert "earlier pass of this run" in result.log("create_cluster")
    (ours,) = [c for i, c in made.items() if i not in (earlier, other)]
    assert ours["Status"]["State"] == "TERMINATED" and len(ours["steps"]) == 4


def test_the_teardown_terminates_every_cluster_of_the_run_not_only_the_xcom_one(moto_endpoint, weights, boto, emr):
    """A cluster of the run that create_cluster never saw (made while the steps are added) ends with the run."""
    late: list[str] = []
    emr.after("AddJobFlowSteps", lambda: late.append(make_cluster(boto, RUN_ID)))
    result = run(moto_endpoint, weights)

    assert result.returncode == 0, result.explain()
    made = clusters(boto)
    (stray,) = late
    xcom_cluster = result.rendered["terminate_cluster"]["job_flow_id"]
    assert stray != xcom_cluster and set(made) == {stray, xcom_cluster}
    assert {c["Status"]["State"] for c in made.values()} == {"TERMINATED"}
    assert stray in result.log("terminate_cluster")
