"""Fixtures of the UI-path tests: real Airflow servers (``airflow_servers.py``) and the pipeline set up on them.

``fruits_airflow`` is what the REST and browser tests use: one Airflow for the whole session (started once, which
saves a minute of CI per test), with a fresh storage root per test (the Variable ``fruits_local_root``, set through
the REST API), ``fruits_pipeline`` paused again and no API token set, so that each test starts as on a new server.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from airflow_servers import AirflowServers
from repo import DAG_ID, REPO_ROOT

# Airflow puts the plugins folder on sys.path; the plugin's tests import its package the same way.
if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

# Settings of the pipeline on the test servers, set (with the weights and a storage root per test, see
# fruits_airflow) through the REST API into the Variable fruits_settings, as an operator would: an
# AIRFLOW_VAR_FRUITS_SETTINGS in the environment would hide that Variable.
PIPELINE_SETTINGS = {
    "fruits_backend": "local",
    "fruits_jobs_dir": str(REPO_ROOT / "spark_jobs"),
    "fruits_poke_interval": 5,
    "fruits_sensor_timeout": 300,
    "fruits_local_driver_memory": "2g",
}
PIPELINE_ENV = {
    # No scheduled (nightly) run next to the triggered ones: it would wait for uploads that never come, and the
    # DAG runs one run at a time.
    "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    # The DAG's asset URIs contain the storage root: when a test sets its own root, the scheduler's orphanage
    # pass (this interval; 60 s by default) activates the new URIs in place of the old ones.
    "AIRFLOW__SCHEDULER__PARSING_CLEANUP_INTERVAL": "3",
    # ...and the API server, which checks a task's outlets against the active assets with the serialized DAG it
    # cached, re-reads a DAG version rewritten in place after this many seconds (30 by default).
    "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "1",
    "TF_ENABLE_ONEDNN_OPTS": "1",
}


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


def _print_logs(servers: AirflowServers) -> None:
    print(f"\n===== Airflow server logs ({servers.home}) =====\n{servers.logs(150)}")
    print(f"\n===== task logs =====\n{servers.task_logs(80)}")


def _stop(servers: AirflowServers) -> None:
    report = servers.stop()
    if report:
        print("\n".join(report))
    alive = servers.still_running()
    assert not alive, f"processes still running after stop: {alive}"


@pytest.fixture(scope="session")
def fruits_servers(tmp_path_factory: pytest.TempPathFactory, weights_file: Path) -> Iterator[AirflowServers]:
    """One Airflow with this repository's DAGs and plugins and the pipeline in local mode, for the session."""
    t0 = time.monotonic()
    servers = AirflowServers(
        home=tmp_path_factory.mktemp("fruits-airflow") / "airflow-home",
        dags_folder=REPO_ROOT / "dags",
        plugins_folder=REPO_ROOT / "plugins",
        extra_env=PIPELINE_ENV,
    )
    servers.pipeline_settings = {**PIPELINE_SETTINGS, "fruits_weights": str(weights_file)}
    try:
        servers.migrate()
        servers.start()
        servers.wait_healthy()
        print(f"\nAirflow healthy after {time.monotonic() - t0:.0f} s on {servers.base_url}")
        yield servers
    finally:
        _stop(servers)


@dataclass
class FruitsAirflow:
    """The session's Airflow, prepared for one test: ``root`` is this test's (empty) storage root."""

    servers: AirflowServers
    root: Path

    def admin_headers(self) -> dict[str, str]:
        """A header with a fresh admin token, for calls that are not part of what the test checks."""
        resp = self.servers.get_token()
        assert resp.status_code in (200, 201), resp.text
        return {"Authorization": f"Bearer {resp.json()['access_token']}"}


@pytest.fixture
def fruits_airflow(
    fruits_servers: AirflowServers, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[FruitsAirflow]:
    """The session's Airflow with a new storage root, ``fruits_pipeline`` parsed and paused, and no token set.

    Afterwards: runs still unfinished are marked failed (the DAG runs one run at a time, the next test must not
    queue behind them), and the logs are printed when the test failed.
    """
    servers = fruits_servers
    servers.check_alive()
    env = FruitsAirflow(servers, tmp_path / "fruits-root")
    env.root.mkdir()
    headers = env.admin_headers()
    servers.token = headers["Authorization"].removeprefix("Bearer ")
    try:
        servers.wait_for_dag(DAG_ID)
        _use_storage_root(servers, env.root)
        resp = servers.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": True})
        assert resp.status_code == 200, resp.text
    finally:
        servers.token = None
    yield env
    servers.token = None
    _fail_unfinished_runs(servers, env.admin_headers())
    if _failed(request):
        _print_logs(servers)


def _use_storage_root(servers: AirflowServers, root: Path, timeout: float = 180) -> None:
    """Set the setting ``fruits_local_root``, have the DAG file parsed again and wait until its assets point into
    ``root``.

    What an operator does after changing the Variable: the DAG's asset URIs come from the storage root, and a task
    whose outlets are not the active assets fails (``AirflowInactiveAssetInInletOrOutletException``).
    """
    settings = {**servers.pipeline_settings, "fruits_local_root": str(root)}
    _set_variable(servers, "fruits_settings", json.dumps(settings))
    before = servers.api("GET", f"/dags/{DAG_ID}").json()["last_parsed_time"]
    file_token = servers.api("GET", f"/dags/{DAG_ID}/details").json()["file_token"]
    resp = servers.api("PUT", f"/parseDagFile/{file_token}")
    assert resp.status_code in (200, 201, 204), resp.text
    deadline = time.monotonic() + timeout
    referenced: set[str] = set()
    active: set[str] = set()
    while time.monotonic() < deadline:
        servers.check_alive()
        parsed = servers.api("GET", f"/dags/{DAG_ID}").json()["last_parsed_time"]
        referenced, active = (_asset_uris(servers, only_active) for only_active in (False, True))
        if parsed != before and referenced == active and all(u.startswith(root.as_uri()) for u in referenced):
            return
        time.sleep(2)
    raise TimeoutError(f"{DAG_ID} not ready for {root} after {timeout}s: assets {referenced}, active {active}")


def _asset_uris(servers: AirflowServers, only_active: bool) -> set[str]:
    params = {"dag_ids": DAG_ID, "limit": 100, "only_active": str(only_active).lower()}
    resp = servers.api("GET", "/assets", params=params)
    assert resp.status_code == 200, resp.text
    return {asset["uri"] for asset in resp.json()["assets"]}


def _set_variable(servers: AirflowServers, key: str, value: str) -> None:
    resp = servers.api("PATCH", f"/variables/{key}", json={"key": key, "value": value})
    if resp.status_code == 404:
        resp = servers.api("POST", "/variables", json={"key": key, "value": value})
    assert resp.status_code in (200, 201), resp.text


def _fail_unfinished_runs(servers: AirflowServers, headers: dict[str, str]) -> None:
    runs = requests.get(
        f"{servers.base_url}/api/v2/dags/{DAG_ID}/dagRuns",
        params={"state": ["queued", "running"]},
        headers=headers,
        timeout=30,
    )
    for run in runs.json().get("dag_runs", []) if runs.ok else []:
        requests.patch(
            f"{servers.base_url}/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}",
            json={"state": "failed"},
            headers=headers,
            timeout=30,
        )


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep each phase's report on the test item (``rep_setup``, ``rep_call``) for the fixtures' finalizers."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
