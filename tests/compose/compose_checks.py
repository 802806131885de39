"""Static checks of docker-compose.yaml, Dockerfile and .dockerignore (no Docker engine on the build machines).

Each check is a function that returns a list of problems, so the tests (test_compose.py) can show both that the
files pass and that the checks catch broken copies of them.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from repo import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
REQUIREMENTS = REPO_ROOT / "requirements.txt"
COMPOSE_DOC = REPO_ROOT / "docs" / "compose.md"
MAKEFILE = REPO_ROOT / "Makefile"
ENV_TOOL = REPO_ROOT / "tools" / "compose_env.py"

AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
REQUIRED_SERVICES = ["postgres", "airflow-init", *AIRFLOW_SERVICES]
# The DAG's one Variable (a JSON object of settings), and the settings local mode needs in it
# (fruits_jobs_dir: where its tasks find the Spark jobs).
SETTINGS_ENV = "AIRFLOW_VAR_FRUITS_SETTINGS"
REQUIRED_SETTINGS = ["fruits_backend", "fruits_local_root", "fruits_weights", "fruits_jobs_dir"]
# Interpolated variables that may have no default (upstream: the init service tests AIRFLOW_UID for emptiness).
NO_DEFAULT_OK = {"AIRFLOW_UID"}
# The secrets `make compose-env` (tools/compose_env.py) writes into .env: the compose file requires them
# (`${NAME:?message}`, no default), and holds no secret of its own.
SECRET_VARS = {"AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_POSTGRES_PASSWORD"}
REQUIRED_MESSAGE = "run make compose-env first"
# Environment variables whose value is a secret (paths to secret files are not).
SECRET_ENV_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|FERNET|TOKEN|CREDENTIAL|(^|_)KEY$", re.I)
NOT_A_SECRET_SUFFIXES = ("_FILE", "_PATH", "_CMD")
WEIGHTS_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


# --------------------------------------------------------------------------------------------- helpers
_INTERP = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(ValueError):
    """A `${NAME:?message}` (or `${NAME?message}`) whose variable has no value: compose refuses the file."""


def interpolations(text: str) -> list[tuple[str, str | None, str | None]]:
    """(name, operator, argument) of every ${VAR...}/$VAR in a string: operator is one of `:-`, `-`, `:?`, `?`,
    `:+`, `+`, or None for a bare ${VAR}."""
    out = []
    for m in _INTERP.finditer(text):
        if m.group(0) == "$$":
            continue
        out.append((m.group(1) or m.group(4), m.group(2), m.group(3)))
    return out


def interpolate(text: str, env: Mapping[str, str] | None = None) -> str:
    """Compose interpolation of one value with ``env`` (default: empty): `${VAR}`, `$VAR`, `${VAR:-default}` (unset
    or empty), `${VAR-default}` (unset), `${VAR:?err}` / `${VAR?err}` (raise MissingVariable with compose's
    message), `${VAR:+alt}` / `${VAR+alt}`; `$$` is a literal `$`."""
    env = env or {}

    def repl(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return "" if value is None else arg
        return value or ""

    return _INTERP.sub(repl, text)


def interpolate_compose(data: Any, env: Mapping[str, str] | None = None) -> Any:
    """The whole parsed file interpolated the way compose does it: every string value (not the keys, not the
    comments)."""
    if isinstance(data, dict):
        return {key: interpolate_compose(value, env) for key, value in data.items()}
    if isinstance(data, list):
        return [interpolate_compose(value, env) for value in data]
    if isinstance(data, str):
        return interpolate(data, env)
    return data


def load_compose(path: Path = COMPOSE_FILE) -> dict:
    # safe_load resolves the `<<: *anchor` merge keys the way Compose does.
    return yaml.safe_load(path.read_text())


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host source after interpolation, container target) of every bind mount of a service."""
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                out.append((interpolate(str(vol["source"])), vol["target"]))
            continue
        parts = interpolate(vol).split(":")
        if len(parts) >= 2 and (parts[0].startswith((".", "/", "~"))):
            out.append((parts[0], parts[1]))
    return out


