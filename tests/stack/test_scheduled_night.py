"""A night as production runs it: the Airflow of docker-compose.yaml (api-server, scheduler, dag-processor and
triggerer as processes, LocalExecutor, PostgreSQL; ``airflow_stack.py``) and the EMR backend on moto.

Nobody triggers the run: compose's DAGs are unpaused at creation, so once the DAG processor has parsed the DAG the
scheduler starts the night whose data interval has ended (the DAG's own schedule, ``catchup=False``: the latest
one). Its step watchers defer to the triggerer. The EMR steps run until the test lets them complete
(:class:`HeldSteps`), once their watcher is deferred: with steps on a clock, a step shorter than the tasks' start-up
completes before its watcher first looks, and the watcher never defers.

1. The night runs end to end: every task succeeds, each step watcher was deferred and watched by the triggerer, one
   cluster, terminated, and every step's ``_SUCCESS`` markers (and the report) in S3.
2. The scheduler is killed (SIGKILL to its process group, workers included) while a step watcher is deferred; the
   step completes while no scheduler runs; a new scheduler is started: the night still ends ``success``, with one
   cluster, terminated, and its outputs complete. The second night is the same night again: the DAG is deleted
   (REST API) and parsed again, and the scheduler starts its latest night as for a new deployment.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from airflow_stack import ComposeAirflow

from airflow_servers import AirflowServers
from dag_harness import DAG_ID, SETTINGS_ENV, emr_clusters, emr_variables, reset_moto
from fruits_dag.plan import STEP_NAMES
from moto_emr import EmrEmulator, _utcnow, job_markers, job_report

BUCKET = "fruits-night"
TIMEOUT = 600  # seconds a night may take here (2 cores shared with other tests)


class HeldSteps(EmrEmulator):
    """moto's EMR steps as :class:`EmrEmulator` runs them, except that the running step completes only once its
    name is in :attr:`released`."""

    def __init__(self) -> None:
        super().__init__(step_seconds=0)
        self.released: set[str] = set()

    def advance(self, cluster: Any) -> None:
        with self._lock:
            running = next((s for s in cluster.steps if s.state == "RUNNING"), None)
            if running is not None and running.name not in self.released:
                running.start_date_time = running.start_date_time or _utcnow()
                return
        super().advance(cluster)


def latest_night(now: dt.datetime) -> dt.date:
    """The logical date of the latest night whose interval has ended (cron 0 2 * * * UTC): the run at 02:00 on day
    D+1 processes day D."""
    return (now - dt.timedelta(hours=2)).date() - dt.timedelta(days=1)


def put_uploads(boto, night: dt.date) -> None:
    boto("s3").put_object(Bucket=BUCKET, Key=f"uploads/{night.isoformat()}/IMG_0001.jpg", Body=b"jpeg bytes")


def fresh_moto(moto_endpoint: str, boto, night: dt.date) -> None:
    """Nothing in moto but the bucket and the night's uploads."""
    reset_moto(moto_endpoint)
    boto("s3").create_bucket(Bucket=BUCKET)
    put_uploads(boto, night)


@pytest.fixture(scope="module")
def emr(moto_endpoint: str) -> Iterator[HeldSteps]:
    with HeldSteps() as emulator:
        yield emulator


@dataclass
class Night:
    """The module's Airflow, and what the tests read of it."""

    airflow: ComposeAirflow
    emr: HeldSteps
    boto: Callable[[str], Any]

    @property
    def servers(self) -> AirflowServers:
        return self.airflow.servers

    def runs(self) -> list[dict]:
        resp = self.servers.api("GET", f"/dags/{DAG_ID}/dagRuns")
        return resp.json()["dag_runs"] if resp.ok else []

    def run(self, run_id: str) -> dict:
        resp = self.servers.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
        assert resp.ok, resp.text
        return resp.json()

    def task_instances(self, run_id: str) -> dict[str, dict]:
        resp = self.servers.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        assert resp.ok, resp.text
        return {ti["task_id"]: ti for ti in resp.json()["task_instances"]}

    def task_states(self, run_id: str) -> dict[str, str | None]:
        return {task: ti["state"] for task, ti in self.task_instances(run_id).items()}

    def triggerer_runs(self, run_id: str, task_id: str, trigger_id: int) -> bool:
        """Whether the triggerer has started the trigger: its line in the task's trigger log (the triggerer writes
        ``<task log>.trigger.<its job id>.log`` beside the task's log)."""
        folder = self.servers.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
        line = f"trigger {DAG_ID}/{run_id}/{task_id}/-1/"
        return any(
            line in text and f"(ID {trigger_id}) starting" in text
            for path in folder.glob("attempt=*.log.trigger.*.log")
            for text in path.read_text(errors="replace").splitlines()
        )

    def scheduler_saw_the_worker_exit(self, task_id: str, ti_id: str) -> bool:
        """Whether the scheduler has processed the executor's event of a workload of this task instance (its
        "TaskInstance Finished" line; a watcher's first workload is the one that deferred)."""
        log = (self.servers.log_dir / "scheduler.log").read_text(errors="replace")
        return any(
            f"TaskInstance Finished: dag_id={DAG_ID}, task_id={task_id}," in line and f"ti_id={ti_id}," in line
            for line in log.splitlines()
        )

    def clusters(self) -> dict[str, dict]:
        return emr_clusters(self.boto("emr"))


