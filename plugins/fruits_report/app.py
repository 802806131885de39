"""The "Fruits report" web app, mounted by the plugin under ``/fruits-report`` in Airflow's API server.

    GET /                          recent reports (the navigation entry)
    GET /runs/{dag_id}/{run_id}    one DAG run's report, or why it has none (the run page's tab)
    GET /reports/{YYYY-MM-DD}      the report of one run date
    GET /files/{YYYY-MM-DD}/{name} report.json or one of the three plots

Every route depends on :func:`fruits_report.auth.require_run_reader` (set on the app, so no route can miss it);
OpenAPI and the docs pages are off, since FastAPI would serve them outside the app's dependencies. Files are
looked up by date and by a fixed list of names, never by a path from the request. Errors from storage are logged
and answered with a generic sentence, so no connection detail reaches the browser.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from fruits_report.auth import require_run_reader
from fruits_report.pipeline import DAG_ID, BadSettings, aws_conn_id, layout, load_settings
from fruits_report.runs import RunStatus, lookup_run

if TYPE_CHECKING:
    from fruits_dag.plan import Layout

from fruits_report.store import (
    MEDIA_TYPES,
    PLOTS,
    REPORT_FILES,
    LocalReportStore,
    NotAReportFile,
    ReportStore,
    S3ReportStore,
    check_name,
    parse_day,
    read_report,
)

log = logging.getLogger(__name__)

URL_PREFIX = "/fruits-report"
RECENT_REPORTS = 30
SHOWN_COMPONENTS = 10
# report.py's keys shown in their own places; any other key lands in "More", so new fields are never hidden.
KNOWN_KEYS = {
    "run_date", "images_read", "kept", "rejected", "rejected_by_reason", "duplicates", "kept_per_label",
    "final_rows", "rows_per_label", "k", "pca_model", "pca_model_mode", "variance_target", "explained_variance",
    "cumulative_explained_variance", "plots",
}  # fmt: skip
SUMMARY = (
    ("images_read", "images read"),
    ("kept", "kept"),
    ("rejected", "rejected"),
    ("duplicates", "duplicates (among the rejected)"),
    ("final_rows", "rows in the final dataset (all dates)"),
)
# Fields of newer reports (PCA versions, drift, upload days), shown when present.
IMAGE_EXTRAS = (
    ("upload_days", "upload days covered"),
    ("skipped_already_processed", "skipped (processed by an earlier run)"),
)
PCA_EXTRAS = (
    ("pca_version", "PCA version"),
    ("pca_refitted", "refitted by this run"),
    ("pca_refit_reason", "refit reason"),
    ("pca_drift", "drift"),
    ("pca_rows_projected", "rows projected"),
)
# Every key shown in a section of its own; the rest are listed as they are.
SHOWN_KEYS = KNOWN_KEYS | {key for key, _ in IMAGE_EXTRAS + PCA_EXTRAS}
SECURITY_HEADERS = {
    # Only the Airflow UI (same origin) may frame the pages; no script runs in them, images come from here.
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'self'; "
        "base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class StorageUnavailable(Exception):
    """The settings or the storage could not be read; the message is safe to show."""


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _pct(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}%}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _count(value)


TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,  # report values (labels, reasons, paths) are data, never markup
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters.update(count=_count, pct=_pct, num=_num)


def store_for_settings() -> ReportStore:
    """The report store of the configured backend (FastAPI dependency, read on each request: settings change)."""
    try:
        settings = load_settings()
    except BadSettings as exc:
        # These name the Variable and its bad value, never a credential.
        raise StorageUnavailable(f"The pipeline's settings are not usable: {exc}") from None
    except Exception:
        log.exception("fruits report: cannot read the pipeline settings")
        raise StorageUnavailable("The pipeline's settings cannot be read (the API server's log says why).") from None
    if settings.backend == "emr":
        return S3ReportStore(bucket=settings.bucket or "", conn_id=aws_conn_id())
    return LocalReportStore(settings.local_root)


def run_status(dag_id: str, run_id: str) -> RunStatus | None:
    """The run from the metadata database (FastAPI dependency); None for other DAGs' runs and unknown runs."""
    if dag_id != DAG_ID:
        return None
    from airflow.utils.session import create_session

    with create_session(scoped=False) as session:
        return lookup_run(session, dag_id, run_id)


StoreDep = Annotated[ReportStore, Depends(store_for_settings)]
RunDep = Annotated[RunStatus | None, Depends(run_status)]


def _guarded(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except NotAReportFile:
        raise
    except Exception:
        log.exception("fruits report: cannot read %s", what)
        raise StorageUnavailable(
            f"The {what} could not be read from storage (the API server's log says why)."
        ) from None


def _base(request: Request) -> str:
    # The mount point as the browser sees it (root_path includes the prefix and any base path of the server).
    return str(request.scope.get("root_path", "")).rstrip("/")


def _page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(template).render(**context), status_code=status_code)