def created_by_quick_start(doc: Path = COMPOSE_DOC) -> set[Path]:
    """Folders the documented quick start creates with `mkdir -p` (resolved against the repo root)."""
    created: set[Path] = set()
    if not doc.is_file():
        return created
    for line in doc.read_text().splitlines():
        line = line.strip()
        if line.startswith("mkdir -p "):
            for arg in shlex.split(line)[2:]:
                created.add((REPO_ROOT / arg).resolve())
    return created


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[str]:
    if not path.is_file():
        return []
    return [
        ln.strip().rstrip("/") for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]


def ignored(rel: str, patterns: list[str]) -> bool:
    """A small .dockerignore matcher: a pattern excludes a path or any path below it (no `!` exceptions)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        if pat.startswith("!"):
            raise AssertionError("the checker does not handle .dockerignore exceptions (!)")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pat) or (
                pat.startswith("**/") and fnmatch.fnmatch(prefix.split("/")[-1], pat[3:])
            ):
                return True
    return False


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def pinned(requirements: Path, name: str) -> str | None:
    for line in requirements.read_text().splitlines():
        m = re.match(rf"^\s*{re.escape(name)}\s*==\s*([^\s;#]+)", line, re.I)
        if m:
            return m.group(1)
    return None


def dag_variables() -> set[str]:
    """Names of the settings the DAG reads (keys of its Variable): its settings spec, the one place they are read."""
    from fruits_dag.settings import SETTINGS

    return {setting.name for setting in SETTINGS}


def compose_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The pipeline's settings a service's environment gives (its ``AIRFLOW_VAR_FRUITS_SETTINGS``, interpolated
    with the defaults as compose would, parsed as JSON); ``{}`` when unset; ``ValueError`` when it is not JSON."""
    text = interpolate(env.get(SETTINGS_ENV, "")).strip()
    if not text:
        return {}
    values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{SETTINGS_ENV} is not a JSON object")
    return values


# --------------------------------------------------------------------------------------------- checks
def check_services(compose: dict) -> list[str]:
    problems = []
    services = compose.get("services") or {}
    for name in REQUIRED_SERVICES:
        if name not in services:
            problems.append(f"service {name} is missing")
    for name in ("redis", "airflow-worker", "flower"):
        if name in services:
            problems.append(f"service {name} is not needed with the LocalExecutor")
    for name in ["postgres", *AIRFLOW_SERVICES]:
        svc = services.get(name) or {}
        test = (svc.get("healthcheck") or {}).get("test")
        if not test or svc.get("healthcheck", {}).get("disable"):
            problems.append(f"service {name} has no healthcheck")
    api = services.get("airflow-apiserver") or {}
    if api.get("command") != "api-server":
        problems.append("airflow-apiserver must run `api-server`")
    if not any(str(p).split("/")[0].endswith("8080:8080") for p in api.get("ports") or []):
        problems.append("airflow-apiserver must publish port 8080")
    expected_cmd = {
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
    }
    for name, cmd in expected_cmd.items():
        if (services.get(name) or {}).get("command") != cmd:
            problems.append(f"{name} must run `{cmd}`")
    for name in AIRFLOW_SERVICES:
        deps = (services.get(name) or {}).get("depends_on") or {}
        if (deps.get("airflow-init") or {}).get("condition") != "service_completed_successfully":
            problems.append(f"{name} must wait for airflow-init to complete")
        if (deps.get("postgres") or {}).get("condition") != "service_healthy":
            problems.append(f"{name} must wait for a healthy postgres")
    init = services.get("airflow-init") or {}
    init_env = env_of(init)
    if init_env.get("_AIRFLOW_DB_MIGRATE", "").lower() != "true" and "db migrate" not in str(init.get("command")):
        problems.append("airflow-init must migrate the database")
    cli = services.get("airflow-cli")
    if cli is not None and not cli.get("profiles"):
        problems.append("airflow-cli must be behind a profile")
    return problems


