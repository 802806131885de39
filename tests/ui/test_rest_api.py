"""UI path of issue 4 (draft, trivial DAG)."""
from __future__ import annotations

import textwrap
import time

TRIVIAL_DAG = textwrap.dedent(
    '''
    from __future__ import annotations
    import os
    from pathlib import Path
    import pendulum
    from airflow.sdk import dag, task, Variable

    @dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False)
    def trivial():
        @task
        def write(**context):
            root = Path(Variable.get("fruits_local_root"))
            out = root / "out" / context["ds"]
            out.mkdir(parents=True, exist_ok=True)
            (out / "done.txt").write_text(str(context["params"]))
        write()

    trivial()
    '''
)


def test_harness_on_a_trivial_dag(airflow_servers_factory, tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "trivial.py").write_text(TRIVIAL_DAG)
    root = tmp_path / "root"
    root.mkdir()
    t0 = time.monotonic()
    servers = airflow_servers_factory(dags, extra_env={"AIRFLOW_VAR_FRUITS_LOCAL_ROOT": str(root)})
    print(f"healthy after {time.monotonic() - t0:.0f}s")
    assert servers.api("GET", "/dags").status_code in (401, 403)
    servers.login()
    assert servers.api("GET", "/dags").status_code == 200
    servers.wait_for_dag("trivial")
    print(f"dag parsed after {time.monotonic() - t0:.0f}s")
    resp = servers.api("PATCH", "/dags/trivial", json={"is_paused": False})
    assert resp.status_code == 200, resp.text
    resp = servers.api("POST", "/dags/trivial/dagRuns", json={"logical_date": "2025-01-15T00:00:00Z", "conf": {"a": 1}})
    assert resp.status_code == 200, resp.text
    run = servers.wait_for_run("trivial", resp.json()["dag_run_id"], timeout=300)
    print(f"run done after {time.monotonic() - t0:.0f}s")
    assert run["state"] == "success"
    assert (root / "out" / "2025-01-15" / "done.txt").is_file()
