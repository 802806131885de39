"""The local backend's step: one pipeline job run with ``spark-submit --master local[*]`` on the Airflow worker."""
from __future__ import annotations

import collections
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from fruits_airflow.plan import JobRun

_TAIL_LINES = 200
LOG4J2_CONFIG = Path(__file__).with_name("spark-log4j2.properties")


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
            for line in lines[start + 1:]:
                if line.strip() and not line[0].isspace():
                    return line.strip()
    return "no error message found; its last output lines were:\n" + "\n".join(lines[-20:])


class LocalSparkJobOperator(BaseOperator):
    """Run one job of the plan (``job``: a :class:`JobRun` as a dict) with ``spark-submit --master local[*]``.

    The job's output goes to the task log line by line; a failed job fails the task with the job's error.
    Returns ``{"started", "ended"}`` (ISO times), which :func:`fruits_airflow.sensors.marker_is_fresh` compares
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
        return [spark_submit_path(), "--master", "local[*]", "--driver-memory", self.driver_memory,
                "--driver-java-options", f"-Dlog4j2.configurationFile={LOG4J2_CONFIG.as_uri()}",
                # No web UI (nobody looks at it, and parallel runs would race for its port), no progress bars.
                "--conf", "spark.ui.enabled=false", "--conf", "spark.ui.showConsoleProgress=false",
                *job.submit_args()]

    def execute(self, context: Any) -> dict[str, str]:
        job = JobRun(**self.job)
        name = job.name
        command = self.command()
        # Spark's Python workers (and the driver) must be this interpreter: it has the pinned packages.
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
        started = dt.datetime.now(dt.timezone.utc)
        self.log.info("Running the %s job: %s", name, " ".join(command))
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        # Own process group, so on_kill stops the JVM and its Python workers too.
        # A scratch working directory: whatever Spark leaves in it (spark-warehouse/, derby.log) goes away.
        with tempfile.TemporaryDirectory(prefix=f"fruits-{name}-") as scratch:
            self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                             env=env, cwd=scratch, start_new_session=True, errors="replace")
            assert self._process.stdout is not None
            for line in self._process.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                self.log.info("%s", line)
            returncode = self._process.wait()
        ended = dt.datetime.now(dt.timezone.utc)
        if returncode != 0:
            raise AirflowException(f"The {name} job failed (spark-submit exit status {returncode}): "
                                   f"{job_error(list(tail))}")
        self.log.info("The %s job finished in %.0f s; outputs: %s", name, (ended - started).total_seconds(),
                      ", ".join(m.rsplit("/", 1)[0] for m in job.markers))
        return {"started": started.isoformat(), "ended": ended.isoformat()}

    def on_kill(self) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
