"""docker-compose.yaml, Dockerfile and .dockerignore pass the static checks of compose_checks.py, and those checks
catch broken copies of them (no Docker engine on the build machines).
"""

from __future__ import annotations

import copy

import pytest
import yaml

from compose_checks import (
    AIRFLOW_SERVICES,
    COMPOSE_DOC,
    COMPOSE_FILE,
    DOCKERFILE,
    REQUIREMENTS,
    SPARK_JOBS_ENV,
    check_dockerfile,
    check_dockerignore,
    check_environment,
    check_init_creates_mount_targets,
    check_interpolation_defaults,
    check_paths,
    check_services,
    check_variables,
    dag_variables,
    dockerignore_patterns,
    env_of,
    load_compose,
    pinned,
    run_schema_check,
)
from repo import REPO_ROOT


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), "docker-compose.yaml is missing"
    return load_compose()


def test_compose_file_matches_the_compose_specification():
    result = run_schema_check(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_of_the_official_layout_with_healthchecks(compose):
    assert check_services(compose) == []


def test_environment_local_mode_login_and_variables(compose):
    assert check_environment(compose) == []


def test_every_interpolated_variable_has_a_default():
    assert check_interpolation_defaults(COMPOSE_FILE.read_text()) == []


def test_mount_sources_build_context_and_files_exist(compose):
    assert check_paths(compose) == []
    assert check_init_creates_mount_targets(compose) == []


def test_quick_start_in_docs_creates_the_local_folders():
    text = COMPOSE_DOC.read_text()
    assert "docker compose up" in text and "http://localhost:8080" in text
    assert "admin / admin" in text
    compose_text = COMPOSE_FILE.read_text()
    # The same mkdir line is in the compose file's header, so both stay in step.
    mkdir = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("mkdir -p local/compose")]
    assert mkdir and mkdir[0] in compose_text


def test_dockerfile_pins_airflow_installs_java_and_requirements():
    assert DOCKERFILE.is_file()
    assert check_dockerfile(DOCKERFILE.read_text()) == []


def test_dockerignore_keeps_the_context_small():
    assert check_dockerignore(dockerignore_patterns()) == []


def test_variables_match_the_dag():
    if not (REPO_ROOT / "dags" / "fruits_pipeline.py").is_file():
        pytest.fail("dags/fruits_pipeline.py is missing")
    names = dag_variables()
    for service in AIRFLOW_SERVICES:
        assert check_variables(env_of(load_compose()["services"][service]), names) == []


# ------------------------------------------------------------------- the checks can fail (negative tests)
def test_schema_check_rejects_an_invalid_file(tmp_path):
    bad = tmp_path / "docker-compose.yaml"
    data = load_compose()
    data["services"]["airflow-apiserver"]["ports"] = {"8080": 8080}  # ports must be a list
    data["services"]["airflow-scheduler"]["healthchek"] = {}  # typo: unknown key
    bad.write_text(yaml.safe_dump(data))
    result = run_schema_check(bad)
    assert result.returncode != 0


def test_checks_catch_broken_compose(compose):
    broken = copy.deepcopy(compose)
    del broken["services"]["airflow-triggerer"]
    broken["services"]["airflow-scheduler"].pop("healthcheck")
    broken["services"]["redis"] = {"image": "redis:7.2-bookworm"}
    problems = check_services(broken)
    assert any("airflow-triggerer is missing" in p for p in problems)
    assert any("airflow-scheduler has no healthcheck" in p for p in problems)
    assert any("redis" in p for p in problems)

    broken = copy.deepcopy(compose)
    svc = broken["services"]["airflow-dag-processor"]
    svc["volumes"] = [*svc["volumes"], "./no-such-folder:/opt/airflow/nothing"]
    svc["build"] = {"context": "./no-such-context"}
    broken["services"]["airflow-apiserver"]["build"] = {"context": ".", "dockerfile": "Dockerfile.missing"}
    problems = check_paths(broken)
    assert any("no-such-folder" in p for p in problems)
    assert any("no-such-context" in p for p in problems)
    assert any("Dockerfile.missing" in p for p in problems)

    broken = copy.deepcopy(compose)
    env = broken["services"]["airflow-scheduler"]["environment"]
    env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "true"
    env.pop("AIRFLOW_VAR_FRUITS_LOCAL_ROOT")
    env[SPARK_JOBS_ENV] = "/elsewhere"
    problems = check_environment(broken)
    assert any("DAGS_ARE_PAUSED_AT_CREATION" in p for p in problems)
    assert any("AIRFLOW_VAR_FRUITS_LOCAL_ROOT" in p for p in problems)
    assert any(SPARK_JOBS_ENV in p for p in problems)

    assert check_interpolation_defaults("password: ${SECRET}\nok: ${A:-b}\n") == ["${SECRET} has no default"]


def test_checks_catch_broken_dockerfile():
    good = DOCKERFILE.read_text()
    pin = pinned(REQUIREMENTS, "apache-airflow")
    assert check_dockerfile(good.replace(f"apache/airflow:{pin}-", "apache/airflow:3.0.0-"))
    assert any("constraints" in p for p in check_dockerfile(good.replace("-c /opt/fruits/constraints.txt", "")))
    assert any("openjdk" in p for p in check_dockerfile(good.replace("openjdk-17-jre-headless", "vim")))
    assert any("JAVA_HOME" in p for p in check_dockerfile(good.replace("ENV JAVA_HOME=", "ENV NOT_JAVA=")))
    assert any(
        "does not copy" in p or "does not exist" in p
        for p in check_dockerfile(
            good.replace(
                "COPY --chown=airflow:0 spark_jobs/requirements.txt", "COPY --chown=airflow:0 spark_jobs/nope.txt"
            )
        )
    )
    assert check_dockerignore([".git", "local"]) == [".dockerignore does not exclude .venv"]


def test_checks_catch_variables_the_dag_does_not_read():
    assert check_variables({"AIRFLOW_VAR_FRUITS_TYPO": "x"}, {"fruits_backend"}) == [
        "the DAG does not read the Variable fruits_local_root",
        "the DAG does not read the Variable fruits_weights",
        "the DAG does not read the Variable fruits_jobs_dir",
        "compose sets AIRFLOW_VAR_FRUITS_TYPO, a Variable the DAG does not read",
    ]
