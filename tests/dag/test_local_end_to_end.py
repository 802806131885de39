"""The local backend end to end: ``airflow dags test`` runs the four real Spark jobs on real images.

Run 1 (a bulk load, ``mode=full``): a copy of part of the Fruits-360 sample plus one file per rejection reason and a
duplicate. Run 2 (the next night, ``incremental``): new uploads plus an image ingested the night before; only the
new images are cleaned and embedded.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from dataclasses import asdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from airflow.sdk.exceptions import AirflowException

import report as report_job
from bad_images import EXPECTED_REASONS, write_bad_files
from dag_harness import AIRFLOW, AIRFLOW_HOME, CONSUMER_DAGS, REPO_ROOT, clean_env, dags_test, with_settings
from fruits_dag.backends.local import LocalSparkJobOperator
from fruits_dag.bundle import zip_package
from fruits_dag.plan import JobRun
from sample_images import copy_images, sample_files

DAY1, DAY2 = "2026-05-01", "2026-05-02"
PER_LABEL = 12  # x 8 labels of the sample's Training split
NEW_PER_LABEL = 2  # from its Test split, uploaded on DAY2

pytestmark = pytest.mark.usefixtures("airflow_db")


def rows(folder: Path) -> int:
    return pq.read_table(folder).num_rows


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("local-root")


@pytest.fixture(scope="module")
def env(root: Path, weights_file: Path) -> dict[str, str]:
    return with_settings(
        {},
        fruits_local_root=str(root),  # no bucket: the local backend by default
        fruits_weights=str(weights_file),
        fruits_poke_interval=1,
        fruits_sensor_timeout=30,
    )


def register_consumer(env: dict[str, str], root: Path) -> None:
    """Put the consumer DAG (another team's, scheduled on this deployment's PCA asset) in the database, unpaused:
    asset events queue runs of known, active DAGs only."""
    consumer = clean_env(
        {
            **env,
            "AIRFLOW__CORE__DAGS_FOLDER": str(CONSUMER_DAGS),
            "FRUITS_PCA_ASSET_URI": (root / "stages/pca").as_uri(),
        }
    )
    for command in (["dags", "reserialize"], ["dags", "unpause", "fruits_pca_consumer"]):
        subprocess.run([AIRFLOW, *command], env=consumer, check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def first_run(root, env, sample_dir):
    """A bulk load: datasets/fruits-sample/Training/<label>/..., mode=full, PCA to 90% of the variance."""
    dataset = root / "datasets" / "fruits-sample"
    copy_images(sample_dir, dataset, per_label=PER_LABEL, splits=("Training",))
    bad_folder = dataset / "Training" / "Kiwi"
    write_bad_files(bad_folder, next(bad_folder.glob("*.jpg")))
    shutil.copy(next((dataset / "Training" / "Banana").glob("*.jpg")), dataset / "Training" / "Banana" / "copy.jpg")

    register_consumer(env, root)
    result = dags_test(DAY1, env, conf={"mode": "full", "input_uri": "datasets/fruits-sample", "pca_variance": 0.9})
    assert result.returncode == 0, result.explain()
    return result


@pytest.fixture(scope="module")
def second_run(first_run, root, env, sample_dir):
    """The next night: new uploads, and one photo that was already ingested by the bulk load."""
    uploads = root / "uploads" / DAY2
    uploads.mkdir(parents=True)
    for image in sample_files(sample_dir, "Test", NEW_PER_LABEL):
        shutil.copy(image, uploads / f"{image.parent.name.replace(' ', '_')}_{image.name}")
    shutil.copy(next((root / "datasets" / "fruits-sample" / "Training" / "Lemon").glob("*.jpg")), uploads / "again.jpg")

    result = dags_test(DAY2, env)
    assert result.returncode == 0, result.explain()
    return result


def test_bulk_load_writes_every_stage(first_run, root):
    assert set(first_run.states.values()) == {"success"}, first_run.states
    kept = 8 * PER_LABEL
    clean = root / "stages" / "clean" / f"ingest_date={DAY1}"
    assert (clean / "_SUCCESS").is_file() and rows(clean) == kept
    rejected = pq.read_table(root / "stages" / "rejected" / f"ingest_date={DAY1}").to_pylist()
    by_name = {Path(r["path"]).name: r["reason"] for r in rejected}
    assert by_name == {**EXPECTED_REASONS, "copy.jpg": "duplicate"}
    assert rows(root / "stages" / "embed") == kept
    pca = pq.read_table(root / "stages" / "pca" / "pca_version=v0001")
    assert pca.num_rows == kept and len(pca.column("pca")[0]) >= 2
    summary = json.loads((root / "stages" / "pca" / "_summary.json").read_text())
    assert summary["cumulative_explained_variance"][-1] >= 0.9
    assert (root / "models" / "pca" / "v0001" / "model" / "metadata").is_dir()
    assert json.loads((root / "models" / "pca" / "CURRENT").read_text())["version"] == "v0001"

    report_dir = root / "reports" / DAY1
    report = json.loads((report_dir / "report.json").read_text())
    assert (report["kept"], report["rejected"], report["k"]) == (kept, len(EXPECTED_REASONS) + 1, summary["k"])
    assert sorted(report["kept_per_label"]) == sorted(
        p.name for p in (root / "datasets/fruits-sample/Training").iterdir()
    )
    for plot in report_job.PLOTS:
        assert (report_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def asset_events(run_id: str) -> dict[str, dict]:
    """The asset events a run emitted: asset name -> extra."""
    with sqlite3.connect(AIRFLOW_HOME / "airflow.db") as db:
        rows = db.execute(
            "SELECT a.name, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE e.source_run_id = ?",
            (run_id,),
        ).fetchall()
    return {name: json.loads(extra) for name, extra in rows}


def test_the_run_publishes_its_outputs_as_assets_and_triggers_their_consumers(first_run, root, env):
    events = asset_events(first_run.run_id)
    assert set(events) == {"fruits_clean", "fruits_features", "fruits_pca", "fruits_report"}
    kept = 8 * PER_LABEL
    assert events["fruits_clean"] == {**events["fruits_clean"], "run_date": DAY1, "rows_added": kept}
    assert events["fruits_features"] == {"run_date": DAY1, "rows_added": kept}
    assert events["fruits_pca"] == {**events["fruits_pca"], "run_date": DAY1, "rows_added": kept,
                                    "pca_version": "v0001", "refitted": True}  # fmt: skip
    # The consumer DAG scheduled on fruits_pca (tests/dag/consumer/) is queued, then started by the scheduler.
    with sqlite3.connect(AIRFLOW_HOME / "airflow.db") as db:
        queued = db.execute("SELECT target_dag_id FROM asset_dag_run_queue").fetchall()
    assert ("fruits_pca_consumer",) in queued
    # One scheduler pass starts the queued run.
    subprocess.run([AIRFLOW, "scheduler", "--num-runs", "3"], env=clean_env(env), capture_output=True, timeout=180)
    with sqlite3.connect(AIRFLOW_HOME / "airflow.db") as db:
        runs = db.execute("SELECT run_type, id FROM dag_run WHERE dag_id = 'fruits_pca_consumer'").fetchall()
        assert [r[0] for r in runs] == ["asset_triggered"]
        consumed = db.execute(
            "SELECT e.source_run_id, e.extra FROM dagrun_asset_event d JOIN asset_event e ON e.id = d.event_id "
            "WHERE d.dag_run_id = ?",
            (runs[0][1],),
        ).fetchall()
    # The run was triggered by this pipeline run's PCA event, and gets its extras.
    assert events["fruits_pca"] in [json.loads(extra) for run_id, extra in consumed if run_id == first_run.run_id]


def test_local_steps_log_the_jobs_output(first_run, root):
    log = first_run.log("clean_step")
    assert "--master local[*]" in log and f"{root}/code/" in log
    assert "fruits.clean" in log and f"ingest_date={DAY1}" in log  # the job's own summary line
    assert "INFO SparkContext" not in log  # Spark's chatter is kept out
    assert f"report written to {root}/reports/{DAY1}/report.json" in first_run.log("report_step")


def test_next_night_processes_only_the_new_uploads(second_run, root):
    assert set(second_run.states.values()) == {"success"}, second_run.states
    new = 8 * NEW_PER_LABEL
    assert rows(root / "stages" / "clean" / f"ingest_date={DAY2}") == new
    (again,) = pq.read_table(root / "stages" / "rejected" / f"ingest_date={DAY2}").to_pylist()
    assert (Path(again["path"]).name, again["reason"]) == ("again.jpg", "duplicate")
    assert rows(root / "stages" / "embed" / f"ingest_date={DAY2}") == new
    assert rows(root / "stages" / "embed") == 8 * PER_LABEL + new
    assert rows(root / "stages" / "pca" / "pca_version=v0001") == 8 * PER_LABEL + new  # appended, same basis
    assert json.loads((root / "reports" / DAY2 / "report.json").read_text())["kept"] == new
    # The same code: nothing staged again.
    assert "nothing uploaded" in second_run.log("stage_code")
    assert len(list((root / "code").iterdir())) == 1


@pytest.fixture(scope="module")
def missed_nights(second_run, root, env, sample_dir):
    """Uploads on DAY3, DAY4 and DAY5 and no run before DAY5's; then a late photo for DAY4 and DAY6's uploads."""
    days = ["2026-05-03", "2026-05-04", "2026-05-05", "2026-05-06"]
    picked = iter(sample_files(sample_dir, "Test", per_label=None)[100::37])  # images no earlier night uploaded

    def upload(day: str, name: str | None = None) -> None:
        image = next(picked)
        folder = root / "uploads" / day
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / (name or f"{image.parent.name.replace(' ', '_')}_{image.name}"))

    for day in days[:3]:
        for _ in range(3):
            upload(day)
    third = dags_test(days[2], env)
    upload(days[1], "late.jpg")
    upload(days[3])
    fourth = dags_test(days[3], env)
    clean_before = pq.read_table(root / "stages" / "clean").num_rows
    again = dags_test(days[3], env)
    return days, third, fourth, again, clean_before


def report_of(root: Path, day: str) -> dict:
    return json.loads((root / "reports" / day / "report.json").read_text())


def test_missed_nights_and_late_uploads_are_processed_once(missed_nights, root):
    days, third, fourth, again, clean_before = missed_nights
    for result in (third, fourth, again):
        assert set(result.states.values()) == {"success"}, result.explain()
    # The third night's run covers the two nights that had no run.
    third_report = report_of(root, days[2])
    assert third_report["upload_days"] == days[:3] and third_report["kept"] == 9
    # The next night picks up the photo that arrived late for an already processed day, and only it.
    fourth_report = report_of(root, days[3])
    assert fourth_report["upload_days"] == [days[1], days[3]] and fourth_report["kept"] == 2
    assert fourth_report["skipped_already_processed"] == 6  # the window's files kept by the third night
    # Re-running a night adds nothing, anywhere.
    assert report_of(root, days[3])["kept"] == 2
    assert pq.read_table(root / "stages" / "clean").num_rows == clean_before
    features = pq.read_table(root / "stages" / "embed").column("image_id").to_pylist()
    assert len(features) == len(set(features))
    projected = pq.read_table(root / "stages" / "pca" / "pca_version=v0001").column("image_id").to_pylist()
    assert sorted(projected) == sorted(features)


def test_a_failing_job_fails_its_task_with_the_jobs_error(tmp_path):
    jobs = REPO_ROOT / "spark_jobs"
    shared = tmp_path / "fruits_common.zip"
    shared.write_bytes(zip_package(jobs / "fruits_common"))
    missing = tmp_path / "uploads" / DAY1
    job = JobRun(
        name="clean",
        script=str(jobs / "clean.py"),
        py_files=str(shared),
        markers=[],
        args=[
            "--input",
            str(missing),
            "--output",
            str(tmp_path / "clean"),
            "--rejected",
            str(tmp_path / "rejected"),
            "--run-date",
            DAY1,
        ],
    )
    with pytest.raises(
        AirflowException, match=f"The clean job failed .*: fruits-clean: error: input folder does not exist: {missing}"
    ):
        LocalSparkJobOperator(task_id="clean_step", job=asdict(job)).execute({})


def test_no_uploads_skips_the_local_run_and_the_third_such_night_fails(tmp_path):
    env = with_settings(
        {}, fruits_local_root=str(tmp_path), fruits_weights="imagenet", fruits_poke_interval=1, fruits_sensor_timeout=2
    )
    yesterday = tmp_path / "uploads" / "2026-05-02"
    yesterday.mkdir(parents=True)
    (yesterday / "IMG_0001.jpg").write_bytes(b"jpeg bytes")
    result = dags_test("2026-05-03", env)
    assert result.returncode == 0, result.explain()
    assert result.states["wait_for_uploads"] == "skipped"
    assert {s for t, s in result.states.items() if t not in ("stage_code", "wait_for_uploads")} == {"skipped"}
    assert not (tmp_path / "stages").exists() and not (tmp_path / "locks").exists()

    # Two days later, the night before and the one before it had nothing either: an alarm, not a skip.
    result = dags_test("2026-05-05", env)
    assert result.returncode != 0
    assert result.states["wait_for_uploads"] == "failed"
    assert "No uploads for 3 nights in a row" in result.log("wait_for_uploads")
    assert f"{tmp_path}/uploads/2026-05-04/, {tmp_path}/uploads/2026-05-03/" in result.log("wait_for_uploads")
