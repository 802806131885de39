"""Every deployment setting of the fruits pipeline, read in this one place from one Airflow Variable.

The settings live in the Variable ``fruits_settings`` (:data:`SETTINGS_VARIABLE`), a JSON object such as
``{"fruits_bucket": "my-fruits", "fruits_sensor_timeout": 7200}``; operators set it in the UI, with
``airflow variables set`` (``infra/deploy.py --apply`` merges the stack's outputs into it) or as the environment
variable ``AIRFLOW_VAR_FRUITS_SETTINGS``. AWS credentials, region and endpoint come from the connection
``aws_default``. The DAG file calls :func:`read` when it is parsed: **one** Variable look-up per parse (a secrets
backend is asked once, not once per setting), and since a worker parses the file again before it runs a task, each
task sees the values current at its start. A bad value, an unknown name or text that is not a JSON object is an
import error of the DAG that names the setting. No secret or account id lives in the code.

Each setting is one :class:`Setting`: its name, its default, its parser and its meaning, written once. The docs'
table (:func:`variables_markdown`) and :func:`load` both come from :data:`SETTINGS`.
"""

from __future__ import annotations

import difflib
import json
import os
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AWS_CONN_ID = "aws_default"
SETTINGS_VARIABLE = "fruits_settings"  # the one Airflow Variable: a JSON object of the settings below
DEFAULT_EMR_RELEASE = "emr-7.13.0"  # Spark 3.5.6 and Python 3.11: what requirements.txt pins and CI tests
# spark_jobs/ at the repository root (or /opt/airflow/spark_jobs in the Docker image): dags/fruits_dag/ -> ../../
DEFAULT_JOBS_DIR = Path(__file__).resolve().parents[2] / "spark_jobs"
INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[0-9]*[a-z0-9]+")  # an EC2 instance type (settings and params)


