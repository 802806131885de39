"""The Airflow of docker-compose.yaml, on this machine: its four components as processes, on a real PostgreSQL.

What compose runs (``airflow-apiserver``, ``-scheduler``, ``-dag-processor``, ``-triggerer``: their commands, and the
environment of ``x-airflow-common``: LocalExecutor, the simple auth manager, DAGs unpaused at creation, the health
check server, the Fernet key...) is read from the compose file itself, so this tests the file's settings and not a
copy of them. The ``${VAR:-default}`` / ``${VAR:?message}`` interpolations get the defaults, and the secrets
(``make compose-env``'s) test values. Then only what must differ outside the containers is replaced
(:func:`overrides`). The components run under ``tests/ui/airflow_servers.py``'s :class:`AirflowServers` (own
process groups, stopped by PID, logs in ``<home>/server-logs``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography.fernet import Fernet
from postgres import Postgres
from sqlalchemy.engine import make_url

from airflow_servers import AirflowServers, free_port
from compose_checks import AIRFLOW_SERVICES, COMPOSE_FILE, env_of, interpolate, load_compose
from repo import REPO_ROOT, SETTINGS_ENV

COMMON = "x-airflow-common"  # the anchor every Airflow service of the file merges


def compose_components(compose: dict) -> tuple[str, ...]:
    """The ``airflow`` sub-commands of the file's Airflow services, in the file's order of AIRFLOW_SERVICES."""
    return tuple(str(compose["services"][name]["command"]) for name in AIRFLOW_SERVICES)


def compose_environment(values: Mapping[str, str], compose: dict | None = None) -> dict[str, str]:
    """The environment of ``x-airflow-common``, interpolated with ``values`` as compose would with an ``.env``."""
    compose = compose or load_compose(COMPOSE_FILE)
    return {key: interpolate(value, values) for key, value in env_of(compose[COMMON]).items()}


@dataclass
class ComposeAirflow:
    """The compose file's Airflow on ``postgres``, with the pipeline's ``settings`` (merged over compose's) and
    ``extra`` environment (a connection). ``servers`` runs it; :meth:`env` is its environment source."""

    home: Path
    postgres: Postgres
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    # Values of the file's ${VAR} (what `make compose-env` writes into .env, and the optional ones a test sets).
    values: dict[str, str] = field(default_factory=dict, repr=False)
    # Ports the containers each had to themselves, free ports here.
    health_port: int = field(default_factory=free_port)
    worker_log_port: int = field(default_factory=free_port)
    trigger_log_port: int = field(default_factory=free_port)
    compose: dict = field(default_factory=lambda: load_compose(COMPOSE_FILE), repr=False)
    servers: AirflowServers = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.values = {
            "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW_POSTGRES_PASSWORD": self.postgres.password,
            **self.values,
        }
        self.servers = AirflowServers(
            home=self.home,
            dags_folder=REPO_ROOT / "dags",
            plugins_folder=REPO_ROOT / "plugins",
            components=compose_components(self.compose),
            env_source=self.env,
        )

    def env(self, servers: AirflowServers) -> dict[str, str]:
        """compose's environment with :func:`overrides` applied, then ``extra``."""
        env = compose_environment(self.values, self.compose)
        return {**env, **self.overrides(env, servers), **self.extra}

    def overrides(self, env: Mapping[str, str], servers: AirflowServers) -> dict[str, str]:
        """What must differ from compose here, and why (everything else is the file's):

        * ``AIRFLOW_HOME``, ``AIRFLOW_CONFIG``, the DAGs, plugins and logs folders, the passwords file: the
          containers' ``/opt/airflow/...`` paths are the bind mounts' host folders here (``./dags``, ``./plugins``)
          or folders of the test's home (config, logs, the passwords file airflow-init writes);
        * ``SQL_ALCHEMY_CONN``: the host ``postgres`` (compose's service name) is the test's server on 127.0.0.1
          and its port; the driver, user, database and password stay the file's (checked to match the server);
        * ``EXECUTION_API_SERVER_URL``, ``[api] host/port``: ``airflow-apiserver:8080`` is 127.0.0.1 on a free
          port (compose publishes it on 127.0.0.1 too);
        * the scheduler's health-check server and the worker and triggerer log servers: the containers each had
          their own network, here they share the machine (other tests' Airflows): 127.0.0.1, free ports;
        * ``AIRFLOW_VAR_FRUITS_SETTINGS``: compose's settings (local mode) with the test's merged over them (the
          EMR backend on moto, the stand-in artifacts; paths of this machine).
        """
        url = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).set(host="127.0.0.1", port=self.postgres.port)
        conn = url.render_as_string(hide_password=False)
        if conn != self.postgres.url:
            raise AssertionError(f"compose's database {url!r} is not the test server's {self.postgres!r}")
        settings = {
            **json.loads(env[SETTINGS_ENV]),
            "fruits_local_root": str(servers.home / "fruits"),
            "fruits_jobs_dir": str(REPO_ROOT / "spark_jobs"),
            **self.settings,
        }
        return {
            "AIRFLOW_HOME": str(servers.home),
            "AIRFLOW_CONFIG": str(servers.home / "config" / "airflow.cfg"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(servers.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(servers.plugins_folder),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(servers.home / "logs"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(servers.home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{servers.base_url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(servers.port),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(self.health_port),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
            SETTINGS_ENV: json.dumps(settings),
        }

    def start(self, timeout: float = 300) -> AirflowServers:
        """``airflow-init``'s work (the database, the passwords file), then the four components, healthy."""
        (self.home / "config").mkdir(parents=True, exist_ok=True)
        self.servers.migrate()
        # The API server first: the workers' task API is in it. compose starts the four at once (none depends on
        # the API server), and a task the scheduler starts before the API server listens fails its first try
        # ("Workload execution failed", an httpx ReadTimeout): its retry comes a minute later (seen here).
        api_server = self.servers.components[0]
        self.servers.start([api_server])
        self.servers.wait_healthy(timeout, wanted=["metadatabase"])
        self.servers.start([c for c in self.servers.components if c != api_server])
        self.servers.wait_healthy(timeout, wanted=["metadatabase", "scheduler", "dag_processor", "triggerer"])
        return self.servers

    def scheduler_healthy(self) -> bool:
        """What compose's healthcheck of airflow-scheduler asks: its health-check server's ``/health``."""
        try:
            return requests.get(f"http://127.0.0.1:{self.health_port}/health", timeout=5).ok
        except requests.RequestException:
            return False
