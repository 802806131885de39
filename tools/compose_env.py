"""The docker compose stack's secrets, made on this machine once and kept in ``.env`` (``make compose-env``).

    python3 tools/compose_env.py [--env-file PATH]     # default: the .env beside docker-compose.yaml

Adds to the env file each of these that is missing or empty, and never changes a value that is there:

    AIRFLOW_UID                this user's id (`id -u`), so files in the mounted folders stay yours
    AIRFLOW_FERNET_KEY         encrypts connections' passwords and variables in the database (a Fernet key)
    AIRFLOW_JWT_SECRET         signs the API server's tokens (64 random bytes, url-safe base64)
    AIRFLOW_ADMIN_PASSWORD     the UI's admin password (airflow-init writes it into the simple auth manager's file)
    AIRFLOW_POSTGRES_PASSWORD  the metadata database's password (set when the database volume is first made)

docker-compose.yaml reads them with required-variable interpolation (``${NAME:?...}``), so ``docker compose``
refuses to start without them, and holds no secret itself. The file is written with mode 0600 (tightened if it was
looser; ``.env`` is git-ignored and docker-ignored). The admin password is printed when it is made, and only then.
To rotate a value, delete its line and run this again, except AIRFLOW_FERNET_KEY once connections are stored
(docs/compose.md, "Secrets").

Standard library only, so it runs before any virtualenv exists: a Fernet key is 32 random bytes in url-safe
base64, what ``cryptography.fernet.Fernet.generate_key()`` returns.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import re
import secrets
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENV_FILE = REPO_ROOT / ".env"

FERNET_KEY = "AIRFLOW_FERNET_KEY"
JWT_SECRET = "AIRFLOW_JWT_SECRET"
ADMIN_PASSWORD = "AIRFLOW_ADMIN_PASSWORD"
POSTGRES_PASSWORD = "AIRFLOW_POSTGRES_PASSWORD"
SECRETS = (FERNET_KEY, JWT_SECRET, ADMIN_PASSWORD, POSTGRES_PASSWORD)
USERNAME = "_AIRFLOW_WWW_USER_USERNAME"

# Names an older docker-compose.yaml read from .env. A valid Fernet key found there is kept (connections stored with
# it stay readable); a password chosen there is kept unless it is the old default. The others are made anew.
LEGACY = {FERNET_KEY: "FERNET_KEY", ADMIN_PASSWORD: "_AIRFLOW_WWW_USER_PASSWORD"}
# Values that were public in the repository: never adopted, and a warning when found under the new names.
KNOWN_PUBLIC = {"admin", "airflow", "fruits_dev_jwt_secret_change_me"}

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")


def new_fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def new_jwt_secret() -> str:
    return secrets.token_urlsafe(64)  # HS512, Airflow's algorithm for a shared secret, wants 64+ bytes


def new_password() -> str:
    return secrets.token_urlsafe(18)  # 24 characters, [A-Za-z0-9_-]: safe in JSON, URLs and .env files


GENERATORS: dict[str, Callable[[], str]] = {
    FERNET_KEY: new_fernet_key,
    JWT_SECRET: new_jwt_secret,
    ADMIN_PASSWORD: new_password,
    POSTGRES_PASSWORD: new_password,
}


def unquote(raw: str) -> str:
    """The value of a .env assignment's right-hand side, as compose reads it (quotes and inline comment dropped)."""
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def parse(lines: list[str]) -> dict[str, tuple[int, str]]:
    """NAME -> (index of its line, raw right-hand side); a later assignment wins, as in compose."""
    found = {}
    for i, line in enumerate(lines):
        m = _LINE.match(line)
        if m and not line.lstrip().startswith("#"):
            found[m.group(1)] = (i, m.group(2))
    return found


def is_fernet_key(value: str) -> bool:
    """One key, or the comma-separated list Airflow accepts while rotating (new first): 32 bytes each."""
    try:
        return all(len(base64.urlsafe_b64decode(k.strip().encode())) == 32 for k in value.split(","))
    except (binascii.Error, ValueError):
        return False


