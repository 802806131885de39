"""A throw-away PostgreSQL server from Debian's packages, for an Airflow with the metadata database of production.

``make test-deps`` installs Debian's ``postgresql`` (its binaries are in ``/usr/lib/postgresql/<major>/bin``).
:class:`Postgres` makes a cluster in a temporary folder with ``initdb``, starts ``postgres`` on 127.0.0.1 on a free
port (its socket in that folder, nothing else of the machine's PostgreSQL used), makes the role and database
``airflow`` (a random password), and stops the server by its PID. As root it runs as the ``postgres`` user that the
package creates (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import getpass
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repo import free_port

DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
OS_USER = "postgres"  # made by Debian's postgresql-common


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_binaries(pattern: str = DEBIAN_BINARIES) -> Path:
    """The ``bin`` folder of the newest Debian PostgreSQL with ``initdb`` and ``postgres``."""
    found = [Path(p) for p in glob.glob(pattern) if (Path(p) / "initdb").is_file() and (Path(p) / "postgres").is_file()]
    if not found:
        raise PostgresMissing(
            f"PostgreSQL's server binaries are not installed (no initdb and postgres in {pattern}): run `make "
            "test-deps` (as root it installs Debian's postgresql; otherwise: sudo apt-get install postgresql)"
        )
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


@dataclass
class Postgres:
    """One PostgreSQL server: ``start()``, then :attr:`url` for Airflow; ``stop()`` (also after a failed start)."""

    log_file: Path
    bin_dir: Path = field(default_factory=find_binaries)
    port: int = field(default_factory=free_port)
    database: str = "airflow"
    user: str = "airflow"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    folder: Path | None = None  # made by start(): data/ and the socket
    proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ where and as whom
    @property
    def data_dir(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.folder is not None
        return self.folder / "socket"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database, as Airflow's ``sql_alchemy_conn`` takes it (psycopg2 driver)."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _as_server_user(self) -> dict[str, Any]:
        """Popen arguments that run a child as the ``postgres`` OS user when this process is root."""
        if os.geteuid() != 0:
            return {}
        try:
            entry = pwd.getpwnam(OS_USER)
        except KeyError as exc:
            raise PostgresMissing(
                f"running as root, and there is no {OS_USER!r} user to run PostgreSQL as (Debian's postgresql "
                "package makes it): run `make test-deps`"
            ) from exc
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return {**env, "LC_ALL": "C", "LANG": "C"}

    # ------------------------------------------------------------------ life
    def start(self, timeout: float = 60) -> Postgres:
        """initdb, start the server in a session of its own, wait for it, make the role and the database."""
        # Under /tmp (not pytest's private temporary root, which the postgres user cannot enter).
        self.folder = Path(tempfile.mkdtemp(prefix="fruits-postgres-"))
        self.socket_dir.mkdir()
        as_user = self._as_server_user()
        if as_user:
            for path in (self.folder, self.socket_dir):
                os.chown(path, as_user["user"], as_user["group"])
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            initdb = subprocess.run(
                [
                    str(self.bin_dir / "initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    "postgres",
                    "--auth-local=trust",  # the socket is in our folder, for the superuser's set-up below
                    "--auth-host=scram-sha-256",  # Airflow logs in over TCP with the role's password
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=120,
                **as_user,
            )
            if initdb.returncode != 0:
                raise RuntimeError(f"initdb failed (exit {initdb.returncode}); its log: {self.log_file}")
            self.proc = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.socket_dir),
                    # A test server: no fsync (nothing here must survive a power cut), the log on stderr.
                    "-c",
                    "fsync=off",
                    "-c",
                    "logging_collector=off",
                ],
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped by its PID, never by name
                **as_user,
            )
        self._wait_ready(timeout)
        self._create_role_and_database()
        return self

    def connect(self, **kwargs: Any) -> Any:
        """A psycopg2 connection as the superuser over the server's socket (``kwargs`` override)."""
        try:
            import psycopg2
        except ImportError as exc:  # pinned in requirements.txt
            raise RuntimeError("psycopg2 is not installed: make venv (requirements.txt pins psycopg2-binary)") from exc
        params = {"host": str(self.socket_dir), "port": self.port, "user": "postgres", "dbname": "postgres"}
        return psycopg2.connect(**{**params, "connect_timeout": 5, **kwargs})

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.connect().close()
                return
            except Exception as exc:  # psycopg2.OperationalError while it starts
                last = exc
                time.sleep(0.3)
        raise TimeoutError(f"postgres not accepting connections after {timeout} s ({last}):\n{self.log_tail()}")

    def _create_role_and_database(self) -> None:
        from psycopg2 import sql

        conn = self.connect()
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(self.user)), (self.password,)
                )
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self.database), sql.Identifier(self.user)
                    )
                )
        finally:
            conn.close()
        # What Airflow will do: log in over TCP with the password.
        self.connect(host="127.0.0.1", user=self.user, password=self.password, dbname=self.database).close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 30) -> list[str]:
        """SIGINT (PostgreSQL's fast shutdown) to the server's PID, SIGKILL to its process group if it is still
        there after ``grace`` s; then the folder is removed. Returns what had to be killed."""
        report: list[str] = []
        if self.proc is not None:
            pid = self.proc.pid
            if self.proc.poll() is None:
                os.kill(pid, signal.SIGINT)
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    report.append(f"postgres (pid {pid}) did not stop on SIGINT: SIGKILL")
            try:
                os.killpg(pid, signal.SIGKILL)  # the server and any backend still in its group
            except ProcessLookupError:
                pass
            if self.proc.poll() is None:
                self.proc.wait(timeout=10)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        return report

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.is_file():
            return f"({self.log_file} does not exist)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def __repr__(self) -> str:
        runs_as = OS_USER if os.geteuid() == 0 else getpass.getuser()
        return f"Postgres(127.0.0.1:{self.port}, {self.bin_dir}, as {runs_as})"
