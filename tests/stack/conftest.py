"""Fixtures of the production-shaped Airflow tests: a PostgreSQL server for the session (``postgres.py``); the
Airflow of docker-compose.yaml on it is ``airflow_stack.py``.

These tests reuse the helpers of tests/ui (``airflow_servers``), tests/dag (``dag_harness``, ``moto_emr``) and
tests/compose (``compose_checks``); the moto server, its boto3 clients and the stand-in artifacts are the fixtures of
tests/conftest.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from repo import REPO_ROOT

for _folder in ("ui", "dag", "compose"):
    if str(REPO_ROOT / "tests" / _folder) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "tests" / _folder))

from postgres import Postgres, PostgresMissing  # noqa: E402  (after the paths above)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A PostgreSQL server (Debian's, as root run as the ``postgres`` user) on 127.0.0.1 with an empty database
    ``airflow`` owned by the role ``airflow``; stopped by its PID at the end, also when a test failed."""
    try:
        server = Postgres(log_file=tmp_path_factory.mktemp("postgres") / "postgres.log")
    except PostgresMissing as exc:
        pytest.fail(str(exc))
    try:
        try:
            server.start()
        except BaseException:
            print(f"\n===== {server.log_file} =====\n{server.log_tail(80)}")
            raise
        yield server
    finally:
        report = server.stop()
        if report:
            print("\n".join(report))
        assert not server.running(), "postgres still running after stop"
