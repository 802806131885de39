"""Test-side extension of moto's EMR: steps that run one after the other, complete (or fail on demand) and write
the ``_SUCCESS`` markers their job would write.

Stock moto leaves the first step RUNNING and the others PENDING forever and does not keep ``RunJobFlow``'s
``AutoTerminationPolicy``. :class:`EmrEmulator` patches the moto server's backend (which runs in the test process)
so that, each time a client looks at a cluster's steps (``DescribeStep``, ``ListSteps``):

* the running step completes once it has run ``step_seconds`` and has been looked at ``min_looks`` times while
  running (so a watcher sees it RUNNING however late it first looks), and the next pending step starts;
* a completing step writes its job's ``_SUCCESS`` markers into moto's S3, where the job contract puts them,
  and the report step its ``report.json`` (:attr:`EmrEmulator.report`: figures a test chooses); the jobs do not
  run: nothing else is written;
* a step named in :attr:`EmrEmulator.fail_steps` ends FAILED instead (with no ``FailureDetails``, like moto), and
  the later steps are CANCELLED as ``ActionOnFailure=CANCEL_AND_WAIT`` does; the cluster goes back to WAITING;
* a step named in :attr:`EmrEmulator.silent_steps` COMPLETES without writing its markers (a job that exits 0
  having written nothing).

It also records every ``RunJobFlow`` request as sent, for assertions on what stock moto drops, and every EMR call
with the HTTP status it got (:attr:`EmrEmulator.calls`). :meth:`EmrEmulator.fail_next` makes the next calls of an
action answer an AWS error, optionally after carrying the call out (AWS did the work, the client sees an error: with
a 5xx botocore sends the call again by itself).

Nothing in the DAG knows about this: it talks to moto over HTTP as it would to AWS.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moto.emr import models as emr_models
from moto.emr import responses as emr_responses
from moto.s3.models import s3_backends

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED"}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Fault:
    """An AWS error answered to one EMR call; ``carry_out``: the call is carried out first."""

    status: int = 400
    # EMR's InternalServerException is a 400 that botocore does not retry; InternalServerError is its 500.
    code: str = "InternalServerException"
    carry_out: bool = False

    def response(self, action: str) -> tuple[int, dict[str, str], str]:
        """The error as moto's ``call_action`` returns a response: (status, headers, JSON body)."""
        body = {"__type": self.code, "message": f"injected by the test: {action} answered {self.status}"}
        return self.status, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(body)


def job_markers(args: list[str]) -> list[str]:
    """The ``_SUCCESS`` URIs a ``spark-submit ... <job>.py <args>`` step writes, per the job contract."""
    script_index = next((i for i, a in enumerate(args) if a.endswith(".py")), None)
    if script_index is None:  # not a job of the pipeline (a step a test added by hand): no markers
        return []
    script = args[script_index].rsplit("/", 1)[-1]
    job_args = args[script_index + 1 :]
    options = {job_args[i]: job_args[i + 1] for i in range(len(job_args) - 1) if job_args[i].startswith("--")}
    if script == "clean.py":
        partition = f"ingest_date={options['--run-date']}"
        return [f"{options['--output']}/{partition}/_SUCCESS", f"{options['--rejected']}/{partition}/_SUCCESS"]
    return [f"{options['--output']}/_SUCCESS"]


def job_report(args: list[str]) -> str | None:
    """Where a report step writes its ``report.json`` (the job contract), or None for the other jobs."""
    script_index = next((i for i, a in enumerate(args) if a.endswith(".py")), None)
    if script_index is None or not args[script_index].endswith("/report.py"):
        return None
    job_args = args[script_index + 1 :]
    return f"{job_args[job_args.index('--output') + 1]}/report.json"


