"""Access control of the report endpoints.

A FastAPI app mounted by a plugin is not covered by Airflow's authentication: every endpoint of this plugin depends
on :func:`require_run_reader` (set once, on the app). Authentication is Airflow's own ``get_user`` dependency: the
JWT of ``Authorization: Bearer`` (REST clients) or else of the UI's ``_token`` cookie, validated by the configured
auth manager (signature, expiry, audience). Authorization asks the same auth manager whether that user may read the
runs of ``fruits_pipeline``, as the REST API does for ``GET /api/v2/dags/fruits_pipeline/dagRuns``.
"""

from __future__ import annotations

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.configuration import conf
from fastapi import HTTPException, status

from fruits_report.pipeline import DAG_ID


def _team_of(dag_id: str) -> str | None:
    # Only multi-team deployments attach DAGs to teams; elsewhere this is a database query for nothing.
    if not conf.getboolean("core", "multi_team", fallback=False):
        return None
    from airflow.models.dag import DagModel

    return DagModel.get_team_name(dag_id)


def require_run_reader(user: GetUserDep) -> BaseUser:
    """The authenticated user, when allowed to read the runs of ``fruits_pipeline``; else HTTP 401 or 403."""
    allowed = get_auth_manager().is_authorized_dag(
        method="GET",
        access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=DAG_ID, team_name=_team_of(DAG_ID)),
        user=user,
    )
    if not allowed:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Not allowed to read the runs of " + DAG_ID)
    return user
