"""The pipeline's jobs on a real multi-process Spark cluster (standalone master, two workers), with the command
lines of the run plan, against the same jobs on ``local[2]``: the same rows, with and without faults.

Faults (each run's outputs compared with the fault-free local run's, row for row: nothing lost, nothing twice):
a worker lost (SIGKILL of its process group) in the middle of clean and of embed, a Python worker killed in the
middle of a task, and a job whose driver died midway run again, as Airflow retries a step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from pipeline_jobs import STAGES, Run, Submitted, new_run, run_jobs, submit
from s3_faults import FaultyS3Proxy
from spark_cluster import DriverUi, SparkCluster, wait_until

from fruits_dag.plan import Layout
from repo import free_port


def test_the_four_jobs_on_the_cluster_give_the_rows_of_a_local_run(cluster, local_run, uploads, weights_file, tmp_path):
    run = new_run(tmp_path / "root", uploads, weights_file)
    run_jobs(run.plan, ["clean", "embed", "pca", "report"], cluster.url, tmp_path / "logs")

    expected, got = local_run.rows(), run.rows()
    for name in STAGES:
        assert got[name] == expected[name], name
    assert len(got["clean"]) == 64 and len(got["embed"]) == 64 and len(got["rejected"]) > 10
    report = json.loads((tmp_path / "root" / "reports" / run.plan.run_date.isoformat() / "report.json").read_text())
    local = json.loads((local_run.root / "reports" / local_run.plan.run_date.isoformat() / "report.json").read_text())
    assert report["kept"] == local["kept"] == 64 and report["k"] == local["k"]
    # The jobs really ran on the cluster's executors, in their own processes.
    assert all(list(w.work_dir.glob("app-*/*/stderr")) for w in cluster.running), "an executor on each worker"


# -- faults -----------------------------------------------------------------------------------------------------------
def start_midway(job_name: str, run: Run, cluster: SparkCluster, logs: Path, attempt: str = "") -> Submitted:
    """Submit the run's job ``job_name`` to the cluster; return once some of a stage's tasks run and others have
    not finished (the moment to inject a fault)."""
    ui = DriverUi(free_port())
    job = submit(run.plan.job(job_name), cluster.url, logs, ui_port=ui.port, attempt=attempt)

    def midway() -> dict | str | None:
        if job.proc.poll() is not None:
            return f"ended with {job.proc.returncode}"
        return ui.midway()

    state = wait_until(midway, f"{job_name} running tasks", timeout=300, interval=0.2)
    assert isinstance(state, dict), f"{job_name} {state} before any fault could be injected:\n{job.output[-3000:]}"
    return job


def with_clean_of(reference: Run, run: Run) -> Run:
    """``run`` with the clean dataset of ``reference`` already in its storage, for embed to read."""
    shutil.copytree(Layout(str(reference.root)).stage("clean"), Layout(str(run.root)).stage("clean"))
    return run


@pytest.mark.parametrize("job_name", ["clean", "embed"])
def test_a_worker_lost_in_the_middle_of_a_job_changes_no_row(
    job_name, cluster, local_run, uploads, weights_file, tmp_path
):
    run = new_run(tmp_path / "root", uploads, weights_file)
    if job_name == "embed":
        with_clean_of(local_run, run)
    job = start_midway(job_name, run, cluster, tmp_path / "logs")
    cluster.kill_worker(cluster.busy_worker())  # the node is gone: its executor, Python workers and shuffle files

    assert job.wait() == 0, job.output[-5000:]
    assert "Lost executor" in job.output, job.output[-3000:]
    names = ("clean", "rejected") if job_name == "clean" else ("embed",)
    assert run.rows(names) == local_run.rows(names)


def test_a_python_worker_killed_in_the_middle_of_a_task_is_retried(cluster, local_run, uploads, weights_file, tmp_path):
    run = with_clean_of(local_run, new_run(tmp_path / "root", uploads, weights_file))
    job = start_midway("embed", run, cluster, tmp_path / "logs")
    victims = wait_until(cluster.python_workers, "a Python worker running", timeout=60, interval=0.1)
    os.kill(victims[0].pid, signal.SIGKILL)

    assert job.wait() == 0, job.output[-5000:]
    # The executor saw its Python worker go (how depends on when: "Python worker exited unexpectedly" or the
    # socket's "Connection reset") and the task was tried again.
    lost = [line for line in job.output.splitlines() if "Lost task" in line]
    assert any("Python worker exited unexpectedly" in line or "Connection reset" in line for line in lost), lost
    assert run.rows(("embed",)) == local_run.rows(("embed",))


def test_a_job_run_again_after_its_driver_died_midway_leaves_no_duplicate(
    cluster, local_run, uploads, weights_file, tmp_path
):
    """As when Airflow retries a step whose attempt died: embed killed midway (tasks had written their files,
    the job had not committed), then run again. (clean's re-runs: tests/jobs/test_job_clean.py.)"""
    run = with_clean_of(local_run, new_run(tmp_path / "root", uploads, weights_file))
    job = start_midway("embed", run, cluster, tmp_path / "logs")
    os.killpg(job.proc.pid, signal.SIGKILL)  # the driver and its Python side, with whatever it had written
    job.wait()
    again = submit(run.plan.job("embed"), cluster.url, tmp_path / "logs", attempt="-again")
    assert again.wait() == 0, again.output[-5000:]
    assert run.rows(("embed",)) == local_run.rows(("embed",))


def test_clean_reads_uploads_from_an_s3_that_throttles_and_drops_connections(
    cluster, local_run, uploads, weights_file, moto_endpoint, tmp_path
):
    """clean's listing and reads go to S3 (moto) through a proxy answering 503 SlowDown to one request in five
    and dropping the connection of one in eleven: the S3 client's retries absorb it, the rows are the same."""
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    bucket = "fruits-throttled"
    s3.create_bucket(Bucket=bucket)
    for file in sorted(p for p in uploads.rglob("*") if p.is_file()):
        s3.put_object(Bucket=bucket, Key=f"uploads/{file.relative_to(uploads)}", Body=file.read_bytes())

    with FaultyS3Proxy(moto_endpoint) as proxy:
        aws = {
            "AWS_ENDPOINT_URL_S3": proxy.url,
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        run = new_run(tmp_path / "root", f"s3://{bucket}/uploads", weights_file)
        job = submit(
            run.plan.job("clean"),
            cluster.url,
            tmp_path / "logs",
            conf={f"spark.executorEnv.{k}": v for k, v in aws.items()},  # the executors' S3 reads
            env=aws,  # the driver's first listing levels
        )
        assert job.wait() == 0, job.output[-5000:]
    assert proxy.counts["slowdown"] >= 5 and proxy.counts["dropped"] >= 3, proxy.counts
    names = ("clean", "rejected")
    assert run.rows(names, relative_to=f"s3://{bucket}/uploads") == local_run.rows(names, relative_to=f"file:{uploads}")
