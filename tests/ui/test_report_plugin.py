"""The report plugin without servers: its FastAPI app mounted next to Airflow's own auth app, in this process.

The tokens are real: issued by Airflow's simple auth manager (``POST /auth/token``, the login API clients use) and
checked by Airflow's own ``get_user`` dependency, which looks revoked tokens up in a migrated SQLite database.
Security: every endpoint refuses requests without a valid session cookie or bearer token (and users the auth
manager does not allow), nothing outside ``reports/<date>/<report file>`` is served (path traversal, symbolic
links), and no storage credential reaches a response, S3 errors included. Content: the numbers, extra fields, plots
and links of a report, the run view's message for runs without a report. The run lookup (a database query) is
replaced by fixed run states here; the browser test covers it on a real Airflow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from airflow_servers import SIMPLE_AUTH_MANAGER
from repo import AIRFLOW, REPO_ROOT, airflow_env, with_settings

if "airflow" not in sys.modules:
    # First import of Airflow in this process: point it at a private home (a full run imports it earlier, from
    # the DAG tests, with their own private home).
    os.environ.update(airflow_env(Path(tempfile.mkdtemp(prefix="fruits-plugin-tests-"))))

# Starlette's TestClient warns that it will need httpx2 one day; it works with the pinned httpx.
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

DAY = "2026-03-14"
SECRET = "do-not-serve-" + secrets.token_hex(8)
ACCESS_KEY_ID = "AKIAFRUITSTEST" + secrets.token_hex(3).upper()
SECRET_ACCESS_KEY = "s3cr3t/" + secrets.token_urlsafe(24)
BUCKET = "fruits-plugin-test"
PASSWORDS = {"admin": secrets.token_urlsafe(12), "viewer": secrets.token_urlsafe(12)}

REPORT: dict[str, Any] = {
    "run_date": DAY,
    "images_read": 1234,
    "kept": 1200,
    "rejected": 34,
    "rejected_by_reason": {"corrupt": 4, "duplicate": 25, "too_small": 5},
    "duplicates": 25,
    "kept_per_label": {"Apple Braeburn": 700, "Banana <b>": 500},
    "final_rows": 5200,
    "rows_per_label": {"Apple Braeburn": 3000, "Banana <b>": 2200},
    "k": 3,
    "pca_model": "/data/models/pca/v0007",
    "variance_target": None,
    "explained_variance": [0.5, 0.25, 0.125],
    "cumulative_explained_variance": [0.5, 0.75, 0.875],
    "plots": ["explained_variance.png", "pca_scatter.png", "images_per_label.png"],
    # Fields of the versioned PCA and of later report versions: shown when present.
    "upload_days": ["2026-03-13", "2026-03-14"],
    "skipped_already_processed": 3,
    "pca_version": "v0007",
    "pca_refitted": True,
    "pca_refit_reason": "drift",
    "pca_drift": {"drift": 0.0421, "enough_rows": True},
    "pca_rows_projected": 1200,
    "new_field": {"answer": 42},
}
ENDPOINTS = ["/", f"/reports/{DAY}", "/runs/fruits_pipeline/manual__1", f"/files/{DAY}/report.json",
             f"/files/{DAY}/pca_scatter.png"]  # fmt: skip


def png(width: int, height: int) -> bytes:
    """A valid grey PNG of the given size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write_reports(root: Path) -> None:
    """A storage root with two reports, a folder that is no date, secrets around and a link out of reports/."""
    day = root / "reports" / DAY
    day.mkdir(parents=True)
    (day / "report.json").write_text(json.dumps(REPORT))
    for i, name in enumerate(REPORT["plots"]):
        (day / name).write_bytes(png(90 + i, 60))
    (day / "_SUCCESS").write_text(SECRET)
    (day / "notes.txt").write_text(SECRET)
    older = root / "reports" / "2026-03-13"
    older.mkdir()
    (older / "report.json").write_text(json.dumps({**REPORT, "run_date": "2026-03-13", "images_read": 7}))
    (root / "reports" / "latest").mkdir()
    (root / "secret.txt").write_text(SECRET)
    (root / "stages" / "clean").mkdir(parents=True)
    (root / "stages" / "clean" / "report.json").write_text(SECRET)
    linked = root / "reports" / "2026-03-12"
    linked.mkdir()
    (linked / "report.json").symlink_to(root / "secret.txt")