def backends() -> tuple[str, ...]:
    """The backends there are: one module each in ``fruits_dag/backends/``."""
    folder = Path(__file__).with_name("backends")
    return tuple(sorted(m.name for m in pkgutil.iter_modules([str(folder)]) if not m.name.startswith("_")))


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot use; the message names the setting."""


# -- parsers: text -> value, ValueError with the reason -----------------------------------------------------------
def _text(value: str) -> str:
    return value


def _seconds(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be a whole number of seconds, got {value!r}") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum} seconds, got {number}")
        return number

    return parse


def _memory(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*[kmgt]?", value.lower()):
        raise ValueError(f"must be a JVM memory size such as 2g or 4096m, got {value!r}")
    return value


def _environment(value: str) -> str:
    if not re.fullmatch(r"[\w.:/=+@ -]{1,256}", value):
        raise ValueError(f"must be 1-256 letters, digits, spaces or _.:/=+-@ (an EMR tag value), got {value!r}")
    return value


def _bucket(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
        raise ValueError(f"must be a bare S3 bucket name (no s3://), got {value!r}")
    return value


def _backend(value: str) -> str:
    value = value.lower()
    if value not in backends():
        raise ValueError(f"must be one of {', '.join(backends())}, got {value!r}")
    return value


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 < number < 1.0:
        raise ValueError(f"must be between 0 and 1 (exclusive), got {number}")
    return number


def _instance_types(value: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in value.split(",") if t.strip())
    bad = [t for t in types if not INSTANCE_TYPE.fullmatch(t)]
    if bad or not types:
        raise ValueError(f"must be EC2 instance types separated by commas (m5.xlarge,m6i.xlarge), got {value!r}")
    return types


def _wheelhouses(value: str) -> tuple[str, ...]:
    if value.lower() == "build":
        return ()
    files = tuple(f.strip() for f in value.split(",") if f.strip())
    bad = [f for f in files if not re.search(r"-(x86_64|aarch64)\.tar$", f)]
    if bad:
        raise ValueError(
            f"must be 'build' or wheelhouse files named ...-x86_64.tar / ...-aarch64.tar (make wheelhouse), got {bad}"
        )
    return files


def _topic_arn(value: str) -> str:
    if not re.fullmatch(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}", value):
        raise ValueError(f"must be an SNS topic ARN (arn:aws:sns:<region>:<account>:<name>), got {value!r}")
    return value


def _subnets(value: str) -> tuple[str, ...]:
    subnets = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in subnets if not re.fullmatch(r"subnet-[0-9a-f]+", v)]
    if bad:
        raise ValueError(f"must be subnet ids separated by commas (subnet-0abc,subnet-0def), got {bad}")
    return subnets


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"must be a whole number, got {value!r}") from None
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


@dataclass(frozen=True)
class Setting:
    """One setting of the pipeline (a key of the Variable ``fruits_settings``).

    ``default`` is the value when the Variable is unset: a constant, or a function of the settings read before
    it (``None``: no value). ``shown`` is how the docs show a computed default.
    """

    name: str
    parse: Callable[[str], Any]
    default: Any
    description: str
    shown: str | None = None

    @property
    def field(self) -> str:
        return self.name.removeprefix("fruits_")

    @property
    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        return "(none)" if self.default is None else f"`{self.default}`"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "fruits_bucket", _bucket, None, "S3 bucket holding the storage layout.", shown="(none; required for `emr`)"
    ),
    Setting(
        "fruits_backend",
        _backend,
        lambda s: "emr" if s["bucket"] else "local",
        "`emr`: Spark steps on a transient EMR cluster, storage in S3; `local`: `spark-submit --master "
        "local[*]` on the Airflow worker, storage in `fruits_local_root`.",
        shown="`emr` if `fruits_bucket` is set, else `local`",
    ),
    Setting(
        "fruits_local_root",
        _path,
        lambda s: Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "fruits",
        "Folder holding the storage layout in `local` mode.",
        shown="`$AIRFLOW_HOME/fruits`",
    ),
    Setting(
        "fruits_environment",
        _environment,
        lambda s: s["bucket"] or f"local:{s['local_root']}",
        "The deployment's name, tagged on every cluster (`fruits:environment`): a run acts only on clusters of its "
        "own environment, so a staging and a production deployment sharing an account (and run ids) never touch "
        "each other's clusters.",
        shown="`fruits_bucket` (`local:<fruits_local_root>` locally)",
    ),
    Setting(
        "fruits_local_driver_memory",
        _memory,
        "2g",
        "`spark-submit --driver-memory` of the local jobs (in `local[*]` the driver does all the work).",
    ),
    Setting("fruits_poke_interval", _seconds(1), 120, "Seconds between two pokes of every sensor (reschedule mode)."),
    Setting(
        "fruits_sensor_timeout",
        _seconds(1),
        4 * 3600,
        "Seconds every sensor waits: for uploads (then the run is skipped), for an EMR step, for a `_SUCCESS` marker.",
        shown="`14400` (4 h)",
    ),
    Setting(
        "fruits_weights",
        _text,
        "imagenet",
        "MobileNetV2 no-top weights: a local `.h5` path, an `s3://` URI (`emr` only) or `imagenet` (Keras "
        "downloads them). With `emr`, `stage_code` exports them to ONNX once and stages the export (the nodes have "
        "no TensorFlow); a `.onnx` export is staged (or, in S3, used) as is.",
    ),
    Setting(
        "fruits_lookback_days",
        _count,
        3,
        "Upload days a nightly run reads: its own and the days before it. Files an earlier run kept or rejected are "
        "skipped, so uploads of missed nights and late uploads are processed by the next run, exactly once.",
    ),
    Setting(
        "fruits_pca_drift_threshold",
        _fraction,
        0.05,
        "With `pca_refit=auto`, a new PCA basis is fitted when the share of a night's variance that the current "
        "basis captures falls more than this below the share it captures on rows held out of its fit, and by at "
        "least 3 standard errors (docs/jobs.md).",
    ),
    Setting(
        "fruits_pca_keep_versions",
        _count,
        3,
        "PCA versions kept (model and projected rows) after a refit; older ones are deleted.",
    ),
    Setting(
        "fruits_jobs_dir",
        _path,
        DEFAULT_JOBS_DIR,
        "Folder with the job scripts, `fruits_common/`, `requirements.txt`, `emr_bootstrap.sh`.",
        shown="`spark_jobs/` of the repository",
    ),
    Setting(
        "fruits_build_cache",
        _path,
        Path("~/.cache/fruits-pipeline").expanduser(),
        "Folder on the Airflow workers where `stage_code` builds the EMR nodes' ONNX model and wheelhouses before "
        "staging them (S3 keeps them too: a worker without the cache only re-checks S3).",
        shown="`~/.cache/fruits-pipeline`",
    ),
    Setting(
        "fruits_wheelhouse",
        _wheelhouses,
        (),
        "The EMR nodes' Python packages: `build` (`stage_code` downloads the wheels of `requirements.txt` for "
        "CPython 3.11 manylinux, once per requirements change and architecture) or prebuilt wheelhouse files "
        "(`make wheelhouse`), comma-separated, one per architecture the cluster uses.",
        shown="`build`",
    ),
    Setting("fruits_emr_release", _text, DEFAULT_EMR_RELEASE, "EMR release label of the cluster."),
    Setting("fruits_emr_service_role", _text, "EMR_DefaultRole", "EMR service role (`ServiceRole`)."),
    Setting(
        "fruits_emr_instance_profile",
        _text,
        "EMR_EC2_DefaultRole",
        "Instance profile of the cluster's EC2 nodes (`JobFlowRole`).",
    ),
    Setting(
        "fruits_emr_subnet_ids",
        _subnets,
        (),
        "Subnets of the cluster, comma-separated, in different Availability Zones: an instance fleet cluster (Spot "
        "task nodes, scaling) is offered them all and launches where there is capacity; instance groups use the "
        "first. The stack of `infra/` makes two private ones tagged for EMR's managed policy (`infra/deploy.py` "
        "prints them).",
        shown="(none: EMR's default VPC subnet)",
    ),
    Setting(
        "fruits_emr_log_uri",
        _text,
        lambda s: f"s3://{s['bucket']}/logs/emr/" if s["bucket"] else "",
        "Where EMR writes cluster, step and container logs (`LogUri`).",
        shown="`s3://<fruits_bucket>/logs/emr/`",
    ),
    Setting(
        "fruits_emr_security_configuration",
        _text,
        None,
        "EMR security configuration every cluster uses (`SecurityConfiguration`): the stack's encrypts local disks "
        "and EBS with its KMS key, EMRFS data with SSE-S3, and traffic between nodes when given certificates.",
        shown="(none)",
    ),
    Setting("fruits_emr_primary_instance_type", _text, "m5.xlarge", "Instance type of the primary node."),
    Setting(
        "fruits_emr_spot_instance_types",
        _instance_types,
        ("m5.xlarge", "m5a.xlarge", "m6i.xlarge", "m6a.xlarge", "m7i.xlarge"),
        "With Spot task nodes (run params `spot_task_instances`, `max_instances`), the other types the core and "
        "task fleets may launch besides `core_instance_type` (same size, one unit each): more pools, fewer "
        "interruptions.",
        shown="`m5.xlarge,m5a.xlarge,m6i.xlarge,m6a.xlarge,m7i.xlarge`",
    ),
    Setting(
        "fruits_alert_topic_arn",
        _topic_arn,
        None,
        "SNS topic that hears of a task failing for good, a run missing its deadline and too many nights without "
        "uploads (the stack's `OpsTopic`; subscribe e-mail, chat or paging to it).",
        shown="(none: failures are only in Airflow)",
    ),
    Setting(
        "fruits_run_deadline",
        _seconds(1),
        6 * 3600,
        "Seconds after a night's scheduled start (its logical date + 1 day) by which its run should have ended; a "
        "run still going then is reported to the "
        "alert topic (an Airflow deadline alert) and goes on.",
        shown="`21600` (6 h)",
    ),
    Setting(
        "fruits_run_timeout",
        _seconds(60),
        20 * 3600,
        "Seconds after which a run is stopped and failed (`dagrun_timeout`), before the next night starts; also "
        "how long a run's writer lease is valid.",
        shown="`72000` (20 h)",
    ),
    Setting(
        "fruits_task_timeout",
        _seconds(60),
        3600,
        "Seconds a task other than a job may run (`execution_timeout`; for sensors, each poke). The jobs are "
        "bounded by `fruits_job_timeout` (local) and `fruits_sensor_timeout` (the EMR step watchers).",
    ),
    Setting(
        "fruits_job_timeout",
        _seconds(60),
        4 * 3600,
        "Seconds a local job (`spark-submit` on the worker) may run before it is killed and its task fails.",
        shown="`14400` (4 h)",
    ),
    Setting(
        "fruits_build_timeout",
        _seconds(60),
        1800,
        "Seconds `stage_code` gives each child process that builds an artifact (the ONNX export, one `pip "
        "download` of a wheelhouse) before killing it.",
    ),
    Setting(
        "fruits_alert_after_empty_nights",
        _count,
        3,
        "Nights in a row without uploads after which `wait_for_uploads` fails (and so alerts) instead of skipping "
        "the run: a broken upload path shows as skipped nights.",
    ),
    # EMR accepts 60 s to 7 days.
    Setting(
        "fruits_emr_idle_timeout",
        _seconds(60),
        1800,
        "Seconds of idleness after which EMR terminates the cluster itself (`AutoTerminationPolicy`): "
        "the safety net if the DAG's teardown never runs.",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The deployment's settings, validated (one attribute per :data:`SETTINGS` entry, without ``fruits_``)."""

    bucket: str | None
    backend: str
    local_root: Path
    environment: str
    local_driver_memory: str
    poke_interval: int
    sensor_timeout: int
    weights: str
    lookback_days: int
    pca_drift_threshold: float
    pca_keep_versions: int
    jobs_dir: Path
    build_cache: Path
    wheelhouse: tuple[str, ...]
    emr_release: str
    emr_service_role: str
    emr_instance_profile: str
    emr_subnet_ids: tuple[str, ...]
    emr_log_uri: str
    emr_security_configuration: str | None
    emr_primary_instance_type: str
    emr_spot_instance_types: tuple[str, ...]
    alert_topic_arn: str | None
    run_deadline: int
    run_timeout: int
    task_timeout: int
    job_timeout: int
    build_timeout: int
    alert_after_empty_nights: int
    emr_idle_timeout: int

    @property
    def storage_root(self) -> str:
        """Root of the storage layout: ``s3://<bucket>`` or the local folder."""
        return f"s3://{self.bucket}" if self.backend == "emr" else str(self.local_root)


