"""The UI path (issue 4): what the Airflow UI does, through the same REST API, on a real Airflow.

`airflow api-server`, `scheduler` and `dag-processor` run as local processes (tests/ui/airflow_servers.py: SQLite,
a temporary AIRFLOW_HOME, 127.0.0.1, the simple auth manager with a known admin password; started once per session
and shared with the browser test, with a storage root of this test's own: tests/ui/conftest.py). The test gets a
token, checks that a request without one is refused, unpauses `fruits_pipeline`, triggers a run with params on a small
sample of real Fruits-360 images in local mode (real spark-submit jobs), waits for it to succeed and checks the
outputs. Every process is stopped by PID afterwards, and the server and task logs are printed when it fails.
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from repo import DAG_ID
from sample_images import copy_images

RUN_DATE = "2026-03-14"
IMAGES_PER_LABEL = 5  # x 8 labels of the sample: 40 real images
DATASET = "datasets/fruits-360-sample"
RUN_TIMEOUT_S = 40 * 60  # four real Spark jobs on 2 cores, next to other tests


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_ui_path_trigger_fruits_pipeline_through_the_rest_api(fruits_airflow, sample_dir):
    # The session's Airflow (local backend, the real weights, no nightly schedule), this test's storage root.
    servers, root = fruits_airflow.servers, fruits_airflow.root
    copied = copy_images(sample_dir, root / DATASET, per_label=IMAGES_PER_LABEL, splits=("Training",))
    counts = dict(sorted(Counter(p.parent.name for p in copied).items()))
    n_images = sum(counts.values())
    assert 30 <= n_images <= 60, counts

    t0 = time.monotonic()

    # Without a token (or with a wrong password) the API refuses.
    assert servers.api("GET", "/dags").status_code in (401, 403)
    assert servers.api("GET", f"/dags/{DAG_ID}").status_code in (401, 403)
    assert servers.get_token(password="wrong").status_code in (401, 403)
    servers.login()
    assert servers.api("GET", "/dags").status_code == 200
    assert servers.api("GET", "/dags", headers={"Authorization": "Bearer not-a-token"}).status_code in (401, 403)

    dag = servers.wait_for_dag(DAG_ID)
    assert dag["is_paused"] is True  # paused at creation in this harness: the test unpauses it like the UI
    resp = servers.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
    assert resp.status_code == 200, resp.text
    assert resp.json()["is_paused"] is False

    # A bad param is refused before anything runs (the trigger form's validation).
    bad = servers.api(
        "POST",
        f"/dags/{DAG_ID}/dagRuns",
        json={"logical_date": f"{RUN_DATE}T00:00:00Z", "conf": {"mode": "everything"}},
    )
    assert bad.status_code == 400, bad.text

    resp = servers.api(
        "POST",
        f"/dags/{DAG_ID}/dagRuns",
        json={
            "dag_run_id": f"ui_test__{RUN_DATE}",
            "logical_date": f"{RUN_DATE}T00:00:00Z",
            "conf": {"mode": "full", "input_uri": DATASET, "pca_k": 5},
        },
    )
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["dag_run_id"]
    print(f"triggered {run_id} after {time.monotonic() - t0:.0f} s")

    run = servers.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_S)
    print(f"run {run['state']} after {time.monotonic() - t0:.0f} s")
    tis = servers.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    states = {ti["task_id"]: ti["state"] for ti in tis}
    assert run["state"] == "success", states
    assert all(state == "success" for state in states.values()), states
    assert {"clean_step", "embed_step", "pca_step", "report_step"} <= states.keys()
    assert not {"create_cluster", "terminate_cluster"} & states.keys()  # local mode: no EMR tasks

    # The outputs, in the bucket's layout under the local root.
    stages = root / "stages"
    for marker in (
        stages / "clean" / f"ingest_date={RUN_DATE}" / "_SUCCESS",
        stages / "rejected" / f"ingest_date={RUN_DATE}" / "_SUCCESS",
        stages / "embed" / "_SUCCESS",
        stages / "pca" / "_SUCCESS",
        root / "reports" / RUN_DATE / "_SUCCESS",
    ):
        assert marker.is_file(), f"missing {marker}"
    assert (root / "models" / "pca").is_dir()
    pca = pq.read_table(stages / "pca")
    assert pca.num_rows == n_images
    report = json.loads((root / "reports" / RUN_DATE / "report.json").read_text())
    assert report["images_read"] == n_images
    assert report["kept"] == n_images
    assert report["final_rows"] == n_images
    assert report["k"] == 5
    assert report["rows_per_label"] == counts
    for plot in report["plots"]:
        width, height = png_size(root / "reports" / RUN_DATE / plot)
        assert width > 100 and height > 100
