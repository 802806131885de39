"""The local backend: the jobs run with ``spark-submit --master local[*]`` on the Airflow worker; storage in a folder.

Its tasks: one :class:`LocalSparkJobOperator` per job and :class:`LocalKeySensor`s (the local twin of
``S3KeySensor``) on the uploads and the ``_SUCCESS`` markers; no cluster to set up or tear down. No AWS call is
made. The code bundle is copied to ``<fruits_local_root>/code/<digest>/``.
"""

from __future__ import annotations

import collections
import datetime as dt
import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, BaseSensorOperator
from airflow.sdk.exceptions import AirflowException

from fruits_dag import alerts, backends
from fruits_dag.bundle import BundleFile
from fruits_dag.lease import LocalLeaseStore
from fruits_dag.plan import JobRun

CheckFn = Callable[..., bool]


class LocalBackend(backends.Backend):
    """Jobs through ``spark-submit --master local[*]`` on the worker, storage in ``fruits_local_root``."""

    def code_store(self) -> LocalCodeStore:
        return LocalCodeStore()

    def key_sensor(self, task_id: str, keys: str, **kwargs: Any) -> BaseOperator:
        return LocalKeySensor(task_id=task_id, path=keys, **self.sensor_args, **kwargs)

    def uploads_sensor(self, task_id: str, pattern: str, earlier: str) -> BaseOperator:
        return LocalUploadsSensor(
            task_id=task_id,
            path=pattern,
            wildcard_match=True,
            earlier=earlier,
            quiet_nights=self.settings.alert_after_empty_nights,
            **self.sensor_args,
        )

    def lease_store(self, uri: str) -> LocalLeaseStore:
        return LocalLeaseStore(uri)

    def job_task(self, name: str, index: int) -> BaseOperator:
        # A failed job fails the same way again: no retries.
        return LocalSparkJobOperator(
            task_id=f"{name}_step",
            job=backends.from_plan(f"{name}_job"),
            driver_memory=self.settings.local_driver_memory,
            retries=0,
            execution_timeout=dt.timedelta(seconds=self.settings.job_timeout),
        )


BACKEND = LocalBackend


_TAIL_LINES = 200
LOG4J2_CONFIG = Path(__file__).parents[1] / "spark-log4j2.properties"


def spark_submit_path() -> str:
    """The ``spark-submit`` of the pyspark installed beside this Python (the pinned Spark), else the PATH's."""
    beside = Path(sys.executable).parent / "spark-submit"
    found = str(beside) if beside.is_file() else shutil.which("spark-submit")
    if not found:
        raise AirflowException(f"spark-submit not found beside {sys.executable} nor on PATH: install pyspark")
    return found


def job_error(lines: Sequence[str]) -> str:
    """The job's own error from its output: its ``<prog>: error: ...`` line, else a traceback's last line."""
    explicit = [line.strip() for line in lines if re.search(r"^\S+: error: ", line.strip())]
    if explicit:
        return explicit[-1]
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].startswith("Traceback (most recent call last)"):
            for line in lines[start + 1 :]:
                if line.strip() and not line[0].isspace():
                    return line.strip()
    return "no error message found; its last output lines were:\n" + "\n".join(lines[-20:])


class LocalSparkJobOperator(BaseOperator):
    """Run one job of the plan (``job``: a :class:`JobRun` as a dict) with ``spark-submit --master local[*]``.

    The job's output goes to the task log line by line; a failed job fails the task with the job's error.
    Returns ``{"started", "ended"}`` (ISO times), which :func:`fruits_dag.backends.marker_is_fresh` compares
    with the job's ``_SUCCESS`` markers, like the EMR backend's step watcher does.
    """

    template_fields: Sequence[str] = ("job",)
    ui_color = "#f4a460"

    def __init__(self, *, job: dict[str, Any], driver_memory: str = "2g", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.driver_memory = driver_memory
        self._process: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        """The spark-submit command line: the plan's job arguments, as on EMR, on a local master."""
        job = JobRun(**self.job)
        return [
            spark_submit_path(),
            "--master",
            "local[*]",
            "--driver-memory",
            self.driver_memory,
            "--driver-java-options",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG.as_uri()}",
            # No web UI (nobody looks at it, and parallel runs would race for its port), no progress bars.
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            "spark.ui.showConsoleProgress=false",
            *job.submit_args(),
        ]

    def execute(self, context: Any) -> dict[str, str]:
        job = JobRun(**self.job)
        name = job.name
        command = self.command()
        # Spark's Python workers (and the driver) must be this interpreter: it has the pinned packages.
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
        started = dt.datetime.now(dt.UTC)
        self.log.info("Running the %s job: %s", name, " ".join(command))
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        # Own process group, so on_kill stops the JVM and its Python workers too.
        # A scratch working directory: whatever Spark leaves in it (spark-warehouse/, derby.log) goes away.
        with tempfile.TemporaryDirectory(prefix=f"fruits-{name}-") as scratch:
            self._process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=scratch,
                start_new_session=True,
                errors="replace",
            )
            assert self._process.stdout is not None
            for line in self._process.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                self.log.info("%s", line)
            returncode = self._process.wait()
        ended = dt.datetime.now(dt.UTC)
        if returncode != 0:
            raise AirflowException(
                f"The {name} job failed (spark-submit exit status {returncode}): {job_error(list(tail))}"
            )
        self.log.info(
            "The %s job finished in %.0f s; outputs: %s",
            name,
            (ended - started).total_seconds(),
            ", ".join(m.rsplit("/", 1)[0] for m in job.markers),
        )
        return {"started": started.isoformat(), "ended": ended.isoformat()}

    def on_kill(self) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)


