"""What one run of ``fruits_pipeline`` does, computed once from the settings, the params and the run date.

Pure functions, no I/O: the ``stage_code`` task builds a :class:`RunPlan` and hands it to the other tasks through
XCom (with what its backend adds, such as the EMR cluster request), so the step arguments and sensor keys of a run
can be read in the UI and in tests. Every backend uses the same layout and the same job arguments; only the way the
jobs are launched differs (``fruits_dag/backends/``).

Storage layout (under ``s3://<bucket>/`` or the local root)::

    uploads/YYYY-MM-DD/...   what the app uploads; a nightly run reads its run date's folder
    datasets/...             bulk loads (Fruits-360), processed with mode=full
    code/<digest>/...        staged scripts, fruits_common.zip, requirements, bootstrap script, weights
    stages/clean/ingest_date=YYYY-MM-DD/     valid images          (clean.py)
    stages/rejected/ingest_date=YYYY-MM-DD/  rejected files        (clean.py)
    stages/embed/            MobileNetV2 features, appended        (embed.py)
    stages/pca/pca_version=vNNNN/  the final features, one folder per PCA basis version   (pca.py)
    models/pca/CURRENT, vNNNN/     the PCA model versions and the pointer to the current one (pca.py)
    reports/YYYY-MM-DD/      report.json and plots of the run      (report.py)
    logs/emr/                EMR cluster and step logs (EMR only)
    logs/spark-events/YYYY-MM-DD/  Spark event logs of the run (EMR only)
    locks/writer.json        the lease of the run writing under this root (fruits_dag.lease)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from fruits_dag.bundle import JOB_NAMES, SHARED_ZIP, Bundle
from fruits_dag.params import RunParams
from fruits_dag.settings import Settings

STEP_NAMES = JOB_NAMES  # one EMR step (one local task) per job, in run order
SUCCESS = "_SUCCESS"


def run_date(logical_date: dt.datetime | None, run_after: dt.datetime) -> dt.date:
    """The upload day a run processes (UTC).

    Scheduled runs: the day of their logical date, i.e. the start of the data interval that just ended (the
    02:00 run on the 2nd processes ``uploads/<1st>/``). ``airflow dags test fruits_pipeline 2024-05-01`` and
    manual runs given a logical date: that date's day. Manual runs without a logical date (Airflow 3 allows
    them): the day they were triggered, i.e. today's uploads so far.
    """
    moment = logical_date or run_after
    return moment.astimezone(dt.UTC).date()


class PlanError(ValueError):
    """The run's params do not fit the backend; the message says which param."""


@dataclass(frozen=True)
class Layout:
    """The storage layout under one root (``s3://bucket`` or ``/abs/folder``)."""

    root: str

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p.strip("/"))])

    def code(self, digest: str) -> str:
        return self.join("code", digest)

    def artifacts(self) -> str:
        """Build-once files named by their inputs (the ONNX export, the nodes' wheelhouses)."""
        return self.join("code", "artifacts")

    def stage(self, name: str) -> str:
        return self.join("stages", name)

    def pca_model(self) -> str:
        return self.join("models", "pca")

    def report(self, day: dt.date) -> str:
        return self.join("reports", day.isoformat())

    def spark_events(self, day: dt.date) -> str:
        """Spark's event logs of the run of ``day`` (EMR): what a history server shows after the cluster is gone."""
        return self.join("logs", "spark-events", day.isoformat())

    def lease(self) -> str:
        """The writer's lease: one run at a time writes under the root."""
        return self.join("locks", "writer.json")


@dataclass(frozen=True)
class JobRun:
    """One Spark job of the run: ``spark-submit --py-files <py_files> <script> <args...>``."""

    name: str
    script: str
    py_files: str
    args: list[str]
    markers: list[str]  # the _SUCCESS files the job writes last
    summary: str = ""  # the JSON file where the job says what it did (read for the asset event's extras)

    def submit_args(self) -> list[str]:
        """The part of the spark-submit command line both backends share."""
        return ["--py-files", self.py_files, self.script, *self.args]


@dataclass(frozen=True)
class RunPlan:
    """Everything the tasks of one run need; :meth:`to_xcom` is what ``stage_code`` returns."""

    run_date: dt.date
    code_uri: str
    uploads_pattern: str
    jobs: list[JobRun]
    # The upload folders of the nights before this one that, all empty with this one, make an alert.
    earlier_uploads: list[str]
    lease_uri: str

    def job(self, name: str) -> JobRun:
        return next(j for j in self.jobs if j.name == name)

    def to_xcom(self) -> dict[str, Any]:
        """JSON-able values, one XCom key each (the DAG's templates pull them by key)."""
        values: dict[str, Any] = {
            "run_date": self.run_date.isoformat(),
            "code_uri": self.code_uri,
            "uploads_pattern": self.uploads_pattern,
            "earlier_uploads": self.earlier_uploads,
            "lease_uri": self.lease_uri,
        }
        for job in self.jobs:
            values[f"{job.name}_job"] = asdict(job)
            values[f"{job.name}_markers"] = job.markers
            values[f"{job.name}_summary"] = job.summary
        return values