class EmrEmulator:
    """Installs the step behaviour described in the module docstring; use as a context manager."""

    def __init__(self, step_seconds: float = 0.0, min_looks: int = 0) -> None:
        self.step_seconds = step_seconds
        self.min_looks = min_looks
        self._looks: dict[str, int] = {}  # step id -> calls that found it RUNNING
        self.fail_steps: set[str] = set()
        self.silent_steps: set[str] = set()
        # What the report step "writes" as report.json: a night that read and kept two photos, unless a test says.
        self.report: dict[str, Any] = {"images_read": 2, "kept": 2, "rejected": 0, "pca_refitted": False}
        self.run_job_flow_requests: list[dict[str, Any]] = []
        self.calls: list[tuple[str, int]] = []
        self.described: list[str] = []  # the ClusterId of every DescribeCluster, in order
        self.undescribable: set[str] = set()  # clusters whose DescribeCluster answers AccessDenied
        self._faults: dict[str, list[Fault]] = {}
        self._before: dict[str, list[Callable[[], None]]] = {}
        self._after: dict[str, list[Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._originals: dict[tuple[type, str], Any] = {}

    # -- installing ---------------------------------------------------------------------------------------------
    def __enter__(self) -> EmrEmulator:
        emulator = self
        backend = emr_models.ElasticMapReduceBackend
        response = emr_responses.ElasticMapReduceResponse

        def advancing(name: str):
            original = getattr(backend, name)

            def wrapper(self: Any, cluster_id: str, *args: Any, **kwargs: Any) -> Any:
                emulator.advance(self.clusters[cluster_id])
                return original(self, cluster_id, *args, **kwargs)

            return original, wrapper

        for name in ("describe_step", "list_steps"):
            self._originals[(backend, name)], wrapper = advancing(name)
            setattr(backend, name, wrapper)

        original_run_job_flow = response.run_job_flow

        def run_job_flow(self: Any) -> Any:
            emulator.run_job_flow_requests.append(json.loads(self.body))
            return original_run_job_flow(self)

        self._originals[(response, "run_job_flow")] = original_run_job_flow
        response.run_job_flow = run_job_flow

        original_call_action = response.call_action

        def call_action(self: Any) -> Any:
            action = self._get_action()
            with emulator._lock:
                queue = emulator._faults.get(action) or []
                fault = queue.pop(0) if queue else None
                before = emulator._before.pop(action, [])
            for callback in before:
                callback()
            if action == "DescribeCluster":
                cluster_id = json.loads(self.body or "{}").get("ClusterId", "")
                emulator.described.append(cluster_id)
                if cluster_id in emulator.undescribable and fault is None:
                    # What IAM answers a role whose policy does not cover the cluster (moto enforces no IAM).
                    fault = Fault(400, "AccessDeniedException")
            if fault is not None and not fault.carry_out:
                result = fault.response(action)
            else:
                result = original_call_action(self)
                with emulator._lock:
                    after = emulator._after.pop(action, [])
                for callback in after:
                    callback()
                if fault is not None:
                    result = fault.response(action)
            emulator.calls.append((action, int(result[0])))
            return result

        self._originals[(response, "call_action")] = original_call_action
        response.call_action = call_action
        return self

    def fail_next(
        self,
        action: str,
        times: int = 1,
        *,
        status: int = 400,
        code: str = "InternalServerException",
        carry_out: bool = False,
    ) -> None:
        """The next ``times`` calls of ``action`` (``RunJobFlow``, ``ListClusters``...) answer an AWS error;
        with ``carry_out`` each is carried out first (a cluster made, a step added) and answered with the error."""
        with self._lock:
            self._faults.setdefault(action, []).extend([Fault(status, code, carry_out)] * times)

    def deny_describe(self, cluster_id: str) -> None:
        """From now on, ``DescribeCluster`` of ``cluster_id`` answers ``AccessDeniedException`` (another team's
        cluster, outside the Airflow role's ``project=fruits`` condition)."""
        with self._lock:
            self.undescribable.add(cluster_id)

    def before(self, action: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the server's thread) once, right before the next call of ``action`` is handled."""
        with self._lock:
            self._before.setdefault(action, []).append(callback)

    def after(self, action: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the server's thread) once, right after the next call of ``action`` is carried out."""
        with self._lock:
            self._after.setdefault(action, []).append(callback)

    def statuses(self, action: str) -> list[int]:
        """The HTTP statuses the calls of ``action`` got, in order."""
        return [status for name, status in self.calls if name == action]

    def __exit__(self, *exc: Any) -> None:
        for (cls, name), original in self._originals.items():
            setattr(cls, name, original)
        self._originals.clear()

    # -- the steps' life ----------------------------------------------------------------------------------------
    def advance(self, cluster: emr_models.Cluster) -> None:
        """Move the cluster's steps along: at most one step starts per call, so clients see it RUNNING."""
        with self._lock:
            if cluster.state.startswith("TERMINAT"):
                return
            for index, step in enumerate(cluster.steps):
                if step.state in FINAL_STATES:
                    continue
                if step.state == "PENDING":
                    step.state = "RUNNING"
                    step.start_date_time = _utcnow()
                    return
                # RUNNING (moto creates the first step RUNNING without a start time)
                if step.start_date_time is None:
                    step.start_date_time = _utcnow()
                self._looks[step.id] = looks = self._looks.get(step.id, 0) + 1
                if (_utcnow() - step.start_date_time).total_seconds() < self.step_seconds or looks < self.min_looks:
                    return
                step.end_date_time = _utcnow()
                if step.name in self.fail_steps:
                    step.state = "FAILED"
                    for later in cluster.steps[index + 1 :]:
                        if later.state == "PENDING":
                            later.state = "CANCELLED"
                    break
                if step.name not in self.silent_steps:
                    self._write_markers(cluster, step)
                step.state = "COMPLETED"
            cluster.state = "WAITING"

    def _write_markers(self, cluster: emr_models.Cluster, step: emr_models.Step) -> None:
        backend = cluster.emr_backend
        s3 = s3_backends[backend.account_id][backend.partition]
        report = job_report(step.args)
        if report:  # before the marker, as the job writes it
            bucket, key = report.removeprefix("s3://").split("/", 1)
            s3.put_object(bucket, key, json.dumps(self.report).encode())
        for uri in job_markers(step.args):
            bucket, key = uri.removeprefix("s3://").split("/", 1)
            s3.put_object(bucket, key, b"")


def serve(port: int, bucket: str | None, upload_date: str | None, fail_steps: list[str]) -> None:
    """A moto server with this emulator, for running ``airflow dags test`` by hand (see README.md)."""
    import time

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    with EmrEmulator() as emulator:
        emulator.fail_steps.update(fail_steps)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
        if bucket:
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            s3.create_bucket(Bucket=bucket)
            if upload_date:
                s3.put_object(Bucket=bucket, Key=f"uploads/{upload_date}/demo.jpg", Body=b"placeholder")
        print(f"moto (S3, EMR with completing steps) on {endpoint}; Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            server.stop()


if __name__ == "__main__":
    import argparse

    cli = argparse.ArgumentParser(description="moto server whose EMR steps complete (fruits_pipeline's tests)")
    cli.add_argument("--port", type=int, default=5000)
    cli.add_argument("--bucket", help="create this bucket")
    cli.add_argument("--upload-date", help="put one placeholder upload under uploads/<date>/ of the bucket")
    cli.add_argument("--fail-step", action="append", default=[], help="make this step fail (repeatable)")
    options = cli.parse_args()
    serve(options.port, options.bucket, options.upload_date, options.fail_step)
