"""The DAG's building blocks on their own: settings, run date, bundle, staging, the local sensor and step."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from dag_harness import REPO_ROOT
from fruits_dag.backends import marker_is_fresh
from fruits_dag.backends.local import LocalCodeStore, LocalKeySensor, job_error
from fruits_dag.bundle import build_bundle, stage, zip_package
from fruits_dag.plan import run_date
from fruits_dag.settings import SettingsError, load

UTC = dt.UTC


# -- settings -------------------------------------------------------------------------------------------------
def test_settings_default_to_local_without_a_bucket_and_to_emr_with_one(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    local = load({})
    assert (local.backend, local.storage_root, local.weights) == ("local", str(tmp_path / "fruits"), "imagenet")
    assert (local.poke_interval, local.sensor_timeout) == (120, 4 * 3600)
    emr = load({"fruits_bucket": "fruits-prod"})
    assert (emr.backend, emr.storage_root, emr.emr_release) == ("emr", "s3://fruits-prod", "emr-7.13.0")
    assert emr.emr_log_uri == "s3://fruits-prod/logs/emr/" and emr.emr_idle_timeout == 1800
    assert load({"fruits_bucket": "fruits-prod", "fruits_backend": "local"}).backend == "local"


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"fruits_backend": "spark"}, "fruits_backend must be one of emr, local"),
        ({"fruits_backend": "emr"}, "fruits_bucket is required"),
        ({"fruits_bucket": "s3://fruits-prod"}, "bare S3 bucket name"),
        ({"fruits_sensor_timeout": "0"}, "fruits_sensor_timeout must be at least 1"),
        ({"fruits_emr_idle_timeout": "10", "fruits_bucket": "fruits-prod"}, "at least 60"),
        ({"fruits_weights": "s3://models/w.h5"}, "local backend cannot read"),
        ({"fruits_local_root": "relative/folder"}, "absolute path"),
        ({"fruits_local_driver_memory": "lots"}, "JVM memory size"),
    ],
)
def test_settings_refuse_bad_values_naming_the_variable(variables, message):
    with pytest.raises(SettingsError, match=message):
        load(variables)


# -- run date -------------------------------------------------------------------------------------------------
def test_run_date_is_the_logical_dates_utc_day_or_the_trigger_day():
    after = dt.datetime(2026, 5, 2, 2, 0, tzinfo=UTC)
    assert run_date(dt.datetime(2026, 5, 1, 2, 0, tzinfo=UTC), after) == dt.date(2026, 5, 1)
    paris = dt.timezone(dt.timedelta(hours=2))
    assert run_date(dt.datetime(2026, 5, 2, 1, 0, tzinfo=paris), after) == dt.date(2026, 5, 1)
    assert run_date(None, dt.datetime(2026, 5, 3, 15, 30, tzinfo=UTC)) == dt.date(2026, 5, 3)


# -- bundle and staging ---------------------------------------------------------------------------------------
@pytest.fixture
def jobs_copy(tmp_path) -> Path:
    target = tmp_path / "spark_jobs"
    shutil.copytree(REPO_ROOT / "spark_jobs", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_bundle_digest_depends_on_content_only(jobs_copy, tmp_path):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"weights")
    first = build_bundle(jobs_copy, str(weights))
    first_zip = zip_package(jobs_copy / "fruits_common")
    # New timestamps and a stray cache folder change nothing...
    for path in jobs_copy.rglob("*"):
        os.utime(path, (0, 1_000_000_000))
    (jobs_copy / "fruits_common" / "__pycache__").mkdir()
    (jobs_copy / "fruits_common" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert build_bundle(jobs_copy, str(weights)).digest == first.digest
    assert zip_package(jobs_copy / "fruits_common") == first_zip
    # ...a changed byte in the shared package or the weights changes the digest.
    (jobs_copy / "fruits_common" / "errors.py").write_text("# changed\n", encoding="utf-8")
    changed = build_bundle(jobs_copy, str(weights)).digest
    assert changed != first.digest
    weights.write_bytes(b"other weights")
    assert build_bundle(jobs_copy, str(weights)).digest not in (first.digest, changed)
    assert build_bundle(jobs_copy, "imagenet").weights_name is None


def test_shared_zip_imports_as_fruits_common(jobs_copy, tmp_path):
    archive = tmp_path / "fruits_common.zip"
    archive.write_bytes(zip_package(jobs_copy / "fruits_common"))
    names = zipfile.ZipFile(archive).namelist()
    assert names == sorted(names) and "fruits_common/__init__.py" in names
    assert {info.date_time for info in zipfile.ZipFile(archive).infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_local_staging_writes_only_missing_files(jobs_copy, tmp_path):
    bundle = build_bundle(jobs_copy, "imagenet")
    code = str(tmp_path / "root" / "code" / bundle.digest)
    assert sorted(stage(bundle, code, LocalCodeStore())) == sorted(bundle.names())
    assert stage(bundle, code, LocalCodeStore()) == []
    Path(code, "clean.py").unlink()
    assert stage(bundle, code, LocalCodeStore()) == ["clean.py"]
    assert Path(code, "clean.py").read_bytes() == (jobs_copy / "clean.py").read_bytes()


# -- local sensor and freshness --------------------------------------------------------------------------------
class TaskInstanceXComs:
    """The one thing the freshness check asks of Airflow's task instance: the step task's XCom."""

    def __init__(self, values: dict[str, object]) -> None:
        self.values = values

    def xcom_pull(self, task_ids: str) -> object:
        return self.values.get(task_ids)


def poke(sensor: LocalKeySensor, **xcoms: object) -> bool:
    return sensor.poke({"ti": TaskInstanceXComs(xcoms)})


def test_local_sensor_wildcards_match_like_s3_keys(tmp_path):
    sensor = LocalKeySensor(task_id="wait", path=f"{tmp_path}/uploads/2026-05-01/*", wildcard_match=True)
    assert not poke(sensor)
    (tmp_path / "uploads" / "2026-04-30").mkdir(parents=True)
    (tmp_path / "uploads" / "2026-04-30" / "a.jpg").write_bytes(b"x")
    assert not poke(sensor)  # another day's upload
    (tmp_path / "uploads" / "2026-05-01" / "phone" / "deep").mkdir(parents=True)
    (tmp_path / "uploads" / "2026-05-01" / "phone" / "deep" / "b.jpg").write_bytes(b"x")
    assert poke(sensor)  # '*' crosses folders, as with S3 keys


def test_markers_must_be_written_after_the_step_started(tmp_path):
    marker = tmp_path / "stages" / "embed" / "_SUCCESS"
    marker.parent.mkdir(parents=True)
    marker.write_bytes(b"")
    written = dt.datetime.fromtimestamp(marker.stat().st_mtime, tz=UTC)
    sensor = LocalKeySensor(task_id="embed_success", path=[str(marker)], check_fn=marker_is_fresh("embed_step"))
    later_step = {"started": (written + dt.timedelta(seconds=5)).isoformat()}
    assert not poke(sensor, embed_step=later_step)  # yesterday's marker: stale
    same_second = {"started": written.replace(microsecond=999_999).isoformat()}
    assert poke(sensor, embed_step=same_second)  # storage keeps whole seconds
    assert poke(sensor, embed_step={"started": (written - dt.timedelta(minutes=3)).isoformat()})
    assert not poke(sensor, embed_step=None)  # no start time: cannot tell, keep waiting
    assert not poke(LocalKeySensor(task_id="s", path=[str(marker), str(tmp_path / "missing")]))


# -- local step errors ------------------------------------------------------------------------------------------
def test_job_error_is_the_jobs_own_message():
    spark_noise = ["26/05/01 10:00:00 INFO SparkContext: Running Spark version 3.5.6"] * 5
    assert (
        job_error([*spark_noise, "fruits-clean: error: input folder does not exist: /x", "INFO stop"])
        == "fruits-clean: error: input folder does not exist: /x"
    )
    traceback = [
        "Traceback (most recent call last):",
        '  File "embed.py", line 1, in <module>',
        "    raise ValueError('bad batch')",
        "ValueError: bad batch",
        "INFO ShutdownHookManager: done",
    ]
    assert job_error([*spark_noise, *traceback]) == "ValueError: bad batch"
    assert job_error(spark_noise).startswith("no error message found")


# -- make run's data ------------------------------------------------------------------------------------------------
def test_prepare_links_the_committed_real_images_by_default_or_data(tmp_path):
    from local_run import DEFAULT_DATA, prepare

    root = tmp_path / "root"
    assert prepare(root, None) == "datasets/fruits-360-mini"
    assert (root / "datasets" / "fruits-360-mini").resolve() == DEFAULT_DATA.resolve()
    images = sorted(DEFAULT_DATA.rglob("*.jpg"))
    # Real fruit: 8 labels of the sample, in the Fruits-360 layout, small enough to commit.
    assert {p.parent.name for p in images} == {
        "Apple Golden 1",
        "Avocado",
        "Banana",
        "Kiwi",
        "Lemon",
        "Mango",
        "Raspberry",
        "Strawberry",
    }
    assert {p.parent.parent.name for p in images} == {"Training", "Test"}
    assert sum(p.stat().st_size for p in images) < 1_000_000
    assert prepare(root, None) == "datasets/fruits-360-mini"  # again: the link is kept
    data = tmp_path / "fruits-360"
    (data / "Training" / "Kiwi").mkdir(parents=True)
    assert prepare(root, data) == "datasets/fruits-360"
    assert (root / "datasets" / "fruits-360").resolve() == data.resolve()
    with pytest.raises(SystemExit, match="not a folder"):
        prepare(root, tmp_path / "missing")


def test_make_run_progress_prints_a_line_per_task_with_its_key_figure():
    import io

    from local_run import Progress

    out = io.StringIO()
    progress = Progress(out=out)
    lines = [
        "[DAG TEST] starting task_id=clean_step map_index=-1",
        "2026-05-01T00:00:01Z [info     ] 2026-05-01 00:00:01,000 INFO fruits: fruits-clean finished: "
        '{"run_date": "2026-05-01", "kept": 98, "rejected": 6, "rejected_by_reason": {"duplicate": 2, "corrupt": 4}}'
        " [airflow.task.operators.fruits_dag.backends.local.LocalSparkJobOperator] loc=local.py:144",
        "2026-05-01T00:00:02Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes"
        ".task_instances] correlation_id=x loc=task_instances.py:485 new_state=success rows_affected=1 ti_id=y",
        "[DAG TEST] end task task_id=clean_step map_index=-1",
        "[DAG TEST] starting task_id=embed_step map_index=-1",
        "2026-05-01T00:00:03Z [info     ] fruits-embed: error: weights file not found: /nowhere.h5"
        " [airflow.task.operators.fruits_dag.backends.local.LocalSparkJobOperator] loc=local.py:144",
        "2026-05-01T00:00:04Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes"
        ".task_instances] correlation_id=x loc=task_instances.py:485 new_state=failed rows_affected=1 ti_id=y",
        "[DAG TEST] end task task_id=embed_step map_index=-1",
    ]
    for line in lines:
        progress.feed(line)
    printed = out.getvalue().splitlines()
    assert printed[0].split()[:2] == ["clean_step", "success"]
    assert printed[0].endswith("104 files read: 98 kept, 6 rejected (4 corrupt, 2 duplicate)")
    assert printed[1].split()[:2] == ["embed_step", "failed"]
    assert printed[2].strip() == "fruits-embed: error: weights file not found: /nowhere.h5"
