"""tools/compose_env.py (``make compose-env``) makes the compose stack's secrets into a private .env, once, and
docker-compose.yaml takes them from there and from nowhere else (static: no Docker engine on the build machines).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import compose_env
import pytest
import yaml
from cryptography.fernet import Fernet
from dotenv import dotenv_values

from compose_checks import (
    AIRFLOW_SERVICES,
    DOCKERIGNORE,
    ENV_TOOL,
    REQUIRED_MESSAGE,
    SECRET_VARS,
    MissingVariable,
    dockerignore_patterns,
    env_of,
    ignored,
    interpolate,
    interpolate_compose,
    load_compose,
    makefile_target,
    run_schema_check,
)
from repo import REPO_ROOT


def run_tool(env_file: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(ENV_TOOL), "--env-file", str(env_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def b64_bytes(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@pytest.fixture
def made(tmp_path) -> tuple[Path, dict[str, str], subprocess.CompletedProcess]:
    env_file = tmp_path / ".env"
    result = run_tool(env_file)
    return env_file, dotenv_values(env_file), result


# ------------------------------------------------------------------------------------------- the generator
def test_first_run_makes_every_secret_in_a_private_file(made):
    env_file, values, result = made
    assert mode(env_file) == 0o600
    assert set(SECRET_VARS) <= set(values)
    assert values["AIRFLOW_UID"] == str(os.getuid())

    key = values["AIRFLOW_FERNET_KEY"]
    assert len(b64_bytes(key)) == 32
    fernet = Fernet(key.encode())
    assert fernet.decrypt(fernet.encrypt(b"a connection's password")) == b"a connection's password"

    assert len(b64_bytes(values["AIRFLOW_JWT_SECRET"])) >= 32
    password = values["AIRFLOW_ADMIN_PASSWORD"]
    assert len(password) >= 16 and password.replace("-", "").replace("_", "").isalnum()
    assert len(values["AIRFLOW_POSTGRES_PASSWORD"]) >= 16
    assert len({values[name] for name in SECRET_VARS}) == len(SECRET_VARS)

    # The admin password is printed, once; the other secrets never are.
    assert f"admin / {password}" in result.stdout
    for name in SECRET_VARS - {"AIRFLOW_ADMIN_PASSWORD"}:
        assert values[name] not in result.stdout + result.stderr
    assert result.stderr == ""


def test_two_runs_make_different_secrets(tmp_path, made):
    _, first, _ = made
    other = tmp_path / "other" / ".env"
    other.parent.mkdir()
    run_tool(other)
    second = dotenv_values(other)
    for name in SECRET_VARS:
        assert first[name] != second[name]


def test_a_second_run_keeps_every_value_and_prints_no_password(made):
    env_file, values, _ = made
    before = env_file.read_bytes()
    again = run_tool(env_file)
    assert env_file.read_bytes() == before
    assert values["AIRFLOW_ADMIN_PASSWORD"] not in again.stdout
    assert "nothing changed" in again.stdout
    assert mode(env_file) == 0o600


def test_values_already_there_are_kept_and_empty_ones_filled(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# my settings\nAIRFLOW_UID=1234\nFRUITS_WEIGHTS=imagenet\nAIRFLOW_JWT_SECRET=\n"
        "AIRFLOW_ADMIN_PASSWORD=my-own-long-password\n"
    )
    env_file.chmod(0o644)
    result = run_tool(env_file)
    lines = env_file.read_text().splitlines()
    assert lines[:3] == ["# my settings", "AIRFLOW_UID=1234", "FRUITS_WEIGHTS=imagenet"]
    assert lines[3].startswith("AIRFLOW_JWT_SECRET=") and len(lines[3]) > len("AIRFLOW_JWT_SECRET=") + 43
    assert lines[4] == "AIRFLOW_ADMIN_PASSWORD=my-own-long-password"
    assert sum(ln.startswith("AIRFLOW_ADMIN_PASSWORD=") for ln in lines) == 1
    values = dotenv_values(env_file)
    assert Fernet(values["AIRFLOW_FERNET_KEY"].encode())
    assert "my-own-long-password" not in result.stdout and "Airflow login" not in result.stdout
    assert mode(env_file) == 0o600
    # Rotation: delete a line, run again; only that value changes.
    env_file.write_text("".join(ln + "\n" for ln in lines if not ln.startswith("AIRFLOW_ADMIN_PASSWORD=")))
    result = run_tool(env_file)
    rotated = dotenv_values(env_file)
    assert rotated["AIRFLOW_ADMIN_PASSWORD"] != "my-own-long-password"
    assert f"admin / {rotated['AIRFLOW_ADMIN_PASSWORD']}" in result.stdout
    assert {k: v for k, v in rotated.items() if k != "AIRFLOW_ADMIN_PASSWORD"} == {
        k: v for k, v in values.items() if k != "AIRFLOW_ADMIN_PASSWORD"
    }


def test_an_older_env_files_fernet_key_is_kept_and_its_public_password_is_not(tmp_path):
    env_file = tmp_path / ".env"
    old_key = Fernet.generate_key().decode()
    env_file.write_text(f"FERNET_KEY={old_key}\n_AIRFLOW_WWW_USER_PASSWORD=admin\n")
    result = run_tool(env_file)
    values = dotenv_values(env_file)
    assert values["AIRFLOW_FERNET_KEY"] == old_key  # connections stored with it stay readable
    assert values["AIRFLOW_ADMIN_PASSWORD"] not in ("", "admin")
    assert f"admin / {values['AIRFLOW_ADMIN_PASSWORD']}" in result.stdout
    assert "kept the value of FERNET_KEY" in result.stdout
    # Something that is not a Fernet key is not taken over.
    env_file.write_text("FERNET_KEY=abc\n")
    run_tool(env_file)
    assert Fernet(dotenv_values(env_file)["AIRFLOW_FERNET_KEY"].encode())


def test_weak_values_are_kept_but_warned_about(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("AIRFLOW_JWT_SECRET=fruits_dev_jwt_secret_change_me\nAIRFLOW_FERNET_KEY=not-a-key\n")
    result = run_tool(env_file)
    values = dotenv_values(env_file)
    assert values["AIRFLOW_JWT_SECRET"] == "fruits_dev_jwt_secret_change_me"
    assert "AIRFLOW_JWT_SECRET is a value published in the repository" in result.stderr
    assert "AIRFLOW_FERNET_KEY is not a Fernet key" in result.stderr


def test_the_tool_makes_the_secrets_the_compose_file_requires():
    assert set(compose_env.SECRETS) == SECRET_VARS
    assert compose_env.DEFAULT_ENV_FILE == REPO_ROOT / ".env"  # where compose reads .env: beside the file


def test_the_env_file_stays_out_of_git_and_of_the_image():
    result = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT, timeout=30)
    assert result.returncode == 0, ".env is not git-ignored"
    assert DOCKERIGNORE.is_file() and ignored(".env", dockerignore_patterns())


def test_make_compose_env_runs_the_tool_without_the_virtualenv():
    target = makefile_target("compose-env")
    assert target is not None, "no compose-env target in the Makefile"
    prerequisites, recipe = target
    assert "venv" not in prerequisites  # the tool is stdlib only: no TensorFlow install to make a secret
    assert any("tools/compose_env.py" in line for line in recipe)


# ------------------------------------------------------------------------ the compose file with that .env
def test_the_services_get_the_generated_values(made, tmp_path):
    _, values, _ = made
    compose = interpolate_compose(load_compose(), values)
    services = compose["services"]
    for name in ["airflow-init", *AIRFLOW_SERVICES]:
        env = env_of(services[name])
        assert env["AIRFLOW__CORE__FERNET_KEY"] == values["AIRFLOW_FERNET_KEY"]
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == values["AIRFLOW_JWT_SECRET"]
        conn = f"postgresql+psycopg2://airflow:{values['AIRFLOW_POSTGRES_PASSWORD']}@postgres/airflow"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == conn
    assert env_of(services["postgres"])["POSTGRES_PASSWORD"] == values["AIRFLOW_POSTGRES_PASSWORD"]
    init_env = env_of(services["airflow-init"])
    assert init_env["_AIRFLOW_WWW_USER_PASSWORD"] == values["AIRFLOW_ADMIN_PASSWORD"]
    assert services["airflow-init"]["command"][1].count(f'"{values["AIRFLOW_UID"]}:0"') == 2

    # The interpolated file is still a valid compose file.
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(yaml.safe_dump(compose))
    result = run_schema_check(resolved)
    assert result.returncode == 0, result.stdout + result.stderr

    # airflow-init's passwords-file line writes {"admin": <the password>}, mode 0600 even over an older file.
    line = next(ln for ln in services["airflow-init"]["command"][1].splitlines() if ln.strip().startswith("python -c"))
    code = shlex.split(line)[2]
    pw_file = tmp_path / "simple_auth_manager_passwords.json"
    pw_file.write_text('{"admin": "admin"}\n')
    pw_file.chmod(0o644)
    run_env = {
        "PATH": os.environ.get("PATH", ""),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pw_file),
        "_AIRFLOW_WWW_USER_USERNAME": init_env["_AIRFLOW_WWW_USER_USERNAME"],
        "_AIRFLOW_WWW_USER_PASSWORD": init_env["_AIRFLOW_WWW_USER_PASSWORD"],
    }
    subprocess.run([sys.executable, "-c", code], env=run_env, check=True, timeout=30)
    assert json.loads(pw_file.read_text()) == {"admin": values["AIRFLOW_ADMIN_PASSWORD"]}
    assert mode(pw_file) == 0o600


def test_without_the_env_file_compose_stops_with_the_message():
    with pytest.raises(MissingVariable, match=REQUIRED_MESSAGE):
        interpolate_compose(load_compose(), {})


@pytest.mark.parametrize("missing", sorted(SECRET_VARS))
def test_each_secret_is_required(made, missing):
    _, values, _ = made
    message = f"required variable {missing} is missing a value: {REQUIRED_MESSAGE}"
    for without in ({k: v for k, v in values.items() if k != missing}, {**values, missing: ""}):
        with pytest.raises(MissingVariable, match=message):
            interpolate_compose(load_compose(), without)


def test_interpolation_follows_compose():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET} $SET ${UNSET} $$SET", env) == "v v  $SET"
    assert interpolate("${SET:-d} ${EMPTY:-d} ${UNSET:-d} ${EMPTY-d} ${UNSET-d}", env) == "v d d  d"
    assert interpolate("${SET:?e} ${SET?e} ${EMPTY?e}", env) == "v v "
    assert interpolate("${SET:+a}|${EMPTY:+a}|${EMPTY+a}|${UNSET+a}", env) == "a||a|"
    for text in ("${EMPTY:?no value}", "${UNSET:?no value}", "${UNSET?no value}"):
        with pytest.raises(MissingVariable, match="is missing a value: no value"):
            interpolate(text, env)