@dataclass
class Plugin:
    """The app under test, its client and tokens."""

    client: Any
    app: Any
    root: Path
    tokens: dict[str, str]

    def get(self, path: str, who: str | None = "admin", **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {})
        if who:
            headers.setdefault("Authorization", f"Bearer {self.tokens[who]}")
        return self.client.get("/fruits-report" + path, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    """The plugin's app mounted under /fruits-report beside the auth manager's app, on a local storage root."""
    home = tmp_path_factory.mktemp("plugin-home")
    root = tmp_path_factory.mktemp("plugin-storage") / "fruits"
    write_reports(root)
    (home / "passwords.json").write_text(json.dumps(PASSWORDS))
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith(("AIRFLOW_VAR_", "AIRFLOW_CONN_"))]:
            env.delenv(name)
        env.setenv("AIRFLOW__CORE__AUTH_MANAGER", SIMPLE_AUTH_MANAGER)
        env.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer")
        env.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(home / "passwords.json"))
        env.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
        env.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(64))  # HS512 wants 64+ bytes
        env.setenv(*with_settings({}, fruits_backend="local", fruits_local_root=str(root)).popitem())

        from airflow import settings
        from airflow.api_fastapi.app import init_auth_manager, purge_cached_app
        from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
        from fastapi import FastAPI
        from fastapi.testclient import TestClient

        from fruits_report.app import create_app

        # Token validation looks revoked tokens up in the database this process is configured with.
        migrate = subprocess.run(
            [AIRFLOW, "db", "migrate"],
            env={**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.SQL_ALCHEMY_CONN},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]

        def reset_auth() -> None:
            # The auth manager and its token signer/validator are cached process-wide, with the JWT secret.
            purge_cached_app()
            BaseAuthManager._get_token_signer.cache_clear()
            BaseAuthManager._get_token_validator.cache_clear()

        reset_auth()
        main = FastAPI()
        init_auth_manager(main)  # mounts the auth manager's app (login, /auth/token) as the API server does
        app = create_app()
        main.mount("/fruits-report", app)
        with TestClient(main) as client:
            tokens = {}
            for user, password in PASSWORDS.items():
                resp = client.post("/auth/token", json={"username": user, "password": password})
                assert resp.status_code in (200, 201), resp.text
                tokens[user] = resp.json()["access_token"]
            yield Plugin(client=client, app=app, root=root, tokens=tokens)
        reset_auth()


def _bad_tokens(plugin: Plugin) -> dict[str, tuple[dict[str, str], dict[str, str], tuple[int, ...]]]:
    """Credentials that must be refused: name -> (headers, cookies, accepted status codes)."""
    import jwt
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = get_auth_manager()
    claims = jwt.decode(plugin.tokens["admin"], options={"verify_signature": False})
    forged = jwt.encode({**claims, "sub": "admin", "role": "admin"}, "not-the-secret-" + "x" * 64, algorithm="HS512")
    expired = manager.generate_jwt(
        SimpleAuthManagerUser(username="admin", role="admin"), expiration_time_in_seconds=-600
    )
    no_role = manager.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None))
    return {
        "nothing": ({}, {}, (401,)),
        "garbage bearer": ({"Authorization": "Bearer not-a-token"}, {}, (401, 403)),
        "basic auth": ({"Authorization": "Basic YWRtaW46YWRtaW4="}, {}, (401,)),
        "forged signature": ({"Authorization": f"Bearer {forged}"}, {}, (401, 403)),
        "expired token": ({"Authorization": f"Bearer {expired}"}, {}, (401, 403)),
        "garbage cookie": ({}, {"_token": "not-a-token"}, (401, 403)),
        "forged cookie": ({}, {"_token": forged}, (401, 403)),
        "user without a role": ({"Authorization": f"Bearer {no_role}"}, {}, (403,)),
    }