def check_environment(compose: dict) -> list[str]:
    problems = []
    services = compose.get("services") or {}
    for name in ["airflow-init", *AIRFLOW_SERVICES]:
        env = env_of(services.get(name) or {})
        want = {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "false",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        }
        for key, value in want.items():
            if env.get(key, "").lower() != value.lower():
                problems.append(f"{name}: {key} should be {value!r}, is {env.get(key)!r}")
        try:
            settings = compose_settings(env)
        except ValueError as error:
            problems.append(f"{name}: {SETTINGS_ENV} is not a JSON object of settings once interpolated: {error}")
            settings = {}
        if settings.get("fruits_backend") != "local":
            problems.append(f"{name}: setting fruits_backend should be 'local', is {settings.get('fruits_backend')!r}")
        for setting in REQUIRED_SETTINGS:
            if setting not in settings:
                problems.append(f"{name}: setting {setting} is not in {SETTINGS_ENV}")
        if not env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "").endswith(":admin"):
            problems.append(f"{name}: no admin user for the simple auth manager")
        if not env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"):
            problems.append(f"{name}: no passwords file for the simple auth manager")
        if "airflow-apiserver" not in env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", ""):
            problems.append(f"{name}: the execution API URL must point at airflow-apiserver")
        mounts = {target: src for src, target in bind_mounts(services.get(name) or {})}
        root = str(settings.get("fruits_local_root", ""))
        if root not in mounts:
            problems.append(f"{name}: the storage root {root!r} is not a mounted folder")
        jobs = str(settings.get("fruits_jobs_dir", ""))
        if not jobs or jobs not in mounts or Path(mounts[jobs]).name != "spark_jobs":
            problems.append(f"{name}: setting fruits_jobs_dir={jobs!r} is not the mount of ./spark_jobs")
        for folder in ("/opt/airflow/dags", "/opt/airflow/plugins"):
            if folder not in mounts:
                problems.append(f"{name}: {folder} is not mounted")
        weights = str(settings.get("fruits_weights", ""))
        if weights != "imagenet":
            if not weights.endswith(WEIGHTS_NAME):
                problems.append(f"{name}: the default weights {weights!r} are not {WEIGHTS_NAME}")
            elif not any(weights.startswith(t.rstrip("/") + "/") for t in mounts):
                problems.append(f"{name}: the weights {weights!r} are not in a mounted folder")
        pw_file = env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", "")
        if pw_file and not any(pw_file.startswith(t.rstrip("/") + "/") for t in mounts):
            problems.append(f"{name}: the passwords file {pw_file!r} is not in a mounted folder")
    init = services.get("airflow-init") or {}
    init_env = env_of(init)
    if "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" not in str(init.get("command")):
        problems.append("airflow-init does not write the passwords file")
    if interpolate(init_env.get("_AIRFLOW_WWW_USER_USERNAME", "")) != "admin":
        problems.append("airflow-init: _AIRFLOW_WWW_USER_USERNAME should default to admin")
    if required_variable(init_env.get("_AIRFLOW_WWW_USER_PASSWORD", "")) != "AIRFLOW_ADMIN_PASSWORD":
        problems.append("airflow-init: _AIRFLOW_WWW_USER_PASSWORD should be ${AIRFLOW_ADMIN_PASSWORD:?...}")
    return problems


def check_interpolation_defaults(text: str) -> list[str]:
    """Every ${VAR} used by the file has a development default (like upstream), except NO_DEFAULT_OK, and except the
    secrets, which are required (`${NAME:?message}`) and never have a default."""
    problems = []
    for name, op, arg in interpolations(text):
        if name in SECRET_VARS:
            if op != ":?" or REQUIRED_MESSAGE not in (arg or ""):
                problems.append(f"${{{name}}} is a secret: it must be ${{{name}:?{REQUIRED_MESSAGE}}}")
        elif op in (":?", "?"):
            problems.append(f"${{{name}}} is required but is not a secret: give it a default")
        elif op not in (":-", "-") and name not in NO_DEFAULT_OK:
            problems.append(f"${{{name}}} has no default")
    return problems


def required_variable(value: str) -> str | None:
    """NAME when ``value`` is exactly one `${NAME:?message}` interpolation, else None."""
    m = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}", value.strip())
    return m.group(1) if m else None