def read() -> Settings:
    """The settings from the Variable ``fruits_settings``: one look-up (unset: every default)."""
    from airflow.sdk import Variable  # lazy: keeps this module importable without Airflow

    return parse_variable(Variable.get(SETTINGS_VARIABLE, default=None))


def parse_variable(text: str | None) -> Settings:
    """The settings from the Variable's text, a JSON object of settings (``None`` or empty: every default)."""
    if text is None or not text.strip():
        return load({})
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"Variable {SETTINGS_VARIABLE} must be a JSON object of settings: {exc}") from None
    if not isinstance(values, dict):
        raise SettingsError(
            f"Variable {SETTINGS_VARIABLE} must be a JSON object of settings, got {type(values).__name__}"
        )
    return load(values)


def _as_text(value: Any) -> str:
    """A JSON value as the text the parsers read: numbers as written, lists joined by commas."""
    if isinstance(value, bool) or isinstance(value, dict):
        raise ValueError(f"must be text, a number or a list, got {json.dumps(value)}")
    if isinstance(value, list):
        return ",".join(_as_text(v) for v in value)
    return str(value).strip()


def load(values: Mapping[str, Any]) -> Settings:
    """Validate the settings ``values`` (names to values; a missing name, ``null`` or ``""``: its default)."""
    names = [s.name for s in SETTINGS]
    for name in values:
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else "; the settings are listed in docs/dag.md"
            raise SettingsError(f"Variable {SETTINGS_VARIABLE} has no setting {name!r}{hint}")
    parsed: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = values.get(setting.name)
        try:
            text = None if raw is None else _as_text(raw)
            if not text:
                default = setting.default
                parsed[setting.field] = default(parsed) if callable(default) else default
                continue
            parsed[setting.field] = setting.parse(text)
        except ValueError as exc:
            raise SettingsError(f"Setting {setting.name} {exc}") from None
    _check_together(parsed)
    return Settings(**parsed)


