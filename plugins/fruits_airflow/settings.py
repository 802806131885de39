"""Every deployment setting of the fruits pipeline, read in this one place from Airflow Variables.

Operators set them as Variables (UI, CLI) or as ``AIRFLOW_VAR_<NAME>`` environment variables; AWS credentials,
region and endpoint come from the connection ``aws_default``. The DAG file calls :func:`load` when it is parsed:
the backend and the sensors' timing shape the DAG, and since a worker parses the file again before it runs a task,
each task sees the values current at its start. A bad value is an import error of the DAG that names the Variable.
No secret or account id lives in the code.

:data:`VARIABLES` documents each Variable with its default; the DAG's ``doc_md`` and ``README.md`` show it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Backend = Literal["emr", "local"]
BACKENDS: tuple[Backend, ...] = ("emr", "local")

AWS_CONN_ID = "aws_default"
DEFAULT_EMR_RELEASE = "emr-7.13.0"  # Spark 3.5.6 and Python 3.11: what requirements.txt pins and CI tests
# spark_jobs/ next to plugins/ (the repository, or /opt/airflow in the Docker image).
DEFAULT_JOBS_DIR = Path(__file__).resolve().parents[2] / "spark_jobs"


@dataclass(frozen=True)
class VariableSpec:
    """One Airflow Variable the pipeline reads: its name, default (as text) and meaning."""

    name: str
    default: str
    description: str


VARIABLES: tuple[VariableSpec, ...] = (
    VariableSpec("fruits_backend", "`emr` if `fruits_bucket` is set, else `local`",
             "`emr`: Spark steps on a transient EMR cluster, storage in S3; `local`: `spark-submit --master "
             "local[*]` on the Airflow worker, storage in `fruits_local_root`."),
    VariableSpec("fruits_bucket", "(none; required for `emr`)", "S3 bucket holding the storage layout."),
    VariableSpec("fruits_local_root", "`$AIRFLOW_HOME/fruits`",
             "Folder holding the storage layout in `local` mode."),
    VariableSpec("fruits_local_driver_memory", "`2g`",
                 "`spark-submit --driver-memory` of the local jobs (in `local[*]` the driver does all the work)."),
    VariableSpec("fruits_poke_interval", "`120`", "Seconds between two pokes of every sensor (reschedule mode)."),
    VariableSpec("fruits_sensor_timeout", "`14400` (4 h)",
             "Seconds every sensor waits: for uploads (then the run is skipped), for an EMR step, for a "
             "`_SUCCESS` marker."),
    VariableSpec("fruits_weights", "`imagenet`",
             "MobileNetV2 no-top weights: a local `.h5` path (staged with the code), an `s3://` URI (`emr` "
             "only, used as is), or `imagenet` (Keras downloads them: needs internet on the nodes)."),
    VariableSpec("fruits_jobs_dir", "`spark_jobs/` next to `plugins/`",
             "Folder with the job scripts, `fruits_common/`, `requirements.txt`, `emr_bootstrap.sh`."),
    VariableSpec("fruits_emr_release", f"`{DEFAULT_EMR_RELEASE}`", "EMR release label of the cluster."),
    VariableSpec("fruits_emr_service_role", "`EMR_DefaultRole`", "EMR service role (`ServiceRole`)."),
    VariableSpec("fruits_emr_instance_profile", "`EMR_EC2_DefaultRole`",
             "Instance profile of the cluster's EC2 nodes (`JobFlowRole`)."),
    VariableSpec("fruits_emr_subnet_id", "(none: EMR's default VPC subnet)", "Subnet of the cluster."),
    VariableSpec("fruits_emr_log_uri", "`s3://<fruits_bucket>/logs/emr/`",
             "Where EMR writes cluster, step and container logs (`LogUri`)."),
    VariableSpec("fruits_emr_primary_instance_type", "`m5.xlarge`", "Instance type of the primary node."),
    VariableSpec("fruits_emr_idle_timeout", "`1800`",
             "Seconds of idleness after which EMR terminates the cluster itself (`AutoTerminationPolicy`): "
             "the safety net if the DAG's teardown never runs."),
)


class SettingsError(ValueError):
    """A Variable has a value the pipeline cannot use; the message names the Variable."""


@dataclass(frozen=True)
class Settings:
    """The deployment's settings, validated."""

    backend: Backend
    bucket: str | None
    local_root: Path
    local_driver_memory: str
    poke_interval: int
    sensor_timeout: int
    weights: str
    jobs_dir: Path
    emr_release: str
    emr_service_role: str
    emr_instance_profile: str
    emr_subnet_id: str | None
    emr_log_uri: str
    emr_primary_instance_type: str
    emr_idle_timeout: int

    @property
    def storage_root(self) -> str:
        """Root of the storage layout: ``s3://<bucket>`` or the local folder."""
        return f"s3://{self.bucket}" if self.backend == "emr" else str(self.local_root)