def test_every_endpoint_refuses_requests_without_a_valid_session_or_token(plugin):
    for name, (headers, cookies, statuses) in _bad_tokens(plugin).items():
        for path in ENDPOINTS:
            plugin.client.cookies.clear()
            resp = plugin.client.get("/fruits-report" + path, headers=headers, cookies=cookies)
            assert resp.status_code in statuses, (name, path, resp.status_code, resp.text[:200])
            assert "1,234" not in resp.text and "images_read" not in resp.text and b"PNG" not in resp.content
    plugin.client.cookies.clear()
    for path in ENDPOINTS[:2] + ENDPOINTS[3:]:
        assert plugin.get(path).status_code == 200, path  # admin, bearer token
        assert plugin.get(path, who="viewer").status_code == 200, path  # read-only role
        # The UI's session: the JWT in the _token cookie, no header.
        assert plugin.get(path, who=None, cookies={"_token": plugin.tokens["viewer"]}).status_code == 200, path
        plugin.client.cookies.clear()


def test_no_route_escapes_the_auth_dependency(plugin):
    from fastapi.routing import APIRoute

    from fruits_report.auth import require_run_reader

    routes = [route for route in plugin.app.routes if isinstance(route, APIRoute)]
    assert {route.path for route in routes} == {"/", "/reports/{day}", "/runs/{dag_id}/{run_id:path}",
                                                "/files/{day}/{name}"}  # fmt: skip
    for route in routes:
        assert require_run_reader in [dep.call for dep in route.dependant.dependencies], route.path
    # FastAPI serves these outside the app's dependencies: they must not exist.
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        assert plugin.get(path).status_code == 404, path


@pytest.mark.parametrize(
    "path",
    [
        f"/files/{DAY}/..%2F..%2Fsecret.txt",
        f"/files/{DAY}/%2e%2e%2f%2e%2e%2fsecret.txt",
        f"/files/{DAY}/..%5C..%5Csecret.txt",
        "/files/..%2F..%2Fstages%2Fclean/report.json",
        "/files/..%2Fstages%2Fclean/report.json",
        "/files/../stages/clean/report.json",
        f"/files/{DAY}/notes.txt",
        f"/files/{DAY}/_SUCCESS",
        f"/files/{DAY}/report.json%00.png",
        f"/files/{DAY}/.%2Freport.json",
        "/files/2026-03-12/report.json",  # a symbolic link out of reports/
        "/files/latest/report.json",
        "/files/2026-3-14/report.json",
        "/files/2026-02-30/report.json",
        "/reports/..%2F..%2Fsecret.txt",
        "/reports/2026-03-12",
        "/runs/fruits_pipeline/..%2F..%2Fsecret.txt",
        "/runs/other_dag/..%2F..%2F..%2Fsecret.txt",
    ],
)
def test_nothing_outside_the_reports_is_served(plugin, path):
    plugin.app.dependency_overrides[_run_status()] = lambda: None
    try:
        resp = plugin.get(path)
    finally:
        plugin.app.dependency_overrides.clear()
    assert SECRET not in resp.text, path
    if path.startswith("/files/"):
        assert resp.status_code == 404, (path, resp.status_code, resp.text[:200])
    else:
        assert resp.status_code in (200, 404), (path, resp.status_code)
        assert "1,234" not in resp.text