def check_secrets(compose: dict) -> list[str]:
    """No secret is written in the file: every environment variable that holds one (by its name), and the password
    of every URI's user-info, is exactly a required interpolation of a variable `make compose-env` makes."""
    problems = []
    for name, svc in (compose.get("services") or {}).items():
        for key, value in env_of(svc).items():
            if SECRET_ENV_NAME.search(key) and not key.upper().endswith(NOT_A_SECRET_SUFFIXES):
                var = required_variable(value)
                if var is None:
                    problems.append(f"{name}: {key} holds a literal or defaulted secret; use ${{NAME:?...}}")
                elif var not in SECRET_VARS:
                    problems.append(f"{name}: {key} reads ${{{var}}}, which make compose-env does not make")
            for m in re.finditer(r"://[^/@\s:]*:(\$\{[^}]*\}|[^@\s]*)@", value):
                var = required_variable(m.group(1))
                if var not in SECRET_VARS:
                    problems.append(f"{name}: {key} has a literal password in a URI; use ${{NAME:?...}}")
    return problems


def published_host_ip(port: Any) -> str | None:
    """The host address a `ports:` entry binds (short or long syntax); None when it binds every interface."""
    if isinstance(port, dict):
        return str(port["host_ip"]) if port.get("host_ip") else None
    spec = interpolate(str(port)).split("/")[0]
    if spec.startswith("["):  # [::1]:8080:8080
        return spec[1 : spec.index("]")]
    parts = spec.split(":")
    return ":".join(parts[:-2]) if len(parts) >= 3 else None


def check_ports(compose: dict) -> list[str]:
    """Every published port binds a loopback address (this machine only), and no service shares the host's network."""
    problems = []
    for name, svc in (compose.get("services") or {}).items():
        if str(svc.get("network_mode", "")).startswith("host"):
            problems.append(f"{name}: network_mode host publishes every port it listens on")
        for port in svc.get("ports") or []:
            ip = published_host_ip(port)
            try:
                loopback = ip is not None and ipaddress.ip_address(ip).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                problems.append(f"{name}: port {port!r} is published on {ip or 'every interface'}, not 127.0.0.1")
    return problems


