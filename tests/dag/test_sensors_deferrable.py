"""How the EMR backend's sensors wait, under ``airflow dags test`` against moto (which runs triggers inline).

* The step watchers (``<job>_step``) defer: the triggerer polls the step; when it fires, the task reads the step
  once more and returns its timeline, fails naming the step, or times out.
* The S3 sensors (``wait_for_uploads``, ``<job>_success``) stay in reschedule mode (see docs/dag.md for why).

Success and timeout of each kind: here the deferred step watcher (both paths) and the uploads sensor's success
after rescheduling; the uploads sensor's timeout (the run is skipped) and a ``_success`` sensor's timeout (stale
marker) are in ``test_emr_end_to_end.py``, and every sensor's success is its happy path.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from dag_harness import REPO_ROOT, dags_test, emr_variables, reset_moto, with_settings
from moto_emr import EmrEmulator

BUCKET = "fruits-test"
DATE = "2026-05-01"
STEPS = ["clean", "embed", "pca", "report"]

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def bucket(moto_endpoint, boto):
    """A fresh moto with the bucket (no uploads)."""
    reset_moto(moto_endpoint)
    boto("s3").create_bucket(Bucket=BUCKET)
    return boto("s3")


def env(endpoint: str, weights: Path, sensor_timeout: int) -> dict[str, str]:
    return {
        **with_settings(emr_variables(endpoint, BUCKET, weights), fruits_sensor_timeout=sensor_timeout),
    }


def upload(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key=f"uploads/{DATE}/IMG_0001.jpg", Body=b"jpeg bytes")


def test_step_watchers_defer_and_the_s3_sensors_reschedule(monkeypatch):
    from airflow.dag_processing.dagbag import BundleDagBag

    for name in [n for n in os.environ if n.startswith("AIRFLOW_VAR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(*with_settings({}, fruits_bucket="fruits-prod").popitem())
    bag = BundleDagBag(dag_folder=str(REPO_ROOT / "dags"), bundle_path=REPO_ROOT / "dags")
    tasks = bag.dags["fruits_pipeline"].task_dict
    for name in STEPS:
        assert type(tasks[f"{name}_step"]).__name__ == "EmrStepWatcher"
        assert tasks[f"{name}_step"].deferrable is True, name
    for task_id in ["wait_for_uploads", *(f"{n}_success" for n in STEPS)]:
        assert (tasks[task_id].deferrable, tasks[task_id].mode) == (False, "reschedule"), task_id


def test_a_step_watcher_defers_until_its_step_completes(moto_endpoint, weights, boto, bucket):
    upload(bucket)
    # Each step runs 3 s and is seen RUNNING twice (the watcher's first look, then the trigger's) whenever the
    # watcher comes: on a slow machine a step on a clock alone can end before its watcher first looks.
    with EmrEmulator(step_seconds=3, min_looks=2) as emr:
        result = dags_test(DATE, env(moto_endpoint, weights, sensor_timeout=60))
    assert result.returncode == 0, result.explain()
    assert set(result.states.values()) == {"success"}, result.states
    for name in STEPS:
        log = result.log(f"{name}_step")
        # First look: the step runs; the trigger then polls it; back on a worker, the step is COMPLETED.
        assert "running trigger in line" in log and "Trigger completed" in log, name
        assert log.index("is RUNNING") < log.index("running trigger in line") < log.index("is COMPLETED"), name
    # The step's timeline made it to XCom: the _SUCCESS sensors compared the markers with its start.
    assert "before the step started" not in result.output
    (cluster,) = boto("emr").list_clusters()["Clusters"]
    assert cluster["Status"]["State"] == "TERMINATED"
    assert emr.statuses("DescribeStep") and set(emr.statuses("DescribeStep")) == {200}


def test_a_deferred_step_watcher_times_out_and_the_cluster_still_ends(moto_endpoint, weights, boto, bucket):
    upload(bucket)
    with EmrEmulator(step_seconds=3600):
        started = time.monotonic()
        result = dags_test(DATE, env(moto_endpoint, weights, sensor_timeout=4))
        elapsed = time.monotonic() - started
    assert result.returncode != 0
    states = result.states
    assert states["clean_step"] == "failed", result.explain()
    assert states["clean_success"] == states["embed_step"] == "upstream_failed"
    assert states["terminate_cluster"] == "success"
    log = result.log("clean_step")
    assert "running trigger in line" in log
    assert "has not ended after 4 s (the sensor timeout)" in log, log[-4000:]
    # A sensor timeout is final: no retry of the step watcher (a retry would wait again).
    assert log.count("running trigger in line") == 1
    assert elapsed < 120
    (cluster,) = boto("emr").list_clusters()["Clusters"]
    assert cluster["Status"]["State"] == "TERMINATED"


def _reschedules(db: Path) -> int:
    """The last ``task_reschedule`` row of ``wait_for_uploads`` in the metadata database (0: none)."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
        (last,) = connection.execute(
            "SELECT coalesce(max(r.id), 0) FROM task_reschedule r JOIN task_instance t ON t.id = r.ti_id"
            " WHERE t.dag_id = 'fruits_pipeline' AND t.task_id = 'wait_for_uploads'"
        ).fetchone()
    return last


def test_the_uploads_sensor_reschedules_until_the_uploads_arrive(moto_endpoint, weights, bucket, airflow_db):
    """Nothing uploaded when the run starts: the sensor pokes, gives its slot back, and succeeds once they come."""
    before = _reschedules(airflow_db)
    done = threading.Event()

    def upload_after_the_first_reschedule() -> None:
        # Not after a fixed delay: on a slow machine the run may reach the sensor after the uploads came.
        while not done.wait(0.5):
            if _reschedules(airflow_db) > before:
                upload(bucket)
                return

    late = threading.Thread(target=upload_after_the_first_reschedule, daemon=True)
    late.start()
    try:
        with EmrEmulator():
            result = dags_test(DATE, env(moto_endpoint, weights, sensor_timeout=120))
    finally:
        done.set()
        late.join()
    assert result.returncode == 0, result.explain()
    assert set(result.states.values()) == {"success"}, result.states
    log = result.log("wait_for_uploads")
    assert log.count("Poking for key") >= 2 and "running trigger in line" not in log
    assert "up_for_reschedule" in log.lower() or "rescheduling" in log.lower()