def warnings_for(values: dict[str, str]) -> list[str]:
    out = []
    for name in SECRETS:
        value = values.get(name, "")
        if value in KNOWN_PUBLIC:
            out.append(f"{name} is a value published in the repository: delete its line and run this again")
    if values.get(FERNET_KEY) and not is_fernet_key(values[FERNET_KEY]):
        out.append(f"{FERNET_KEY} is not a Fernet key (32 bytes in url-safe base64): Airflow cannot use it")
    if values.get(JWT_SECRET) and len(values[JWT_SECRET]) < 43:
        out.append(f"{JWT_SECRET} is shorter than 32 bytes of base64: delete its line and run this again")
    if values.get(ADMIN_PASSWORD) and len(values[ADMIN_PASSWORD]) < 12:
        out.append(f"{ADMIN_PASSWORD} is shorter than 12 characters")
    return out


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically; the new file is 0600 from its first byte (mkstemp)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure(path: Path, uid: int | None) -> dict:
    """Add what is missing to the env file at ``path``. Returns what was done: added names, the admin password
    when it was made here (else None), adopted legacy names, warnings, and whether the mode was tightened."""
    path = path.resolve()
    existed = path.exists()
    text = path.read_text() if existed else ""
    lines = text.splitlines()
    found = parse(lines)
    values = {name: unquote(raw) for name, (_, raw) in found.items()}

    wanted: dict[str, str] = {}  # name -> raw right-hand side to write
    adopted = []
    if uid is not None and not values.get("AIRFLOW_UID"):
        wanted["AIRFLOW_UID"] = str(uid)
    for name in SECRETS:
        if values.get(name):
            continue
        legacy = LEGACY.get(name)
        usable = name != FERNET_KEY or is_fernet_key(values.get(legacy or "", ""))
        if legacy and values.get(legacy) and values[legacy] not in KNOWN_PUBLIC and usable:
            wanted[name] = found[legacy][1].strip()  # the same text: compose reads it the same way
            adopted.append(legacy)
        else:
            wanted[name] = GENERATORS[name]()

    appended = []
    for name, raw in wanted.items():
        if name in found:  # present but empty: fill that line in place
            lines[found[name][0]] = f"{name}={raw}"
        else:
            appended.append(f"{name}={raw}")
    if appended:
        if lines and lines[-1].strip():
            lines.append("")
        lines += [
            "# Made by tools/compose_env.py (make compose-env). Keep this file private (mode 0600, git-ignored).",
            "# To rotate a value, delete its line and rerun; never change AIRFLOW_FERNET_KEY once connections are",
            "# stored (docs/compose.md, Secrets).",
            *appended,
        ]

    tightened = False
    if wanted:
        write_private(path, "\n".join(lines) + "\n")
    elif stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o600)
        tightened = True

    values.update({name: unquote(raw) for name, raw in wanted.items()})
    made_password = ADMIN_PASSWORD in wanted and LEGACY[ADMIN_PASSWORD] not in adopted
    return {
        "path": path,
        "existed": existed,
        "added": list(wanted),
        "password": values[ADMIN_PASSWORD] if made_password else None,
        "username": values.get(USERNAME) or "admin",
        "adopted": adopted,
        "warnings": warnings_for(values),
        "tightened": tightened,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help="default: %(default)s")
    args = parser.parse_args(argv)
    done = ensure(args.env_file, os.getuid() if hasattr(os, "getuid") else None)
    path = done["path"]

    if done["added"]:
        print(f"{path}: added {', '.join(done['added'])} (mode 0600)")
    else:
        print(f"{path}: every value is there already, nothing changed")
    if done["tightened"]:
        print(f"{path}: mode tightened to 0600")
    for legacy in done["adopted"]:
        print(f"  kept the value of {legacy} (an older compose file read it); that line is no longer read")
    if done["password"]:
        print()
        print(f"  Airflow login: {done['username']} / {done['password']}")
        print(f"  (shown this once; it stays in {path.name} as {ADMIN_PASSWORD})")
        print()
    if POSTGRES_PASSWORD in done["added"] and done["existed"]:
        print(
            f"  note: a PostgreSQL volume made before {POSTGRES_PASSWORD} existed keeps the password 'airflow':\n"
            "  `docker compose down --volumes` drops it, or see docs/compose.md, Secrets, to keep it"
        )
    for warning in done["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    if done["added"]:
        print("Next: docker compose up --build   (http://localhost:8080)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