def _input_root(settings: Settings, layout: Layout, input_uri: str) -> str:
    """The params' ``input_uri`` as a URI of the backend: relative values live under the storage root."""
    value = input_uri.strip()
    if settings.backend == "emr":
        if value.startswith("s3://"):
            return value.rstrip("/")
        if "://" in value or value.startswith("/"):
            raise PlanError(f"param input_uri must be an s3:// URI or a prefix in the bucket, got {value!r}")
    else:
        if "://" in value:
            raise PlanError(
                f"param input_uri must be a folder (absolute, or relative to fruits_local_root) "
                f"with the local backend, got {value!r}"
            )
        if value.startswith("/"):
            return value.rstrip("/")
    return layout.join(value)


def build_plan(
    settings: Settings, params: RunParams, day: dt.date, bundle: Bundle, model: str | None = None
) -> RunPlan:
    """The run's jobs (the job contract's command lines) and sensor keys, the same for every backend.

    ``model``: the model file embed loads, when the backend staged one (the EMR nodes get the ONNX export);
    otherwise the weights of the bundle or of the settings.
    """
    layout = Layout(settings.storage_root)
    code = layout.code(bundle.digest)
    day_iso = day.isoformat()
    partition = f"ingest_date={day_iso}"

    source = _input_root(settings, layout, params.input_uri)
    if params.mode == "full":
        # A reload: whatever an earlier run kept or rejected (by path) is skipped before a byte of it is read.
        clean_inputs, window = [source], ["--skip-accounted"]
    else:
        # The lookback window: this day and the days before it. Files an earlier run accounted for are skipped,
        # so missed days and late uploads are processed by the next run, exactly once.
        first = day - dt.timedelta(days=settings.lookback_days - 1)
        clean_inputs = [f"{source}/{first + dt.timedelta(days=n)}" for n in range(settings.lookback_days)]
        window = ["--skip-accounted-since", first.isoformat()]
    clean, rejected, embed, pca = (layout.stage(n) for n in ("clean", "rejected", "embed", "pca"))
    report = layout.report(day)
    weights = model or (f"{code}/{bundle.weights_name}" if bundle.weights_name else settings.weights)
    size = ["--k", str(params.pca_k)] if params.pca_k is not None else ["--variance", repr(params.pca_variance)]

    def job(name: str, args: list[str], markers: list[str], summary: str) -> JobRun:
        script, py_files = f"{code}/{name}.py", f"{code}/{SHARED_ZIP}"
        return JobRun(name=name, script=script, py_files=py_files, args=args, markers=markers, summary=summary)

    jobs = [
        job(
            "clean",
            ["--input", *clean_inputs, "--output", clean, "--rejected", rejected, "--run-date", day_iso, *window],
            [f"{clean}/{partition}/{SUCCESS}", f"{rejected}/{partition}/{SUCCESS}"],
            f"{clean}/{partition}/_run.json",
        ),
        job(
            "embed",
            ["--input", clean, "--output", embed, "--weights", weights, "--run-date", day_iso],
            [f"{embed}/{SUCCESS}"],
            f"{embed}/_summary.json",
        ),
        job(
            "pca",
            [
                "--input",
                embed,
                "--output",
                pca,
                "--model",
                layout.pca_model(),
                *size,
                "--refit",
                params.pca_refit,
                "--drift-threshold",
                repr(settings.pca_drift_threshold),
                "--keep-versions",
                str(settings.pca_keep_versions),
                "--run-date",
                day_iso,
            ],
            [f"{pca}/{SUCCESS}"],
            f"{pca}/_summary.json",
        ),
        job(
            "report",
            ["--clean", clean, "--rejected", rejected, "--pca", pca, "--output", report, "--run-date", day_iso],
            [f"{report}/{SUCCESS}"],
            f"{report}/report.json",
        ),
    ]
    return RunPlan(
        run_date=day,
        code_uri=code,
        # fnmatch's '*' also matches '/': any file at any depth under the folder counts.
        # A run starts when its own day has uploads (it then reads the whole window); full mode: anything.
        uploads_pattern=f"{source}/*" if params.mode == "full" else f"{source}/{day_iso}/*",
        jobs=jobs,
        earlier_uploads=[]
        if params.mode == "full"
        else [f"{source}/{day - dt.timedelta(days=n)}/" for n in range(1, settings.alert_after_empty_nights)],
        lease_uri=layout.lease(),
    )