def test_report_of_a_day_shows_the_numbers_the_extra_fields_and_the_plots(plugin):
    resp = plugin.get(f"/reports/{DAY}")
    assert resp.status_code == 200, resp.text
    html = resp.text
    assert fields(html) == {
        "images_read": "1,234",
        "kept": "1,200",
        "rejected": "34",
        "duplicates": "25",
        "final_rows": "5,200",
        "k": "3",
        "explained_variance": "87.5%",
        "upload_days": "2026-03-13, 2026-03-14",
        "skipped_already_processed": "3",
        "pca_version": "v0007",
        "pca_refitted": "yes",
        "pca_refit_reason": "drift",
        "pca_drift": "drift0.0421enough_rowsyes",
        "pca_rows_projected": "1,200",
        "new_field": "answer42",
    }
    assert rows(html, "data-reason") == {"corrupt": "4", "duplicate": "25", "too_small": "5"}
    assert rows(html, "data-label") == {"Apple Braeburn": "3,000", "Banana &lt;b&gt;": "2,200"}  # escaped
    assert "Banana <b>" not in html
    plots = re.findall(r'<img src="([^"]+)"[^>]*data-plot="([^"]+)"', html)
    assert [name for _, name in plots] == REPORT["plots"]
    for src, name in plots:
        assert src == f"/fruits-report/files/{DAY}/{name}"
        image = plugin.client.get(src, headers={"Authorization": f"Bearer {plugin.tokens['viewer']}"})
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content == (plugin.root / "reports" / DAY / name).read_bytes()
    links = set(re.findall(r'href="([^"]+)" download', html))
    assert f"/fruits-report/files/{DAY}/report.json" in links
    assert f"{plugin.root}/stages/pca/pca_version=v0007/" in html
    assert f"{plugin.root}/stages/clean/ingest_date={DAY}/" in html and "/data/models/pca/v0007" in html
    report = plugin.get(f"/files/{DAY}/report.json")
    assert report.headers["content-type"] == "application/json" and report.json() == REPORT
    headers = resp.headers
    assert "frame-ancestors 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"


def test_index_lists_the_report_dates_newest_first(plugin):
    html = plugin.get("/").text
    assert re.findall(r'<tr data-day="([^"]+)">', html) == [DAY, "2026-03-13", "2026-03-12"]
    assert f'href="/fruits-report/reports/{DAY}"' in html
    assert ">7<" in html  # the older report's images_read
    assert "latest" not in html


def test_a_missing_report_says_so(plugin):
    resp = plugin.get("/reports/2026-01-01")
    assert resp.status_code == 404 and "There is no report for 2026-01-01" in resp.text


def _run_status():
    from fruits_report.app import run_status

    return run_status


def _run(state: str, **tasks: str | None) -> Any:
    from fruits_report.runs import RunStatus

    return RunStatus("fruits_pipeline", "manual__x", state, dt.date.fromisoformat(DAY), tasks)


@pytest.mark.parametrize(
    ("run", "expected", "shows_numbers"),
    [
        (dict(state="success", report_step="success"), None, True),
        (dict(state="failed", report_step="success", terminate_cluster="failed"), "its report step succeeded", True),
        (dict(state="running", clean_step="running"), "still running (report_step: not started)", False),
        (dict(state="queued"), "still queued", False),
        (dict(state="success", wait_for_uploads="skipped", report_step="skipped"), "was skipped: no uploads", False),
        (dict(state="failed", embed_step="failed", report_step="upstream_failed"), "failed: embed_step", False),
    ],
)
def test_run_view_shows_the_report_only_for_runs_that_wrote_it(plugin, run, expected, shows_numbers):
    status = _run(**run)
    plugin.app.dependency_overrides[_run_status()] = lambda: status
    try:
        resp = plugin.get("/runs/fruits_pipeline/manual__x")
    finally:
        plugin.app.dependency_overrides.clear()
    assert resp.status_code == 200
    assert ('data-field="images_read">1,234<' in resp.text) is shows_numbers
    if expected:
        assert expected in resp.text
    if not shows_numbers:
        # The date's report exists (another run's): linked, never shown as this run's.
        assert f'href="/fruits-report/reports/{DAY}">see it' in resp.text


def test_run_view_of_unknown_runs_and_other_dags(plugin):
    plugin.app.dependency_overrides[_run_status()] = lambda: None
    try:
        missing = plugin.get("/runs/fruits_pipeline/nope")
    finally:
        plugin.app.dependency_overrides.clear()
    assert missing.status_code == 404 and "There is no run" in missing.text
    other = plugin.get("/runs/example_dag/manual__1")  # no database query for other DAGs
    assert other.status_code == 200 and "covers the runs of fruits_pipeline only" in other.text