@pytest.fixture(scope="module")
def night(
    tmp_path_factory: pytest.TempPathFactory, postgres, moto_endpoint, boto, weights: Path, emr: HeldSteps, request
) -> Iterator[Night]:
    """compose's Airflow on the session's PostgreSQL, the pipeline on the EMR backend against moto, the uploads of
    the latest night in place before the DAG is first parsed."""
    fresh_moto(moto_endpoint, boto, latest_night(dt.datetime.now(dt.UTC)))
    env = emr_variables(moto_endpoint, BUCKET, weights)
    settings = json.loads(env.pop(SETTINGS_ENV))
    airflow = ComposeAirflow(
        home=tmp_path_factory.mktemp("compose-airflow") / "airflow-home",
        postgres=postgres,
        settings=settings,
        extra=env,  # the aws_default connection on moto
        # Optional variables of the compose file: sensors that look every second, weights of this machine.
        values={"FRUITS_POKE_INTERVAL": "1", "FRUITS_SENSOR_TIMEOUT": "600", "FRUITS_WEIGHTS": str(weights)},
    )
    failed_before = request.session.testsfailed
    try:
        t0 = time.monotonic()
        airflow.start()
        airflow.servers.login()
        print(f"\ncompose's Airflow healthy on {postgres!r} after {time.monotonic() - t0:.0f} s")
        yield Night(airflow, emr, boto)
    except BaseException:
        _print_logs(airflow.servers)
        raise
    finally:
        if request.session.testsfailed > failed_before:
            _print_logs(airflow.servers)
        report = airflow.servers.stop()
        if report:
            print("\n".join(report))
        assert not airflow.servers.still_running(), "Airflow processes still running after stop"


def _print_logs(servers: AirflowServers) -> None:
    print(f"\n===== Airflow logs ({servers.log_dir}) =====\n{servers.logs(120)}")
    print(f"\n===== task logs =====\n{servers.task_logs(60)}")


