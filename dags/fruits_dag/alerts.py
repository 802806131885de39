"""What reaches a person when a night goes wrong: messages on the ops SNS topic (setting ``fruits_alert_topic_arn``).

Three things publish there, each once:

* a task that **fails for good** (after its retries): the task's ``on_failure_callback``, the amazon provider's
  :class:`SnsNotifier`, run by the worker that ran the task;
* a run **not finished by its deadline** (``fruits_run_deadline`` after its scheduled start): an Airflow 3 deadline
  alert, whose callback (the same notifier, awaited) the triggerer runs; the run goes on;
* **too many nights without uploads** (``fruits_alert_after_empty_nights``): ``wait_for_uploads`` then fails
  instead of skipping the run (:class:`UploadsWait`), and the failure is told as above.

Without a topic nothing is published and the failures stay in Airflow's UI.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from typing import Any

from airflow.providers.amazon.aws.notifications.sns import SnsNotifier
from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, AirflowSkipException

from fruits_dag.settings import AWS_CONN_ID, Settings

# SNS subjects: at most 100 printable ASCII characters (e-mail subscriptions show them).
FAILURE_SUBJECT = "[fruits-pipeline] {{ ti.task_id }} failed ({{ ti.dag_id }}, {{ dag_run.logical_date or ti.run_id }})"
FAILURE_MESSAGE = """\
Task {{ ti.task_id }} of {{ ti.dag_id }} failed for good (try {{ ti.try_number }}).
Run: {{ ti.run_id }}
Error: {{ exception }}
Log: {{ ti.log_url }}
"""
# The scheduler hands the callback the run as the REST API shows it (its id is dag_run_id) and the deadline.
DEADLINE_SUBJECT = "[fruits-pipeline] {{ dag_run.dag_id }} missed its deadline"
DEADLINE_MESSAGE = """\
Run {{ dag_run.dag_run_id }} of {{ dag_run.dag_id }} had not ended by {{ deadline.deadline_time }}
(logical date {{ dag_run.logical_date }}, state {{ dag_run.state }}). It goes on; look at it in Airflow.
"""


def failure_callbacks(settings: Settings) -> list[Callable[[Any], None]]:
    """The tasks' ``on_failure_callback``: publish to the alert topic (none without a topic)."""
    topic = settings.alert_topic_arn
    if not topic:
        return []

    def tell(context: Any) -> None:
        # A notifier per call: it renders its templates in place, and one process may run several tasks.
        SnsNotifier(aws_conn_id=AWS_CONN_ID, target_arn=topic, subject=FAILURE_SUBJECT, message=FAILURE_MESSAGE)(
            context
        )

    return [tell]


def under_dags_test() -> bool:
    """Whether this process is ``airflow dags test``, which checks no deadline (it has no scheduler loop)."""
    return sys.argv[1:3] == ["dags", "test"]


def deadline_alert(settings: Settings, data_interval: dt.timedelta) -> DeadlineAlert | None:
    """The DAG's deadline: ``fruits_run_deadline`` seconds after a run's scheduled start, which is its logical date
    plus the schedule's ``data_interval`` (none without a topic).

    Counted from the logical date, not from when the run was queued: Airflow 3.3.2 cannot clear a run (HTTP 500,
    ``timedelta(seconds=<dict>)`` in ``_recalculate_dagrun_queued_at_deadlines``) once its DAG has a queued-at
    deadline, and clearing is how a night is retried. A manual run for a past date is thus past its deadline at once.
    None under ``airflow dags test`` either: Airflow 3.3.2's ``dags test`` of a DAG with a deadline exits 1 after
    a successful run (apache/airflow#73428), and nothing there would check the deadline anyway.
    """
    if not settings.alert_topic_arn or under_dags_test():
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
        interval=data_interval + dt.timedelta(seconds=settings.run_deadline),
        # The triggerer builds the notifier from these and awaits it (SnsNotifier.async_notify).
        callback=AsyncCallback(
            SnsNotifier,
            kwargs={
                "aws_conn_id": AWS_CONN_ID,
                "target_arn": settings.alert_topic_arn,
                "subject": DEADLINE_SUBJECT,
                "message": DEADLINE_MESSAGE,
            },
        ),
        name="fruits_run_deadline",
    )


class UploadsWait:
    """Mixin of the ``wait_for_uploads`` sensors: skip a night without uploads, unless it is one too many.

    A night's timeout normally skips the run (nothing to do). When the ``quiet_nights - 1`` nights before it had
    no uploads either (``earlier``: their upload folders, rendered from the plan), the upload path is more likely
    broken than the users all asleep: the task fails, naming the folders, and the failure alert goes out.
    The backend's sensor class supplies :meth:`has_files` and sets both attributes in its ``__init__`` (Airflow
    wraps only operator classes' own ``__init__``).
    """

    earlier: str | list[str]
    quiet_nights: int

    def has_files(self, folder: str) -> bool:
        """Whether ``folder`` (a prefix of the storage layout, ending in ``/``) holds any file."""
        raise NotImplementedError

    def execute(self, context: Any) -> Any:
        try:
            return super().execute(context)  # type: ignore[misc]
        except AirflowSensorTimeout:
            earlier = list(self.earlier or [])
            if len(earlier) + 1 >= self.quiet_nights and not any(self.has_files(f) for f in earlier):
                raise AirflowFailException(
                    f"No uploads for {self.quiet_nights} nights in a row ({', '.join(earlier)} and this night's "
                    "folder are empty): is the upload path broken? (setting fruits_alert_after_empty_nights)"
                ) from None
            raise AirflowSkipException("No uploads this night: nothing to do, the run is skipped") from None
