"""A release (``fruits_dag.release``, ``make release``) built against moto, and the DAG run from it on a worker that
has no TensorFlow, no tf2onnx, none of the nodes' packages and no package index: what Amazon MWAA gives.

The worker's missing packages are made missing with ``missing_modules/sitecustomize.py`` (they stay installed in the
test venv for the other tests); a control run shows that such a worker cannot build the artifacts itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dag_harness import (
    AIRFLOW_ENV,
    REPO_ROOT,
    STAND_IN_WHEELHOUSE,
    aws_connection,
    dags_test,
    emr_variables,
    reset_moto,
    with_settings,
)
from repo import WEIGHTS_FILE

BUCKET = "fruits-release"
DATE = "2026-05-01"
# What a worker without the build tools lacks: TensorFlow and the exporter, Spark and the nodes' packages.
NOT_ON_WORKERS = ["tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "pyspark", "PIL", "pillow_heif", "sklearn"]
# Amazon MWAA's image has Airflow and its providers; none of the packages above, nor the nodes' numeric stack.
NOT_ON_MWAA = [*NOT_ON_WORKERS, "matplotlib", "numpy", "pandas", "pyarrow"]
MWAA_REQUIREMENTS = REPO_ROOT / "infra" / "mwaa" / "requirements.txt"

pytestmark = pytest.mark.usefixtures("airflow_db")


def worker_without(env: dict[str, str], modules: list[str]) -> dict[str, str]:
    """``env`` for processes that lack ``modules`` and any package index."""
    return {
        **env,
        "PYTHONPATH": str(Path(__file__).with_name("missing_modules")),
        "FRUITS_TEST_MISSING_MODULES": ",".join(modules),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple/",  # nothing listens there
    }


@pytest.fixture(scope="module")
def release(moto_endpoint, boto, weights, tmp_path_factory) -> dict[str, str]:
    """A release built for BUCKET (the real export of the real weights, a prebuilt stand-in wheelhouse), twice."""
    reset_moto(moto_endpoint)
    s3 = boto("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=f"uploads/{DATE}/IMG_0001.jpg", Body=b"jpeg bytes")
    folder = tmp_path_factory.mktemp("release")
    command = [
        sys.executable, "-m", "fruits_dag.release", "--bucket", BUCKET, "--weights", str(WEIGHTS_FILE),
        "--wheelhouse", str(weights.parent / STAND_IN_WHEELHOUSE), "--cache", str(folder / "cache"),
        "--output", str(folder / "settings.json"),
    ]  # fmt: skip
    env = {
        **os.environ,
        **AIRFLOW_ENV,
        "PYTHONPATH": str(REPO_ROOT / "dags"),
        "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(moto_endpoint),
    }
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-4000:]
    settings = json.loads((folder / "settings.json").read_text())  # stdout has Airflow's log lines too
    assert first.stdout.rstrip().endswith(json.dumps(settings, indent=2))
    staged = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="code/")["Contents"]}
    # Built once: a second build finds everything staged (named by its inputs) and uploads nothing.
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout.rstrip().endswith(json.dumps(settings, indent=2))
    assert {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="code/")["Contents"]} == staged
    return settings


def test_a_release_stages_the_onnx_export_and_the_wheelhouse(release, boto):
    prefix = f"s3://{BUCKET}/code/artifacts/"
    assert release["fruits_weights"].startswith(prefix) and release["fruits_weights"].endswith(".opset17.onnx")
    assert release["fruits_wheelhouse"] == prefix + STAND_IN_WHEELHOUSE
    keys = {o["Key"] for o in boto("s3").list_objects_v2(Bucket=BUCKET, Prefix="code/")["Contents"]}
    assert keys == {r.removeprefix(f"s3://{BUCKET}/") for r in release.values()}
    model = boto("s3").get_object(Bucket=BUCKET, Key=release["fruits_weights"].removeprefix(f"s3://{BUCKET}/"))
    assert model["ContentLength"] > 8_000_000  # no top: 2.26 M parameters as float32, ~9 MB


def test_a_run_from_a_release_succeeds_on_a_worker_without_tensorflow_or_an_index(release, moto_endpoint, weights):
    from moto_emr import EmrEmulator

    env = worker_without(with_settings(emr_variables(moto_endpoint, BUCKET, weights), **release), NOT_ON_WORKERS)
    with EmrEmulator():
        result = dags_test(DATE, env)
    assert result.returncode == 0, result.explain()
    assert set(result.states.values()) == {"success"}, result.states
    log = result.log("stage_code")
    assert "to ONNX (once per weights file)" not in log and "Built the x86_64 wheelhouse" not in log  # built nothing
    # The nodes load the release's model: embed's step names it.
    assert release["fruits_weights"] in json.dumps(result.rendered["add_steps"])


def test_without_a_release_such_a_worker_cannot_build_the_model(moto_endpoint, weights, boto, release, tmp_path):
    """The control: the same worker, given Keras weights that no release exported (another bucket, an empty build
    cache), fails in stage_code because TensorFlow is missing."""
    from moto_emr import EmrEmulator

    other = "fruits-no-release"
    boto("s3").create_bucket(Bucket=other)
    boto("s3").put_object(Bucket=other, Key=f"uploads/{DATE}/IMG_0001.jpg", Body=b"jpeg bytes")
    settings = {**release, "fruits_weights": str(WEIGHTS_FILE), "fruits_build_cache": str(tmp_path / "cache")}
    env = worker_without(with_settings(emr_variables(moto_endpoint, other, weights), **settings), NOT_ON_WORKERS)
    env["AIRFLOW__CORE__MAX_TASK_RETRY_DELAY"] = "1"  # stage_code's retries a second apart, not minutes
    with EmrEmulator():
        result = dags_test(DATE, env)
    assert result.returncode != 0
    assert result.states["stage_code"] == "failed"
    log = result.log("stage_code")
    assert re.search(r"No module named '(tensorflow|tf2onnx|keras)' \(not installed on this worker\)", log), log[-3000:]


def test_the_dag_parses_with_only_what_mwaa_has(release):
    script = (
        "from airflow.dag_processing.dagbag import BundleDagBag\n"
        f"bag = BundleDagBag(dag_folder={str(REPO_ROOT / 'dags')!r}, bundle_path={str(REPO_ROOT / 'dags')!r})\n"
        "print(repr(bag.import_errors)); print(sorted(bag.dags['fruits_pipeline'].task_dict))\n"
        "import numpy\n"
    )
    env = worker_without(
        {**os.environ, **AIRFLOW_ENV, **with_settings({}, fruits_bucket=BUCKET, **release)}, NOT_ON_MWAA
    )
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    errors, tasks = proc.stdout.strip().splitlines()[-2:]
    assert errors == "{}"
    assert "create_cluster" in tasks and "take_lease" in tasks
    # ...and those packages really were missing there.
    assert "No module named 'numpy' (not installed on this worker)" in proc.stderr


def test_the_mwaa_requirements_are_pinned_and_carry_no_build_tools():
    lines = [line.split("#")[0].strip() for line in MWAA_REQUIREMENTS.read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("--")]
    assert requirements and all("==" in line for line in requirements), requirements
    names = {line.split("==")[0].split("[")[0].lower() for line in requirements}
    assert not names & {"tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "pyspark"}
    assert any(line.startswith("--constraint") for line in lines)
