"""A Spark standalone cluster as separate processes, for the tests: one master and N workers from the pyspark
package (``spark-class org.apache.spark.deploy.master.Master`` / ``...worker.Worker``), on 127.0.0.1.

Each process runs in a session of its own (its process group is its PID) and logs to a file under the cluster's
home; each worker has its own work and scratch directories and a small share of the machine (``--cores``,
``--memory``). :meth:`SparkCluster.kill_worker` SIGKILLs a worker's whole group (the Worker JVM, the executor it
launched and that executor's Python workers), as when a node is lost; :meth:`SparkCluster.replace_lost_workers`
starts fresh ones in their place. :class:`DriverUi` reads a running job's progress from its driver's REST API, so a
fault can be injected while the job's tasks are running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pyspark
import requests

from repo import free_port

SPARK_HOME = Path(pyspark.__file__).parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
SPARK_SUBMIT = Path(sys.executable).with_name("spark-submit")
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
WORKER_TIMEOUT = 15  # seconds without a heartbeat before the master takes a worker for lost


def wait_until(check: Callable[[], Any], what: str, timeout: float, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(interval)
    raise AssertionError(f"not {what} after {timeout:.0f} s")


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 15) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its group, by its PID."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group outlived its leader (executors, Python workers)
    except ProcessLookupError:
        pass
    proc.wait(5)


@dataclass
class Worker:
    """One Worker process: its index, work directory, web UI port and process."""

    index: int
    work_dir: Path
    ui_port: int
    proc: subprocess.Popen

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class SparkCluster:
    """A standalone master and ``workers`` workers of ``cores`` cores and ``memory`` each, under ``home``."""

    home: Path
    workers: int = 2
    cores: int = 1
    memory: str = "1536m"
    port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    master: subprocess.Popen | None = None
    running: list[Worker] = field(default_factory=list)
    started_workers: int = 0

    @property
    def url(self) -> str:
        """The master's URL, for ``spark-submit --master``."""
        return f"spark://127.0.0.1:{self.port}"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "wb") as log:
            return subprocess.Popen(
                [str(SPARK_CLASS), *args],
                env={
                    **os.environ,
                    "SPARK_HOME": str(SPARK_HOME),
                    "SPARK_LOCAL_IP": "127.0.0.1",
                    "PYTHONPATH": "",
                    **env,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                start_new_session=True,
            )

    def start(self) -> SparkCluster:
        """Start the master, then the workers; return once every worker has registered."""
        self.home.mkdir(parents=True, exist_ok=True)
        # The master forgets a lost worker after WORKER_TIMEOUT s (default 60 s); keeps few finished applications.
        master_opts = f"-Dspark.worker.timeout={WORKER_TIMEOUT} -Dspark.deploy.retainedApplications=4"
        self.master = self._spawn(
            "master",
            [MASTER_CLASS, "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.ui_port)],
            {"SPARK_MASTER_OPTS": master_opts, "SPARK_LOG_DIR": str(self.logs)},
        )
        wait_until(self._state, "the master answering", timeout=90)
        for _ in range(self.workers):
            self.start_worker()
        self.wait_for_workers()
        return self

    def start_worker(self) -> Worker:
        """Start one more worker, with a work directory of its own."""
        index = self.started_workers
        self.started_workers += 1
        work_dir = self.home / f"worker-{index}"
        (work_dir / "scratch").mkdir(parents=True, exist_ok=True)
        ui_port = free_port()
        proc = self._spawn(
            f"worker-{index}",
            [
                WORKER_CLASS,
                "--host",
                "127.0.0.1",
                "--cores",
                str(self.cores),
                "--memory",
                self.memory,
                "--webui-port",
                str(ui_port),
                "--work-dir",
                str(work_dir),
                self.url,
            ],
            # Executors' shuffle and spill files go to the worker's own scratch directory.
            {
                "SPARK_WORKER_DIR": str(work_dir),
                "SPARK_LOCAL_DIRS": str(work_dir / "scratch"),
                # A worker heartbeats every quarter of ITS timeout: the same as the master's, or it is dropped.
                "SPARK_WORKER_OPTS": f"-Dspark.worker.timeout={WORKER_TIMEOUT}",
            },
        )
        worker = Worker(index, work_dir, ui_port, proc)
        self.running.append(worker)
        return worker

    def _state(self) -> dict | None:
        try:
            response = requests.get(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5)
            return response.json() if response.ok else None
        except (requests.RequestException, ValueError):
            return None

    def registered(self) -> set[int]:
        """The web UI ports of the workers the master counts as ALIVE (a lost one stays so until it times out)."""
        state = self._state() or {}
        return {int(w["webuiaddress"].rsplit(":", 1)[1]) for w in state.get("workers", []) if w.get("state") == "ALIVE"}

    def wait_for_workers(self, timeout: float = 120) -> None:
        """Wait until the master's ALIVE workers are exactly the running ones (none lost, all registered)."""
        try:
            wait_until(
                lambda: self.registered() == {w.ui_port for w in self.running if w.alive},
                "the running workers registered, and only they",
                timeout,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tails()}") from None

    def kill_worker(self, worker: Worker) -> None:
        """SIGKILL the worker's process group: the Worker JVM, its executor and the executor's Python workers."""
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)

    def replace_lost_workers(self) -> None:
        """Start a fresh worker for each one that is gone, and wait until the master has them all."""
        for worker in [w for w in self.running if not w.alive]:
            self.running.remove(worker)
            self.start_worker()
        self.wait_for_workers()

    def python_workers(self) -> list[psutil.Process]:
        """The Python worker processes (forked by ``pyspark.daemon``) of every executor, running a task or idle."""
        found = []
        for worker in self.running:
            if not worker.alive:
                continue
            for proc in psutil.Process(worker.proc.pid).children(recursive=True):
                parent = _parent(proc)
                if parent is not None and "pyspark.daemon" in " ".join(_cmdline(parent)):
                    found.append(proc)
        return found

    def busy_worker(self) -> Worker:
        """A worker whose executor runs a Python task now (else the first one)."""
        busy = {_parent(_parent(p)).pid for p in self.python_workers() if _parent(_parent(p)) is not None}
        for worker in self.running:
            if worker.alive and busy & {p.pid for p in psutil.Process(worker.proc.pid).children(recursive=True)}:
                return worker
        return self.running[0]

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self) -> None:
        """Stop every worker, then the master, by PID (their whole process groups)."""
        for worker in self.running:
            stop_group(worker.proc)
        if self.master is not None:
            stop_group(self.master)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _parent(proc: psutil.Process) -> psutil.Process | None:
    try:
        return proc.parent()
    except psutil.Error:
        return None


@dataclass
class DriverUi:
    """The REST API of a running job's driver (``spark.ui.port``): its stages' task counts."""

    port: int

    def _get(self, path: str) -> Any:
        try:
            response = requests.get(f"http://127.0.0.1:{self.port}/api/v1/{path}", timeout=5)
            return response.json() if response.ok else None
        except (requests.RequestException, ValueError):
            return None

    def stages(self, status: str = "active") -> list[dict]:
        """The application's stages in ``status`` (``active``, ``complete``...), empty before the driver is up."""
        apps = self._get("applications") or []
        if not apps:
            return []
        return self._get(f"applications/{apps[0]['id']}/stages?status={status}") or []

    def midway(self, min_tasks: int = 2) -> dict | None:
        """An active stage of ``min_tasks`` tasks or more, with tasks running and others not finished yet."""
        for stage in self.stages():
            if stage.get("numTasks", 0) >= min_tasks and stage.get("numActiveTasks", 0) > 0:
                if stage.get("numCompleteTasks", 0) < stage["numTasks"]:
                    return stage
        return None
