"""What the report view knows about a DAG run: its state, run date and task states, and whether it has a report.

A report belongs to a run only when that run's ``report_step`` succeeded: ``reports/<date>/`` may hold the report
of an earlier run of the same date, which must not be shown as the report of a run that failed or was skipped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

REPORT_TASK = "report_step"
UPLOADS_TASK = "wait_for_uploads"
UNFINISHED = {"queued", "running"}
FAILED_TASK_STATES = {"failed", "upstream_failed"}


@dataclass(frozen=True)
class RunStatus:
    """One run of the DAG as the metadata database sees it."""

    dag_id: str
    run_id: str
    state: str
    run_date: dt.date
    task_states: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def has_report(self) -> bool:
        """Whether this run wrote ``reports/<run date>/``."""
        return self.task_states.get(REPORT_TASK) == "success"

    def why_no_report(self) -> str:
        """A plain sentence on why the run has no report (meaningful when :attr:`has_report` is False)."""
        day = self.run_date.isoformat()
        report_state = self.task_states.get(REPORT_TASK) or "not started"
        if self.state in UNFINISHED:
            return (
                f"This run is still {self.state} ({REPORT_TASK}: {report_state}). Its report for {day} appears "
                f"here when {REPORT_TASK} has succeeded: reload the page then."
            )
        if self.task_states.get(UPLOADS_TASK) == "skipped":
            return (
                f"This run was skipped: no uploads for {day} arrived before the sensor timeout, so no job ran "
                "and there is no report."
            )
        failed = sorted(task for task, state in self.task_states.items() if state in FAILED_TASK_STATES)
        if self.state == "failed" or failed:
            where = f" (failed: {', '.join(failed)})" if failed else ""
            return f"This run failed before its report was written{where}. See the task logs."
        return f"This run ended {self.state} without a report ({REPORT_TASK}: {report_state})."


def lookup_run(session: Session, dag_id: str, run_id: str) -> RunStatus | None:
    """The run ``run_id`` of ``dag_id`` from the metadata database, or None when there is no such run."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    from fruits_report.pipeline import run_date_of

    run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if run is None:
        return None
    rows = session.execute(
        select(TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.map_index == -1
        )
    )
    return RunStatus(
        dag_id=dag_id,
        run_id=run_id,
        state=_text(run.state),
        run_date=run_date_of(run.logical_date, run.run_after),
        task_states={task_id: _text(state) if state is not None else None for task_id, state in rows},
    )


def _text(state: object) -> str:
    """A state enum (or plain string) as its value."""
    return str(getattr(state, "value", state))