class LocalKeySensor(BaseSensorOperator):
    """Wait for files in a local folder exactly the way ``S3KeySensor`` waits for keys.

    ``path`` is one path or a list (all must match); with ``wildcard_match`` each is an ``fnmatch`` pattern over
    full paths (``*`` also crosses ``/``, as with S3 keys). ``check_fn(files, **context)`` receives, per path, the
    matches as ``{"Key", "Size", "LastModified"}`` dicts, the same shape the S3 sensor gives it.
    """

    template_fields: Sequence[str] = ("path",)
    ui_color = "#7fbf7f"

    def __init__(
        self, *, path: str | list[str], wildcard_match: bool = False, check_fn: CheckFn | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.wildcard_match = wildcard_match
        self.check_fn = check_fn

    def poke(self, context: Any) -> bool:
        paths = [self.path] if isinstance(self.path, str) else list(self.path)
        return all(self._check(p, context) for p in paths)

    def _check(self, pattern: str, context: Any) -> bool:
        self.log.info("Poking for %s", pattern)
        if self.wildcard_match:
            matches = (p for p in _walk(_listing_root(pattern)) if fnmatch.fnmatchcase(p, pattern))
        else:
            matches = iter([pattern] if os.path.isfile(pattern) else [])
        if self.check_fn is None:  # existence only: stop at the first match, stat nothing
            return next(matches, None) is not None
        files = [_metadata(p) for p in matches]
        return bool(files) and self.check_fn(files, **context)


class LocalUploadsSensor(alerts.UploadsWait, LocalKeySensor):
    """``LocalKeySensor`` on the night's uploads, alerting after too many nights without any."""

    template_fields: Sequence[str] = (*LocalKeySensor.template_fields, "earlier")

    def __init__(self, *, earlier: str | list[str], quiet_nights: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.earlier = earlier
        self.quiet_nights = quiet_nights

    def has_files(self, folder: str) -> bool:
        return next(_walk(folder), None) is not None


def _listing_root(pattern: str) -> str:
    """The folder to list for a pattern: the part before its first wildcard, up to a '/'."""
    prefix = re.split(r"[\[*?]", pattern, maxsplit=1)[0]
    return prefix if prefix.endswith("/") else os.path.dirname(prefix)


def _walk(root: str) -> Iterator[str]:
    # followlinks: `make run` links a DATA folder into datasets/ rather than copying it.
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            yield os.path.join(folder, name)


def _metadata(path: str) -> dict[str, Any]:
    stat = Path(path).stat()
    return {"Key": path, "Size": stat.st_size, "LastModified": dt.datetime.fromtimestamp(stat.st_mtime, tz=dt.UTC)}


class LocalCodeStore:
    """The bundle in the local root (the local backend)."""

    def size_of(self, uri: str) -> int | None:
        path = Path(uri)
        return path.stat().st_size if path.is_file() else None

    def write(self, uri: str, file: BundleFile) -> None:
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, then rename: a reader never sees half a file.
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
            if file.data is not None:
                tmp.write(file.data)
            else:
                with open(file.path, "rb") as source:  # type: ignore[arg-type]
                    shutil.copyfileobj(source, tmp)
        Path(tmp.name).replace(target)

    def refresh(self, uri: str) -> None:
        """Nothing to do: local files do not expire."""
