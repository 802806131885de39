"""The command-line contract: each job runs with a bare ``spark-submit spark_jobs/<job>.py ...`` (the job ships its
shared package to the executors itself), and with ``--py-files fruits_common.zip`` as on EMR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jobs.conftest import REPO_ROOT, RUN_DATE

from fruits_dag.bundle import zip_package
from sample_images import copy_images

JOBS = REPO_ROOT / "spark_jobs"


def _submit(script: str, *args: str, zip_file: Path | None = None) -> subprocess.CompletedProcess:
    """``spark-submit`` of a job; no PYTHONPATH, so executors import fruits_common only if it is shipped."""
    spark_submit = Path(sys.executable).with_name("spark-submit")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": ""}
    py_files = ["--py-files", str(zip_file)] if zip_file else []
    return subprocess.run(
        [
            str(spark_submit),
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
            *py_files,
            str(JOBS / script),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("script", ["clean.py", "embed.py", "pca.py", "report.py"])
def test_help(script):
    result = subprocess.run(
        [sys.executable, str(JOBS / script), "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(JOBS)},
        timeout=120,
    )
    assert result.returncode == 0 and "usage:" in result.stdout and "--output" in result.stdout


def test_four_jobs_run_with_a_bare_spark_submit(tmp_path, sample_dir, weights_file):
    copy_images(sample_dir, tmp_path / "in", per_label=2, splits=("Training",))
    d = {n: str(tmp_path / n) for n in ("clean", "rejected", "embed", "pca", "model", "report")}
    steps = [
        (
            "clean.py",
            "--input",
            str(tmp_path / "in"),
            "--output",
            d["clean"],
            "--rejected",
            d["rejected"],
            "--run-date",
            RUN_DATE.isoformat(),
        ),
        ("embed.py", "--input", d["clean"], "--output", d["embed"], "--weights", str(weights_file)),
        ("pca.py", "--input", d["embed"], "--output", d["pca"], "--model", d["model"], "--k", "4"),
        (
            "report.py",
            "--clean",
            d["clean"],
            "--rejected",
            d["rejected"],
            "--pca",
            d["pca"],
            "--output",
            d["report"],
            "--run-date",
            RUN_DATE.isoformat(),
        ),
    ]
    for script, *args in steps:
        result = _submit(script, *args)
        assert result.returncode == 0, f"{script} failed:\n{result.stderr[-4000:]}"
        # spark-submit merges the Python driver's stderr into its stdout.
        assert "shipped" in result.stdout and "fruits_common" in result.stdout, script
    for name in ("clean", "rejected"):
        assert (tmp_path / name / f"ingest_date={RUN_DATE}" / "_SUCCESS").exists()
    assert (tmp_path / "embed" / "_SUCCESS").exists() and (tmp_path / "pca" / "_SUCCESS").exists()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["kept"] == 16 and report["k"] == 4

    # A user error is a one-line message and exit status 2, not a stack trace from a Spark task.
    result = _submit(
        "pca.py",
        "--input",
        d["embed"],
        "--output",
        d["pca"],
        "--model",
        str(tmp_path / "no"),
        "--k",
        "4",
        "--refit",
        "never",
    )
    assert result.returncode == 2
    assert "fruits-pca: error: --refit never: there is no PCA model" in result.stdout


def test_with_py_files_the_job_uses_the_zip_as_on_emr(tmp_path, sample_dir):
    zip_file = tmp_path / "fruits_common.zip"
    zip_file.write_bytes(zip_package(JOBS / "fruits_common"))
    copy_images(sample_dir, tmp_path / "in", per_label=1, splits=("Training",))
    result = _submit(
        "clean.py",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "clean"),
        "--rejected",
        str(tmp_path / "rejected"),
        zip_file=zip_file,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "shipped" not in result.stdout  # nothing to add: spark-submit distributes the zip
