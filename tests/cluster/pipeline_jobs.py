"""The pipeline's four jobs with the command lines of the run plan (what the EMR steps and the local tasks run),
submitted to a given master, and their outputs read back as rows to compare runs with.

:func:`plan_run` stages the code bundle under a storage root and builds the run's plan exactly as the DAG's
``stage_code`` does (``fruits_dag.plan.build_plan``); :func:`submit` runs one of its jobs with
``spark-submit --master <master> --deploy-mode client <the plan's arguments>``, as an EMR step does on YARN.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from spark_cluster import SPARK_SUBMIT

from fruits_dag.backends.local import LOG4J2_CONFIG, LocalCodeStore
from fruits_dag.bundle import build_bundle, stage
from fruits_dag.params import RunParams
from fruits_dag.plan import JobRun, Layout, RunPlan, build_plan
from fruits_dag.settings import load
from repo import REPO_ROOT

RUN_DATE = dt.date(2026, 11, 30)
PCA_K = 4
# The same task count in every run, local or on the cluster: the jobs size their partitions by it.
PARALLELISM = 4
# As on EMR (backends/emr/spark_sizing.py): a task is tried 4 times before its job fails.
TASK_MAX_FAILURES = 4


def plan_run(root: Path, uploads: str, weights: Path, day: dt.date = RUN_DATE) -> RunPlan:
    """Stage the bundle under ``root`` and plan a bulk load of ``uploads`` (a folder or an s3:// URI) into it."""
    settings = load({"fruits_backend": "local", "fruits_local_root": str(root), "fruits_weights": str(weights)})
    bundle = build_bundle(REPO_ROOT / "spark_jobs", str(weights))
    stage(bundle, Layout(str(root)).code(bundle.digest), LocalCodeStore())
    plan = build_plan(settings, RunParams(input_uri="datasets", mode="full", pca_k=PCA_K), day, bundle)
    # The plan's clean reads <root>/datasets; point it at the uploads (a local folder or S3) instead.
    clean = plan.job("clean")
    args = list(clean.args)
    args[args.index("--input") + 1] = uploads
    return replace(plan, jobs=[replace(j, args=args) if j is clean else j for j in plan.jobs])


@dataclass
class Submitted:
    """A job submitted with spark-submit: its process and the file its output goes to."""

    name: str
    proc: subprocess.Popen
    log: Path

    def wait(self, timeout: float = 600) -> int:
        return self.proc.wait(timeout)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


def submit(
    job: JobRun,
    master: str,
    logs: Path,
    conf: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    attempt: str = "",
    ui_port: int | None = None,
) -> Submitted:
    """Start ``job`` on ``master`` (``local[2]`` or ``spark://...``); its driver's output goes to ``logs``.

    ``ui_port``: serve the driver's UI (and REST API) there, to follow the job's tasks.
    """
    settings = {
        "spark.default.parallelism": str(PARALLELISM),
        "spark.sql.shuffle.partitions": str(PARALLELISM),
        "spark.ui.showConsoleProgress": "false",
        # Every process of the test talks over 127.0.0.1 (the host name may resolve to another interface).
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        **(conf or {}),
    }
    if master.startswith("spark://"):
        settings = {"spark.task.maxFailures": str(TASK_MAX_FAILURES), "spark.executor.memory": "1g", **settings}
    if ui_port is not None:
        settings.update({"spark.ui.enabled": "true", "spark.ui.port": str(ui_port)})
    settings.setdefault("spark.ui.enabled", "false")
    command = [str(SPARK_SUBMIT), "--master", master, "--deploy-mode", "client", "--driver-memory", "1g"]
    command += ["--driver-java-options", f"-Dlog4j2.configurationFile={LOG4J2_CONFIG.as_uri()}"]
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    command += job.submit_args()
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{job.name}{attempt}.log"
    # The executors import the jobs' package from --py-files only, as on EMR: no PYTHONPATH of the tests.
    process_env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": "", "SPARK_LOCAL_IP": "127.0.0.1"}
    process_env.update(env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=process_env, cwd=logs, start_new_session=True
        )
    return Submitted(job.name, proc, log)


def run_jobs(plan: RunPlan, names: list[str], master: str, logs: Path, **kwargs) -> None:
    """Run the plan's jobs ``names`` one after the other; AssertionError with the driver's output on a failure."""
    for name in names:
        job = submit(plan.job(name), master, logs, **kwargs)
        assert job.wait() == 0, f"{name} on {master} failed:\n{job.output[-5000:]}"


# -- outputs as rows --------------------------------------------------------------------------------------------------
STAGES = ("clean", "rejected", "embed", "pca")


def _value(value):
    if isinstance(value, np.ndarray | list):
        return np.asarray(value, dtype=np.float32).tobytes()
    return value


def rows(folder: Path | str, relative_to: str | None = None) -> list[tuple]:
    """Every row of the Parquet dataset under ``folder`` (hive partitions as columns), sorted; float arrays as
    their exact bytes. ``relative_to``: strip that prefix from ``path`` (runs that read the same files from
    different places)."""
    table = ds.dataset(str(folder), format="parquet", partitioning="hive").to_table()
    frame = table.to_pandas()
    if relative_to is not None:
        frame["path"] = frame["path"].str.removeprefix(relative_to)
        if "detail" in frame:  # "same content as <path>"
            frame["detail"] = frame["detail"].str.replace(relative_to, "", regex=False)
    columns = sorted(frame.columns)
    return sorted(tuple(_value(record[c]) for c in columns) for record in frame.to_dict("records"))


def stage_rows(root: Path, names: tuple[str, ...] = STAGES, relative_to: str | None = None) -> dict[str, list]:
    """The rows of the stages ``names`` under the storage root ``root``."""
    return {name: rows(Layout(str(root)).stage(name), relative_to) for name in names}


@dataclass
class Run:
    """A storage root the pipeline's jobs ran into, and its plan."""

    root: Path
    plan: RunPlan

    def rows(self, names: tuple[str, ...] = STAGES, relative_to: str | None = None) -> dict[str, list]:
        return stage_rows(self.root, names, relative_to)


def new_run(root: Path, uploads: Path | str, weights: Path) -> Run:
    """A fresh storage root with the code staged and the run planned (nothing run yet)."""
    return Run(root, plan_run(root, str(uploads), weights))