def _report_context(request: Request, store: ReportStore, day: dt.date, report: dict[str, Any] | None) -> dict:
    base = _base(request)
    paths = layout(store.root)
    partition = f"ingest_date={day.isoformat()}"
    context: dict[str, Any] = {
        "base": base,
        "day": day.isoformat(),
        "report": report,
        "report_uri": f"{paths.report(day)}/report.json",
        "outputs": [
            ("report folder", f"{paths.report(day)}/"),
            ("clean images of the run date", f"{paths.stage('clean')}/{partition}/"),
            ("rejected files of the run date", f"{paths.stage('rejected')}/{partition}/"),
            ("embeddings (all dates)", f"{paths.stage('embed')}/"),
            ("final features (PCA, all dates)", _pca_output(paths, report)),
            ("PCA model", (report or {}).get("pca_model") or f"{paths.pca_model()}/"),
        ],
    }
    if report is None:
        return context
    cumulative = [float(v) for v in report.get("cumulative_explained_variance") or []]
    explained = [float(v) for v in report.get("explained_variance") or []]
    context.update(
        summary=[(key, label, report[key]) for key, label in SUMMARY if key in report],
        image_extras=[(key, label, report[key]) for key, label in IMAGE_EXTRAS if key in report],
        pca_extras=[(key, label, report[key]) for key, label in PCA_EXTRAS if key in report],
        others=[(key, value) for key, value in report.items() if key not in SHOWN_KEYS],
        variance=cumulative[-1] if cumulative else None,
        components=list(zip(range(1, SHOWN_COMPONENTS + 1), explained, cumulative, strict=False)),
        more_components=max(0, len(cumulative) - SHOWN_COMPONENTS),
        kept_per_label=report.get("kept_per_label") or {},
        plots=[(name, _file_href(base, day, name)) for name in PLOTS],
        files=[(name, _file_href(base, day, name)) for name in REPORT_FILES],
    )
    return context


def _pca_output(paths: Layout, report: dict[str, Any] | None) -> str:
    # Versioned reports: the product reads the current version's partition.
    version = (report or {}).get("pca_version")
    return f"{paths.stage('pca')}/" + (f"pca_version={version}/" if version else "")


def _file_href(base: str, day: dt.date, name: str) -> str:
    return f"{base}/files/{day.isoformat()}/{quote(name)}"


def create_app() -> FastAPI:
    """A new instance of the app (the plugin mounts one; tests make their own)."""
    app = FastAPI(
        title="Fruits report",
        dependencies=[Depends(require_run_reader)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(StorageUnavailable)
    async def storage_unavailable(request: Request, exc: StorageUnavailable) -> HTMLResponse:
        return _page(
            "message.html",
            status.HTTP_503_SERVICE_UNAVAILABLE,
            title="Fruits report unavailable",
            message=str(exc),
            base=_base(request),
        )

    @app.exception_handler(NotAReportFile)
    async def not_a_report_file(request: Request, exc: NotAReportFile) -> Response:
        # Same answer as a missing file: the response says nothing about what was tried.
        return JSONResponse({"detail": "Not Found"}, status.HTTP_404_NOT_FOUND)

    @app.get("/", response_class=HTMLResponse, name="index")
    def index(request: Request, store: StoreDep) -> HTMLResponse:
        """The most recent run dates with their headline numbers."""
        days = _guarded("list of reports", store.days)
        rows = []
        for day in days[:RECENT_REPORTS]:
            try:
                report = _guarded(f"report of {day}", lambda day=day: read_report(store, day))
            except StorageUnavailable:
                report = None
            cumulative = (report or {}).get("cumulative_explained_variance") or []
            rows.append({"day": day.isoformat(), "report": report, "variance": cumulative[-1] if cumulative else None})
        return _page(
            "index.html",
            title="Fruits reports",
            base=_base(request),
            rows=rows,
            root=store.root,
            backend="emr" if isinstance(store, S3ReportStore) else "local",
            shown=len(rows),
            total=len(days),
        )

    @app.get("/reports/{day}", response_class=HTMLResponse, name="report_of_day")
    def report_of_day(request: Request, day: str, store: StoreDep) -> HTMLResponse:
        """The report in ``reports/<day>/``, whichever run wrote it."""
        date = parse_day(day)
        report = _guarded(f"report of {day}", lambda: read_report(store, date))
        message = None if report else f"There is no report for {day}: no run of that date has written one (yet)."
        return _page(
            "report.html",
            200 if report else 404,
            title=f"Fruits report of {day}",
            run=None,
            message=message,
            other_report=False,
            **_report_context(request, store, date, report),
        )

    @app.get("/runs/{dag_id}/{run_id:path}", response_class=HTMLResponse, name="report_of_run")
    def report_of_run(request: Request, dag_id: str, run_id: str, run: RunDep, store: StoreDep) -> HTMLResponse:
        """The report of one DAG run, or a sentence saying why it has none."""
        base = _base(request)
        if dag_id != DAG_ID:
            return _page(
                "message.html",
                title="Fruits report",
                base=base,
                message=f"The Fruits report covers the runs of {DAG_ID} only, not of {dag_id}.",
            )
        if run is None:
            return _page(
                "message.html",
                status.HTTP_404_NOT_FOUND,
                title="Fruits report",
                base=base,
                message=f"There is no run {run_id!r} of {DAG_ID}.",
            )
        day = run.run_date
        title = f"Fruits report of {day}"
        if run.has_report:
            report = _guarded(f"report of {day}", lambda: read_report(store, day))
            message = (
                None
                if report
                else (
                    f"The run's report step succeeded, but reports/{day}/report.json is not in storage any more "
                    "(deleted, or the storage settings changed)."
                )
            )
            return _page(
                "report.html",
                title=title,
                run=run,
                message=message,
                other_report=False,
                **_report_context(request, store, day, report),
            )
        other = _guarded(f"report of {day}", lambda: store.read(day, "report.json")) is not None
        context = _report_context(request, store, day, None)
        return _page("report.html", title=title, run=run, message=run.why_no_report(), other_report=other, **context)

    @app.get("/files/{day}/{name}", name="report_file")
    def report_file(day: str, name: str, store: StoreDep) -> Response:
        """``report.json`` or a plot of ``reports/<day>/``; any other name or date is 404 before storage is read."""
        date, name = parse_day(day), check_name(name)
        data = _guarded(f"{name} of {day}", lambda: store.read(date, name))
        if data is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
        return Response(content=data, media_type=MEDIA_TYPES[Path(name).suffix])

    return app
