"""The local backend end to end: ``airflow dags test`` runs the four real Spark jobs on real images.

Run 1 (a bulk load, ``mode=full``): a copy of part of the Fruits-360 sample plus one file per rejection reason and a
duplicate. Run 2 (the next night, ``incremental``): new uploads plus an image ingested the night before; only the
new images are cleaned and embedded.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from airflow.sdk.exceptions import AirflowException

import report as report_job
from bad_images import EXPECTED_REASONS, write_bad_files
from dag_harness import dags_test
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
    return {
        "AIRFLOW_VAR_FRUITS_LOCAL_ROOT": str(root),  # no bucket: the local backend by default
        "AIRFLOW_VAR_FRUITS_WEIGHTS": str(weights_file),
        "AIRFLOW_VAR_FRUITS_POKE_INTERVAL": "1",
        "AIRFLOW_VAR_FRUITS_SENSOR_TIMEOUT": "30",
    }


@pytest.fixture(scope="module")
def first_run(root, env, sample_dir):
    """A bulk load: datasets/fruits-sample/Training/<label>/..., mode=full, PCA to 90% of the variance."""
    dataset = root / "datasets" / "fruits-sample"
    copy_images(sample_dir, dataset, per_label=PER_LABEL, splits=("Training",))
    bad_folder = dataset / "Training" / "Kiwi"
    write_bad_files(bad_folder, next(bad_folder.glob("*.jpg")))
    shutil.copy(next((dataset / "Training" / "Banana").glob("*.jpg")), dataset / "Training" / "Banana" / "copy.jpg")

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
    pca = pq.read_table(root / "stages" / "pca")
    assert pca.num_rows == kept and len(pca.column("pca")[0]) >= 2
    summary = json.loads((root / "stages" / "pca" / "_summary.json").read_text())
    assert summary["cumulative_explained_variance"][-1] >= 0.9
    assert (root / "models" / "pca" / "metadata").is_dir()

    report_dir = root / "reports" / DAY1
    report = json.loads((report_dir / "report.json").read_text())
    assert (report["kept"], report["rejected"], report["k"]) == (kept, len(EXPECTED_REASONS) + 1, summary["k"])
    assert sorted(report["kept_per_label"]) == sorted(
        p.name for p in (root / "datasets/fruits-sample/Training").iterdir()
    )
    for plot in report_job.PLOTS:
        assert (report_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    assert rows(root / "stages" / "pca") == 8 * PER_LABEL + new
    assert json.loads((root / "reports" / DAY2 / "report.json").read_text())["kept"] == new
    # The same code: nothing staged again.
    assert "nothing uploaded" in second_run.log("stage_code")
    assert len(list((root / "code").iterdir())) == 1


def test_a_failing_job_fails_its_task_with_the_jobs_error(tmp_path):
    jobs = Path(__file__).resolve().parents[2] / "spark_jobs"
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


def test_no_uploads_skips_the_local_run(tmp_path):
    env = {
        "AIRFLOW_VAR_FRUITS_LOCAL_ROOT": str(tmp_path),
        "AIRFLOW_VAR_FRUITS_WEIGHTS": "imagenet",
        "AIRFLOW_VAR_FRUITS_POKE_INTERVAL": "1",
        "AIRFLOW_VAR_FRUITS_SENSOR_TIMEOUT": "2",
    }
    result = dags_test("2026-05-03", env)
    assert result.returncode == 0, result.explain()
    assert result.states["wait_for_uploads"] == "skipped"
    assert {s for t, s in result.states.items() if t not in ("stage_code", "wait_for_uploads")} == {"skipped"}
    assert not (tmp_path / "stages").exists()