def _check_together(values: Mapping[str, Any]) -> None:
    """Rules that involve more than one setting."""
    backend = values["backend"]
    if backend == "emr" and values["bucket"] is None:
        raise SettingsError("Setting fruits_bucket is required when fruits_backend is emr")
    if backend == "local" and not values["local_root"].is_absolute():
        raise SettingsError(f"Setting fruits_local_root must be an absolute path, got {str(values['local_root'])!r}")
    if values["run_deadline"] >= values["run_timeout"]:
        raise SettingsError(
            f"Setting fruits_run_deadline ({values['run_deadline']} s) must be less than fruits_run_timeout "
            f"({values['run_timeout']} s): a run stopped by its timeout never reaches its deadline"
        )
    if values["weights"].startswith("s3://") and backend == "local":
        raise SettingsError(
            "Setting fruits_weights is an s3:// URI, which the local backend cannot read "
            "(it makes no AWS call): give a local .h5 path or 'imagenet'"
        )


def variables_markdown() -> str:
    """The settings as a Markdown table (for the DAG's doc_md and docs/dag.md)."""
    rows = [f"| `{s.name}` | {s.shown_default} | {s.description} |" for s in SETTINGS]
    return "\n".join(["| Setting | Default | Meaning |", "|---|---|---|", *rows])
