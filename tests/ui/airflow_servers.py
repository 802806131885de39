"""A real Airflow (api-server, scheduler, dag-processor) started as local processes for the UI-path tests.

Everything lives in a temporary AIRFLOW_HOME with SQLite (the settings of ``repo.airflow_env`` plus the servers'
own); the servers listen on 127.0.0.1 on a free port, with the simple auth manager and a known admin password.
``env_source`` replaces those settings with others (``tests/stack``: the environment of docker-compose.yaml on a
PostgreSQL database), and ``start``/``kill`` act on single components too.
Every process the harness starts runs in its own process group and is stopped by its PID (SIGINT, then SIGTERM,
then SIGKILL, process group first, then any descendant that left the group), also when a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from repo import AIRFLOW, VENV_BIN, airflow_env, free_port

ADMIN_USER = "admin"
ADMIN_PASSWORD = "ui-test-" + secrets.token_hex(4)
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
COMPONENTS = ("api-server", "scheduler", "dag-processor")


def tail(path: Path, lines: int = 80) -> str:
    """The last ``lines`` lines of a log file, or a note that it does not exist."""
    if not path.is_file():
        return f"({path} does not exist)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


@dataclass
class AirflowServers:
    """Airflow components as subprocesses of the test, with a client for the REST API."""

    home: Path
    dags_folder: Path
    plugins_folder: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    components: tuple[str, ...] = COMPONENTS
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    token: str | None = None
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    # The pipeline's settings the tests put into the Variable fruits_settings (tests/ui/conftest.py).
    pipeline_settings: dict[str, Any] = field(default_factory=dict)
    # The Airflow settings of the components in place of the ones of env() (given these servers: their home and
    # port); None: the SQLite settings below. extra_env still goes on top.
    env_source: Callable[[AirflowServers], dict[str, str]] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "server-logs"

    def env(self) -> dict[str, str]:
        """The servers' environment: nothing of the caller's Airflow setup (AIRFLOW_HOME, AIRFLOW_CONFIG,
        AIRFLOW__*, Variables, Connections), the tests' base settings, the servers' own, then ``extra_env``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        if self.env_source is not None:
            env.update(self.env_source(self))
            env.update(self.extra_env)
            return env
        env.update(
            airflow_env(
                self.home,
                AIRFLOW__CORE__DAGS_FOLDER=str(self.dags_folder),
                AIRFLOW__CORE__PLUGINS_FOLDER=str(self.plugins_folder),
                AIRFLOW__CORE__EXECUTOR="LocalExecutor",
                AIRFLOW__CORE__PARALLELISM="3",
                # The test unpauses the DAG itself, through the API or the UI.
                AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
                AIRFLOW__CORE__AUTH_MANAGER=SIMPLE_AUTH_MANAGER,
                AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{ADMIN_USER}:admin",
                AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(self.home / "passwords.json"),
                AIRFLOW__API__HOST="127.0.0.1",
                AIRFLOW__API__PORT=str(self.port),
                AIRFLOW__API__WORKERS="1",
                AIRFLOW__API__BASE_URL=self.base_url,
                AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.base_url}/execution/",
                AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(64),  # HS512 wants 64+ bytes
                AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
                AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
                AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10",
                AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="30",
                AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(self.home / "logs"),
                AIRFLOW__CORE__UNIT_TEST_MODE="False",
            )
        )
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------------ processes
    def migrate(self) -> None:
        """Create the home, the passwords file and the database."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}) + "\n")
        result = subprocess.run(
            [AIRFLOW, "db", "migrate"], env=self.env(), cwd=self.home, capture_output=True, text=True, timeout=600
        )
        (self.log_dir / "db-migrate.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    def start(self, components: Iterable[str] | None = None) -> None:
        """Start every component (or only ``components``, say one that was killed), each in a process group of
        its own, logging to ``log_dir/<component>.log`` (appended: a restarted component's log follows the old)."""
        env = self.env()
        for component in self.components if components is None else components:
            assert component in self.components, f"{component} is not one of {self.components}"
            assert component not in self.procs or self.procs[component].poll() is not None, f"{component} runs"
            with open(self.log_dir / f"{component}.log", "ab") as log:
                # A session of its own: the process group id is the PID, so the whole group can be signalled.
                self.procs[component] = subprocess.Popen(
                    [AIRFLOW, component],
                    env=env,
                    cwd=self.home,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )

    def track(self) -> None:
        """Remember every descendant seen so far: one that left the process group (a task's subprocess started
        with setsid) and outlived its parent is still stopped by its PID at the end (psutil checks the start time,
        so a reused PID is not touched)."""
        for proc in self.procs.values():
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    self.seen.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                continue

    def kill(self, component: str) -> list[int]:
        """SIGKILL the component's process group (what a crash or an OOM kill of its host does) and wait until it is
        gone; returns the PIDs of the group's processes. A descendant that left the group lives on (it is tracked
        and stopped by :meth:`stop`)."""
        self.track()
        proc = self.procs[component]
        pids = [proc.pid]
        try:
            pids += [c.pid for c in psutil.Process(proc.pid).children(recursive=True) if _pgid(c.pid) == proc.pid]
        except psutil.NoSuchProcess:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        end = time.monotonic() + 30
        while _group_alive(proc.pid) and time.monotonic() < end:
            time.sleep(0.2)
        return pids

    def check_alive(self) -> None:
        """Raise with the logs when a component has exited."""
        self.track()
        dead = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"Airflow components exited: {dead}\n{self.logs()}")

    def stop(self) -> list[str]:
        """Stop every started process by PID; returns a description of what had to be killed hard."""
        report: list[str] = []
        self.track()
        for name, proc in reversed(list(self.procs.items())):
            report += stop_process_tree(proc, name)
        leftovers = [p for p in self.seen.values() if _alive(p)]
        report += [f"leftover process {p.pid} stopped" for p in leftovers]
        _terminate_then_kill(leftovers)
        return report

    def still_running(self) -> list[str]:
        """The components whose process or process group is still alive."""
        return [n for n, p in self.procs.items() if p.poll() is None or _group_alive(p.pid)]

    def logs(self, lines: int = 80) -> str:
        """The tail of every server log."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"----- {path.name} (last {lines} lines) -----\n{tail(path, lines)}")
        return "\n".join(parts)

    def task_logs(self, lines: int = 60) -> str:
        """The tail of every task log."""
        parts = []
        for path in sorted((self.home / "logs").rglob("*.log")):
            parts.append(f"----- task log {path.relative_to(self.home / 'logs')} -----\n{tail(path, lines)}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ REST API
    def wait_healthy(self, timeout: float = 180, wanted: Sequence[str] | None = None) -> dict:
        """Wait until the metadatabase, the scheduler (and the DAG processor, when started) report healthy, or
        the parts of ``/monitor/health`` named in ``wanted`` (``triggerer``...)."""
        deadline = time.monotonic() + timeout
        last: object = None
        if wanted is None:
            wanted = ["metadatabase", "scheduler"] + (["dag_processor"] if "dag-processor" in self.components else [])
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                resp = requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
                last = resp.status_code, resp.text[:500]
                if resp.ok:
                    health = resp.json()
                    states = {k: (v or {}).get("status") for k, v in health.items()}
                    last = states
                    if all(states.get(k) == "healthy" for k in wanted):
                        return health
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(2)
        raise TimeoutError(f"Airflow not healthy after {timeout}s (last: {last})\n{self.logs()}")

    def get_token(self, username: str = ADMIN_USER, password: str = ADMIN_PASSWORD) -> requests.Response:
        """``POST /auth/token`` (the simple auth manager's login for API clients)."""
        return requests.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=30
        )

    def login(self) -> str:
        """Get an admin token and use it for the next :meth:`api` calls."""
        resp = self.get_token()
        assert resp.status_code in (200, 201), resp.text
        self.token = resp.json()["access_token"]
        return self.token

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        """A call of the REST API (``/api/v2`` + ``path``), with the token of :meth:`login` if any."""
        headers = kwargs.pop("headers", {})
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        return requests.request(method, f"{self.base_url}/api/v2{path}", headers=headers, timeout=30, **kwargs)

    def wait_for_dag(self, dag_id: str, timeout: float = 240) -> dict:
        """Wait until the DAG processor has parsed ``dag_id``; import errors fail at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            resp = self.api("GET", f"/dags/{dag_id}")
            if resp.status_code == 200:
                return resp.json()
            errors = self.api("GET", "/importErrors")
            if errors.ok and errors.json().get("total_entries"):
                raise AssertionError(f"DAG import errors: {json.dumps(errors.json(), indent=1)}")
            time.sleep(3)
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout}s\n{self.logs()}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float, progress: Callable[[str], None] = print) -> dict:
        """Wait until the run has succeeded or failed, printing its task states when they change."""
        deadline = time.monotonic() + timeout
        last_states: dict | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            resp = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            assert resp.status_code == 200, resp.text
            run = resp.json()
            tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
            states = {ti["task_id"]: ti["state"] for ti in tis.json().get("task_instances", [])} if tis.ok else {}
            if states != last_states:
                progress(f"[{time.strftime('%H:%M:%S')}] run {run['state']}: {states}")
                last_states = states
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(5)
        raise TimeoutError(f"run {run_id} not finished after {timeout}s; task states {last_states}")


def stop_process_tree(proc: subprocess.Popen, name: str, grace: float = 20) -> list[str]:
    """SIGINT to the process group (Airflow components shut down cleanly on it), then SIGTERM, then SIGKILL.

    Descendants are listed first: anything that left the group (a task's `spark-submit` started with setsid,
    say) and still runs afterwards is stopped by its own PID.
    """
    report: list[str] = []
    pid = proc.pid
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None and not _group_alive(pid):
            break
        try:
            os.killpg(pid, sig)  # the group id is the PID of the process we started
        except ProcessLookupError:
            break
        if sig != signal.SIGINT:
            report.append(f"{name} (pid {pid}): sent {sig.name}")
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        end = time.monotonic() + 5
        while _group_alive(pid) and time.monotonic() < end:
            time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    # Descendants that escaped the group.
    leftovers = [p for p in descendants if _alive(p)]
    report += [f"{name}: leftover descendant {p.pid} stopped" for p in leftovers]
    _terminate_then_kill(leftovers)
    return report


def _terminate_then_kill(procs: list[psutil.Process], grace: float = 10) -> None:
    """SIGTERM each process, then SIGKILL those still alive after ``grace`` seconds."""
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(procs, timeout=grace)
    for p in still:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies count as gone.
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False