@dataclass
class Watch:
    """Polls one run every second, keeping every state each task was seen in and the triggers it deferred to."""

    night: Night
    run_id: str
    seen: dict[str, list[str]] = field(default_factory=dict)
    triggers: dict[str, dict[int, dict]] = field(default_factory=dict)
    tis: dict[str, dict] = field(default_factory=dict)  # the latest poll's task instances
    check_alive: bool = True

    def poll(self) -> dict[str, str | None]:
        if self.check_alive:
            self.night.servers.check_alive()
        self.tis = tis = self.night.task_instances(self.run_id)
        for task, ti in tis.items():
            if ti["state"] and ti["state"] not in self.seen.setdefault(task, []):
                self.seen[task].append(ti["state"])
            if ti.get("trigger"):
                self.triggers.setdefault(task, {})[ti["trigger"]["id"]] = ti["trigger"]
        return {task: ti["state"] for task, ti in tis.items()}

    def until(self, check: Callable[[dict[str, str | None]], Any], what: str, timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        states: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            states = self.poll()
            if value := check(states):
                return value
            time.sleep(1)
        servers = self.night.servers
        raise AssertionError(
            f"not {what} after {timeout} s; task states {states}\n{servers.logs(60)}\n{servers.task_logs(40)}"
        )

    def watched_by_the_triggerer(self, task: str) -> bool:
        """The task deferred to the provider's EMR step trigger, and the triggerer took that trigger and started
        it (its job id on the trigger, the trigger's line in the task's trigger log)."""
        return any(
            trigger["classpath"].endswith(".EmrStepSensorTrigger")
            and trigger["triggerer_id"] is not None
            and self.night.triggerer_runs(self.run_id, task, trigger_id)
            for trigger_id, trigger in self.triggers.get(task, {}).items()
        )

    def step_deferred(self, name: str) -> None:
        """Wait until the step's watcher is deferred, the triggerer runs its trigger, and the scheduler has seen the
        watcher's worker exit: Airflow 3.3's scheduler fails a resumed task whose deferring worker's exit it
        processes only once the resumed try runs (apache/airflow#72716, seen here when a step ended seconds after
        its watcher deferred); EMR steps last minutes."""
        task = f"{name}_step"
        self.until(
            lambda s: (
                s.get(task) == "deferred"
                and self.watched_by_the_triggerer(task)
                and self.night.scheduler_saw_the_worker_exit(task, self.tis[task]["id"])
            ),
            f"{task} deferred to the triggerer",
        )

    def finished(self) -> dict:
        """Wait for the run's end; returns the run."""
        return self.until(
            lambda _: (run := self.night.run(self.run_id))["state"] in ("success", "failed") and run,
            "the run finished",
        )


def scheduled_run(night: Night, timeout: float = 300) -> dict:
    """Wait for the run the scheduler starts by itself; puts the uploads of its day when they are not there (the
    night computed before the start is the run's unless 02:00 UTC came in between)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        night.servers.check_alive()
        if runs := night.runs():
            (run,) = runs
            put_uploads(night.boto, dt.date.fromisoformat(run["logical_date"][:10]))
            return run
        time.sleep(2)
    raise AssertionError(f"the scheduler started no run in {timeout} s\n{night.servers.logs(60)}")


def check_night(night: Night, run: dict, watch: Watch) -> None:
    """A finished night as it should be: success, every task, the watchers deferred, one cluster, the outputs."""
    run_id = run["dag_run_id"]
    assert run["state"] == "success", run
    tis = night.task_instances(run_id)
    assert {task: ti["state"] for task, ti in tis.items() if ti["state"] != "success"} == {}
    for name in STEP_NAMES:
        task = f"{name}_step"
        assert "deferred" in watch.seen[task], watch.seen
        assert watch.watched_by_the_triggerer(task), watch.triggers
        # Resumed from the trigger, not retried (a retry would re-attach to the step).
        assert tis[task]["try_number"] == 1, {t: ti["try_number"] for t, ti in tis.items()}

    (cluster,) = night.clusters().values()
    assert cluster["tags"]["airflow:run_id"] == run_id
    assert cluster["Status"]["State"] == "TERMINATED"
    steps = list(reversed(cluster["steps"]))  # moto lists the newest first
    assert [(s["Name"], s["Status"]["State"]) for s in steps] == [(n, "COMPLETED") for n in STEP_NAMES]

    s3 = night.boto("s3")
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) for o in page["Contents"]}
    expected = [uri for s in steps for uri in [*job_markers(s["Config"]["Args"]), job_report(s["Config"]["Args"])]]
    missing = [uri for uri in expected if uri and uri.removeprefix(f"s3://{BUCKET}/") not in keys]
    assert not missing, f"outputs missing in s3://{BUCKET}: {missing}"
    assert sum(k.endswith("/_SUCCESS") for k in keys) >= len(STEP_NAMES) + 1  # clean writes two (kept, rejected)


def test_the_scheduler_runs_the_latest_night_end_to_end(night: Night):
    run = scheduled_run(night)
    assert run["run_type"] == "scheduled" and run["triggered_by"] == "timetable", run
    run_after = dt.datetime.fromisoformat(run["run_after"])
    assert run_after <= dt.datetime.now(dt.UTC) < run_after + dt.timedelta(days=1), run
    assert dt.date.fromisoformat(run["logical_date"][:10]) == run_after.date() - dt.timedelta(days=1), run

    watch = Watch(night, run["dag_run_id"])
    for name in STEP_NAMES:
        watch.step_deferred(name)
        night.emr.released.add(name)
    check_night(night, watch.finished(), watch)


def test_a_scheduler_killed_while_a_step_is_watched_and_started_again_ends_the_night(night: Night, moto_endpoint: str):
    servers = night.servers
    # The same night again, on an empty moto: the DAG deleted, parsed again by the DAG processor (every 30 s,
    # compose's default), and its latest night started anew by the scheduler.
    assert not [r for r in night.runs() if r["state"] not in ("success", "failed")]
    night.emr.released.clear()
    fresh_moto(moto_endpoint, night.boto, latest_night(dt.datetime.now(dt.UTC)))
    assert servers.api("DELETE", f"/dags/{DAG_ID}").status_code == 204
    run = scheduled_run(night)
    assert run["run_type"] == "scheduled", run
    run_id = run["dag_run_id"]
    watch = Watch(night, run_id)

    watch.step_deferred("clean")
    killed = servers.kill("scheduler")
    assert not night.airflow.scheduler_healthy()
    watch.check_alive = False  # the scheduler is down, on purpose
    # The step ends while no scheduler runs: the triggerer fires, the task waits to be scheduled again.
    night.emr.released.add("clean")
    watch.until(lambda s: s["clean_step"] == "scheduled", "clean_step scheduled again by its trigger")
    assert night.run(run_id)["state"] == "running"

    servers.start(["scheduler"])
    assert servers.procs["scheduler"].pid not in killed
    watch.check_alive = True
    watch.until(lambda _: night.airflow.scheduler_healthy(), "the new scheduler healthy")
    for name in STEP_NAMES[1:]:
        watch.step_deferred(name)
        night.emr.released.add(name)
    check_night(night, watch.finished(), watch)
