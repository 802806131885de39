"""docker-compose.yaml, Dockerfile and .dockerignore pass the static checks of compose_checks.py, and those checks
catch broken copies of them (no Docker engine on the build machines).
"""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from compose_checks import (
    AIRFLOW_SERVICES,
    COMPOSE_DOC,
    COMPOSE_FILE,
    DOCKERFILE,
    REQUIREMENTS,
    SETTINGS_ENV,
    check_dockerfile,
    check_dockerignore,
    check_environment,
    check_init_creates_mount_targets,
    check_interpolation_defaults,
    check_paths,
    check_ports,
    check_secrets,
    check_services,
    check_variables,
    compose_settings,
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


def test_every_interpolated_variable_has_a_default_or_is_a_required_secret():
    assert check_interpolation_defaults(COMPOSE_FILE.read_text()) == []


def test_no_secret_is_written_in_the_compose_file(compose):
    assert check_secrets(compose) == []
    text = COMPOSE_FILE.read_text()
    # The values the file used to hold, public in the repository's history.
    for old in ("fruits_dev_jwt_secret_change_me", "FERNET_KEY:-", "_AIRFLOW_WWW_USER_PASSWORD:-", "airflow:airflow@"):
        assert old not in text


def test_every_published_port_binds_this_machine_only(compose):
    assert check_ports(compose) == []
    assert compose["services"]["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]


def test_mount_sources_build_context_and_files_exist(compose):
    assert check_paths(compose) == []
    assert check_init_creates_mount_targets(compose) == []


def test_quick_start_in_docs_creates_the_local_folders():
    text = COMPOSE_DOC.read_text()
    assert "docker compose up" in text and "http://localhost:8080" in text
    assert "admin / admin" not in text
    compose_text = COMPOSE_FILE.read_text()
    # The same mkdir line is in the compose file's header, so both stay in step.
    mkdir = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("mkdir -p local/compose")]
    assert mkdir and mkdir[0] in compose_text
    # Both quick starts make the secrets before `docker compose up`, and neither overwrites .env (which holds them).
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    header = compose_text.split("# Quick start", 1)[1].split("\n#\n", 1)[0]
    for steps in (quick_start, header):
        assert "make compose-env" in steps and "docker compose up" in steps
        assert steps.index("make compose-env") < steps.index("docker compose up")
    assert "> .env" not in text and "> .env" not in compose_text


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
    settings = compose_settings(env)
    settings.pop("fruits_local_root")
    env[SETTINGS_ENV] = json.dumps({**settings, "fruits_jobs_dir": "/elsewhere"})
    problems = check_environment(broken)
    assert any("DAGS_ARE_PAUSED_AT_CREATION" in p for p in problems)
    assert any("setting fruits_local_root is not in" in p for p in problems)
    assert any("fruits_jobs_dir='/elsewhere' is not the mount" in p for p in problems)
    env[SETTINGS_ENV] = '{"fruits_backend": "local", ${FRUITS_POKE_INTERVAL:-30}}'
    assert any("is not a JSON object of settings once interpolated" in p for p in check_environment(broken))

    assert check_interpolation_defaults("password: ${SECRET}\nok: ${A:-b}\n") == ["${SECRET} has no default"]
    assert check_interpolation_defaults("a: ${AIRFLOW_FERNET_KEY:-}\nb: ${OTHER:?set it}\n") == [
        "${AIRFLOW_FERNET_KEY} is a secret: it must be ${AIRFLOW_FERNET_KEY:?run make compose-env first}",
        "${OTHER} is required but is not a secret: give it a default",
    ]


def test_secret_check_catches_secrets_written_in_the_file(compose):
    broken = copy.deepcopy(compose)
    env = broken["services"]["airflow-scheduler"]["environment"]
    env["AIRFLOW__CORE__FERNET_KEY"] = "${FERNET_KEY:-}"
    env["AIRFLOW__API_AUTH__JWT_SECRET"] = "fruits_dev_jwt_secret_change_me"
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "postgresql+psycopg2://airflow:airflow@postgres/airflow"
    env["AIRFLOW__API__SECRET_KEY"] = "${SOME_SECRET:?run make compose-env first}"
    broken["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "airflow"
    broken["services"]["airflow-init"]["environment"]["_AIRFLOW_WWW_USER_PASSWORD"] = "${AIRFLOW_ADMIN_PASSWORD:-admin}"
    problems = check_secrets(broken)
    for what in (
        "airflow-scheduler: AIRFLOW__CORE__FERNET_KEY holds",
        "airflow-scheduler: AIRFLOW__API_AUTH__JWT_SECRET holds",
        "airflow-scheduler: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN has a literal password",
        "airflow-scheduler: AIRFLOW__API__SECRET_KEY reads ${SOME_SECRET}",
        "postgres: POSTGRES_PASSWORD holds",
        "airflow-init: _AIRFLOW_WWW_USER_PASSWORD holds",
    ):
        assert any(p.startswith(what) for p in problems), (what, problems)
    assert any("_AIRFLOW_WWW_USER_PASSWORD" in p for p in check_environment(broken))
    # The passwords file's path is not a secret.
    assert not any("PASSWORDS_FILE" in p for p in problems)


def test_port_check_catches_ports_open_to_the_network(compose):
    for port in ("8080:8080", 8080, "8080", "0.0.0.0:8080:8080", "[::]:8080:8080", {"target": 8080, "published": 8080}):
        broken = copy.deepcopy(compose)
        broken["services"]["airflow-apiserver"]["ports"] = [port]
        problems = check_ports(broken)
        assert len(problems) == 1 and problems[0].startswith(f"airflow-apiserver: port {port!r} is published on ")
    for port in (
        "127.0.0.1:8080:8080",
        "[::1]:8080:8080",
        "127.0.0.1:8080:8080/tcp",
        {"target": 8080, "host_ip": "127.0.0.1"},
    ):
        ok = copy.deepcopy(compose)
        ok["services"]["airflow-apiserver"]["ports"] = [port]
        assert check_ports(ok) == []
    broken = copy.deepcopy(compose)
    broken["services"]["airflow-apiserver"]["network_mode"] = "host"
    assert check_ports(broken) == ["airflow-apiserver: network_mode host publishes every port it listens on"]


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
    env = {"AIRFLOW_VAR_FRUITS_BUCKET": "x", SETTINGS_ENV: '{"fruits_backend": "local", "fruits_typo": 1}'}
    assert check_variables(env, {"fruits_backend"}) == [
        "the DAG does not read the setting fruits_local_root",
        "the DAG does not read the setting fruits_weights",
        "the DAG does not read the setting fruits_jobs_dir",
        "compose sets AIRFLOW_VAR_FRUITS_BUCKET, a Variable the DAG does not read",
        "compose sets the setting fruits_typo, which the DAG does not read",
    ]