def makefile_target(name: str, path: Path = MAKEFILE) -> tuple[str, list[str]] | None:
    """(prerequisites, recipe lines) of a Makefile target, or None."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(rf"^{re.escape(name)}:(?!=)(.*)$", line)
        if m:
            recipe = []
            for nxt in lines[i + 1 :]:
                if not nxt.startswith("\t"):
                    break
                recipe.append(nxt.strip())
            return m.group(1).strip(), recipe
    return None


def check_paths(compose: dict, compose_dir: Path = REPO_ROOT) -> list[str]:
    problems = []
    created = created_by_quick_start()
    services = compose.get("services") or {}
    for name, svc in services.items():
        for src, target in bind_mounts(svc):
            path = (compose_dir / os.path.expanduser(src)).resolve()
            if path.exists():
                continue
            if path in created:
                continue
            problems.append(
                f"{name}: bind-mount source {src} (-> {target}) does not exist "
                f"and is not created by the quick start in {COMPOSE_DOC.name}"
            )
        build = svc.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (compose_dir / interpolate(build.get("context", "."))).resolve()
        if not context.is_dir():
            problems.append(f"{name}: build context {context} does not exist")
            continue
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            problems.append(f"{name}: {dockerfile} does not exist")
        for env_file in svc.get("env_file") or []:
            if isinstance(env_file, dict) and env_file.get("required") in (False, "false"):
                continue
            env_path = env_file["path"] if isinstance(env_file, dict) else env_file
            if not (compose_dir / interpolate(env_path)).exists():
                problems.append(f"{name}: required env_file {env_path} does not exist")
    return problems


def check_init_creates_mount_targets(compose: dict) -> list[str]:
    """Folders mounted from the git-ignored local/ tree are (re)created in the container by airflow-init."""
    init = (compose.get("services") or {}).get("airflow-init") or {}
    command = str(init.get("command"))
    created = set()
    for m in re.finditer(r"mkdir\s+(?:-\S+\s+)*([^\n;&|]+)", command):
        for arg in m.group(1).split():
            brace = re.match(r"(.*)\{([^}]*)\}(.*)", arg)
            if brace:
                created.update(brace.group(1) + x + brace.group(3) for x in brace.group(2).split(","))
            else:
                created.add(arg)
    problems = []
    for src, target in bind_mounts(init):
        if "/local/" in src and target not in created:
            problems.append(f"airflow-init does not create {target}")
    return problems


def check_dockerfile(text: str, requirements: Path = REQUIREMENTS) -> list[str]:
    problems = []
    instructions = dockerfile_instructions(text)
    froms = [args for word, args in instructions if word == "FROM"]
    airflow_pin = pinned(requirements, "apache-airflow")
    py = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if len(froms) != 1:
        problems.append(f"expected one FROM, found {froms}")
    elif froms[0] != f"apache/airflow:{airflow_pin}-{py}":
        problems.append(f"FROM {froms[0]} is not apache/airflow:{airflow_pin}-{py} (requirements.txt, this Python)")
    runs = [(i, args) for i, (word, args) in enumerate(instructions) if word == "RUN"]
    users = [(i, args) for i, (word, args) in enumerate(instructions) if word == "USER"]

    def user_at(index: int) -> str:
        current = "airflow"  # the official image's default user
        for i, args in users:
            if i < index:
                current = args
        return current

    java = [i for i, args in runs if re.search(r"apt-get install.*openjdk-17-jre-headless", args)]
    if not java:
        problems.append("the Dockerfile does not install openjdk-17-jre-headless")
    elif user_at(java[0]) != "root":
        problems.append("the JRE must be installed as root")
    envs = " ".join(args for word, args in instructions if word == "ENV")
    if not re.search(r"\bJAVA_HOME[= ]", envs):
        problems.append("JAVA_HOME is not set")
    pip = [
        (i, args)
        for i, args in runs
        if re.search(r"\bpip install\b", args)
        and re.search(r"-r\s+\S*requirements\.txt", args)
        and re.search(r"-c\s+\S*constraints\.txt", args)
    ]
    if not pip:
        problems.append("no `pip install -r requirements.txt -c constraints.txt`")
    else:
        i, args = pip[0]
        if user_at(i) != "airflow":
            problems.append("the requirements must be installed as the airflow user")
        if '"apache-airflow==${AIRFLOW_VERSION}"' not in args:
            problems.append("pip install must keep apache-airflow==${AIRFLOW_VERSION}")
        if java and java[0] > i:
            problems.append("install Java before the Python packages")
    # Every file copied into the image exists and is in the build context.
    patterns = dockerignore_patterns()
    copied = []
    for word, args in instructions:
        if word in ("COPY", "ADD"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            copied.extend(parts[:-1])
    for src in copied:
        if not (REPO_ROOT / src).exists():
            problems.append(f"COPY source {src} does not exist")
        elif ignored(src, patterns):
            problems.append(f"COPY source {src} is excluded by .dockerignore")
    # requirements.txt's own includes (-r spark_jobs/requirements.txt) must be copied next to it.
    for line in requirements.read_text().splitlines():
        m = re.match(r"^\s*-r\s+(\S+)", line)
        if m and m.group(1) not in copied:
            problems.append(f"requirements.txt includes {m.group(1)}, which the Dockerfile does not copy")
    return problems


def check_dockerignore(patterns: list[str]) -> list[str]:
    return [
        f".dockerignore does not exclude {name}" for name in (".venv", "local", ".git") if not ignored(name, patterns)
    ]


# --------------------------------------------------------------------------------------------- tests
def _check_jsonschema() -> str:
    exe = Path(sys.executable).with_name("check-jsonschema")
    if exe.is_file():
        return str(exe)
    found = shutil.which("check-jsonschema")
    if not found:
        raise FileNotFoundError("check-jsonschema is not installed (it is pinned in requirements.txt)")
    return found


def run_schema_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_variables(env: dict[str, str], names: set[str]) -> list[str]:
    """compose sets only the DAG's one Variable, its settings are settings the DAG reads, and the DAG reads the
    ones local mode needs."""
    problems = [f"the DAG does not read the setting {v}" for v in REQUIRED_SETTINGS if v not in names]
    problems += [
        f"compose sets {k}, a Variable the DAG does not read"
        for k in env
        if k.startswith("AIRFLOW_VAR_") and k != SETTINGS_ENV
    ]
    try:
        settings = compose_settings(env)
    except ValueError as error:
        return [*problems, f"{SETTINGS_ENV} is not a JSON object of settings: {error}"]
    problems += [f"compose sets the setting {k}, which the DAG does not read" for k in settings if k not in names]
    return problems