def _airflow_variable(name: str) -> str | None:
    from airflow.sdk import Variable  # lazy: keeps this module importable without Airflow

    return Variable.get(name, default=None)


def load(get: Callable[[str], str | None] = _airflow_variable) -> Settings:
    """Read and validate every Variable; ``get(name)`` returns a Variable's value or ``None`` when unset."""

    def text(name: str, default: str | None = None) -> str | None:
        value = get(name)
        value = value.strip() if isinstance(value, str) else value
        return value if value not in (None, "") else default

    def seconds(name: str, default: int, minimum: int) -> int:
        value = text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(f"Variable {name} must be a whole number of seconds, got {value!r}") from None
        if number < minimum:
            raise SettingsError(f"Variable {name} must be at least {minimum} seconds, got {number}")
        return number

    def memory(name: str, default: str) -> str:
        value = text(name, default)
        if not re.fullmatch(r"[1-9][0-9]*[kmgt]?", value.lower()):
            raise SettingsError(f"Variable {name} must be a JVM memory size such as 2g or 4096m, got {value!r}")
        return value

    bucket = text("fruits_bucket")
    if bucket is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise SettingsError(f"Variable fruits_bucket must be a bare S3 bucket name (no s3://), got {bucket!r}")
    backend = text("fruits_backend", "emr" if bucket else "local").lower()
    if backend not in BACKENDS:
        raise SettingsError(f"Variable fruits_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "emr" and bucket is None:
        raise SettingsError("Variable fruits_bucket is required when fruits_backend is emr")

    airflow_home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
    local_root = Path(text("fruits_local_root", str(airflow_home / "fruits"))).expanduser()
    if backend == "local" and not local_root.is_absolute():
        raise SettingsError(f"Variable fruits_local_root must be an absolute path, got {str(local_root)!r}")

    weights = text("fruits_weights", "imagenet")
    if weights.startswith("s3://") and backend == "local":
        raise SettingsError("Variable fruits_weights is an s3:// URI, which the local backend cannot read "
                            "(it makes no AWS call): give a local .h5 path or 'imagenet'")

    return Settings(
        backend=backend,  # type: ignore[arg-type]  # checked against BACKENDS above
        bucket=bucket,
        local_root=local_root,
        local_driver_memory=memory("fruits_local_driver_memory", "2g"),
        poke_interval=seconds("fruits_poke_interval", 120, minimum=1),
        sensor_timeout=seconds("fruits_sensor_timeout", 4 * 3600, minimum=1),
        weights=weights,
        jobs_dir=Path(text("fruits_jobs_dir", str(DEFAULT_JOBS_DIR))).expanduser(),
        emr_release=text("fruits_emr_release", DEFAULT_EMR_RELEASE),
        emr_service_role=text("fruits_emr_service_role", "EMR_DefaultRole"),
        emr_instance_profile=text("fruits_emr_instance_profile", "EMR_EC2_DefaultRole"),
        emr_subnet_id=text("fruits_emr_subnet_id"),
        emr_log_uri=text("fruits_emr_log_uri", f"s3://{bucket}/logs/emr/" if bucket else ""),
        emr_primary_instance_type=text("fruits_emr_primary_instance_type", "m5.xlarge"),
        # EMR accepts 60 s to 7 days.
        emr_idle_timeout=seconds("fruits_emr_idle_timeout", 1800, minimum=60),
    )


def variables_markdown() -> str:
    """The Variables as a Markdown table (for the DAG's doc_md and the README)."""
    rows = [f"| `{v.name}` | {v.default} | {v.description} |" for v in VARIABLES]
    return "\n".join(["| Variable | Default | Meaning |", "|---|---|---|", *rows])