def test_s3_reports_are_read_through_the_airflow_connection_without_exposing_it(plugin, monkeypatch):
    import boto3
    from moto import mock_aws

    connection = {
        "conn_type": "aws",
        "login": ACCESS_KEY_ID,
        "password": SECRET_ACCESS_KEY,
        "extra": {"region_name": "us-east-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    monkeypatch.setenv(*with_settings({}, fruits_backend="emr", fruits_bucket=BUCKET).popitem())
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=f"reports/{DAY}/report.json", Body=json.dumps(REPORT).encode())
        s3.put_object(Bucket=BUCKET, Key=f"reports/{DAY}/pca_scatter.png", Body=png(30, 20))
        s3.put_object(Bucket=BUCKET, Key="stages/clean/report.json", Body=SECRET.encode())

        responses = [plugin.get("/"), plugin.get(f"/reports/{DAY}"), plugin.get(f"/files/{DAY}/pca_scatter.png")]
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert f"s3://{BUCKET}/reports/" in responses[0].text and f'data-day="{DAY}"' in responses[0].text
        assert 'data-field="images_read">1,234<' in responses[1].text
        assert f"s3://{BUCKET}/stages/pca/pca_version=v0007/" in responses[1].text
        assert responses[2].content == png(30, 20)
        responses.append(plugin.get(f"/files/{DAY}/explained_variance.png"))
        assert responses[-1].status_code == 404
        responses.append(plugin.get("/files/..%2Fstages%2Fclean/report.json"))
        assert responses[-1].status_code == 404

        # A bucket that does not exist: a plain sentence, no stack trace, no connection detail.
        monkeypatch.setenv(*with_settings({}, fruits_backend="emr", fruits_bucket="fruits-no-such-bucket").popitem())
        broken = [plugin.get("/"), plugin.get(f"/reports/{DAY}"), plugin.get(f"/files/{DAY}/report.json")]
        assert [r.status_code for r in broken] == [503, 503, 503]
        assert "could not be read from storage" in broken[0].text
        responses += broken
    for resp in responses:
        exposed = resp.text + json.dumps(dict(resp.headers))
        for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY, SECRET, "Traceback", "botocore"):
            assert secret not in exposed, (resp.url, secret)


def test_the_plugin_loads_from_the_plugins_folder_with_its_views():
    from airflow.plugins_manager import _load_plugins_from_plugin_directory

    plugins, errors = _load_plugins_from_plugin_directory(str(REPO_ROOT / "plugins"))
    assert errors == {}
    assert [p.name for p in plugins] == ["fruits_report"]  # .airflowignore keeps the package's modules out
    (plugin_object,) = plugins
    assert [(a["url_prefix"], a["name"]) for a in plugin_object.fastapi_apps] == [("/fruits-report", "Fruits report")]
    views = {view["destination"]: view for view in plugin_object.external_views}
    assert views["dag_run"]["href"].endswith("/fruits-report/runs/{DAG_ID}/{RUN_ID}")
    assert views["dag_run"]["url_route"] == "fruits-report"
    assert views["nav"]["href"].endswith("/fruits-report/")


def test_unusable_settings_are_named_on_the_page(plugin, monkeypatch):
    monkeypatch.setenv(*with_settings({}, fruits_backend="gcs").popitem())
    resp = plugin.get("/")
    assert resp.status_code == 503
    assert "fruits_backend must be one of" in resp.text and "Traceback" not in resp.text


def fields(html: str) -> dict[str, str]:
    """The text of every element with a ``data-field`` attribute (nested markup flattened)."""

    class Fields(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: dict[str, str] = {}
            self.open: list[tuple[str, int]] = []  # (field, depth at which it opened)
            self.depth = 0

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.depth += 1
            field = dict(attrs).get("data-field")
            if field:
                self.open.append((field, self.depth))
                self.found[field] = ""

        def handle_endtag(self, tag: str) -> None:
            if self.open and self.open[-1][1] == self.depth:
                self.open.pop()
            self.depth -= 1

        def handle_data(self, data: str) -> None:
            for field, _ in self.open:
                self.found[field] += data.strip()

    parser = Fields()
    parser.feed(html)
    return parser.found


def rows(html: str, attribute: str) -> dict[str, str]:
    """``<tr {attribute}="key">``: key -> the first numeric cell."""
    return dict(re.findall(rf'<tr {attribute}="([^"]+)">.*?<td class="n">([^<]*)</td>', html, flags=re.S))
