"""Sensors of the fruits pipeline: the local twin of ``S3KeySensor``, the freshness check of ``_SUCCESS`` markers,
and an ``EmrStepSensor`` whose failure says which step failed, why, and where its logs are.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.sensors.emr import EmrStepSensor
from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

CheckFn = Callable[..., bool]


def marker_is_fresh(step_task_id: str) -> CheckFn:
    """``check_fn`` for a ``_SUCCESS`` sensor: the marker must not be older than the step that writes it.

    Some markers outlive a run (``stages/embed/_SUCCESS`` is rewritten by every run), so existing is not enough:
    the step task (``step_task_id``) returns ``{"started": ISO time, ...}`` and every marker found must have been
    modified at or after it. Storage clocks give whole seconds (S3's LastModified), so the comparison does too.
    Works for ``S3KeySensor`` and :class:`LocalKeySensor` alike: both pass ``LastModified`` as an aware datetime.
    """

    def check(files: list[dict[str, Any]], **context: Any) -> bool:
        step = context["ti"].xcom_pull(task_ids=step_task_id) or {}
        if not step.get("started"):
            log.warning("Task %s left no start time: cannot tell a fresh marker from a stale one", step_task_id)
            return False
        started = dt.datetime.fromisoformat(step["started"]).replace(microsecond=0)
        stale = [f for f in files if f.get("LastModified") is None or f["LastModified"] < started]
        for f in stale:
            # S3KeySensor gives no Key for an exact key; it logged the key it pokes just before.
            log.info("Marker %s was last modified at %s, before the step started at %s: an earlier run's, waiting "
                     "for this step's", f.get("Key") or "(the key above)", f.get("LastModified"), started.isoformat())
        return not stale

    return check


class LocalKeySensor(BaseSensorOperator):
    """Wait for files in a local folder exactly the way ``S3KeySensor`` waits for keys.

    ``path`` is one path or a list (all must match); with ``wildcard_match`` each is an ``fnmatch`` pattern over
    full paths (``*`` also crosses ``/``, as with S3 keys). ``check_fn(files, **context)`` receives, per path, the
    matches as ``{"Key", "Size", "LastModified"}`` dicts, the same shape the S3 sensor gives it.
    """

    template_fields: Sequence[str] = ("path",)
    ui_color = "#7fbf7f"

    def __init__(self, *, path: str | list[str], wildcard_match: bool = False,
                 check_fn: CheckFn | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.wildcard_match = wildcard_match
        self.check_fn = check_fn

    def poke(self, context: Any) -> bool:
        paths = [self.path] if isinstance(self.path, str) else list(self.path)
        return all(self._check(p, context) for p in paths)

    def _check(self, pattern: str, context: Any) -> bool:
        self.log.info("Poking for %s", pattern)
        if self.wildcard_match:
            matches = (p for p in _walk(_listing_root(pattern)) if fnmatch.fnmatchcase(p, pattern))
        else:
            matches = iter([pattern] if os.path.isfile(pattern) else [])
        if self.check_fn is None:  # existence only: stop at the first match, stat nothing
            return next(matches, None) is not None
        files = [_metadata(p) for p in matches]
        return bool(files) and self.check_fn(files, **context)


def _listing_root(pattern: str) -> str:
    """The folder to list for a pattern: the part before its first wildcard, up to a '/'."""
    prefix = re.split(r"[\[*?]", pattern, maxsplit=1)[0]
    return prefix if prefix.endswith("/") else os.path.dirname(prefix)


def _walk(root: str) -> Iterator[str]:
    # followlinks: `make run` links a DATA folder into datasets/ rather than copying it.
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            yield os.path.join(folder, name)


def _metadata(path: str) -> dict[str, Any]:
    stat = Path(path).stat()
    return {"Key": path, "Size": stat.st_size,
            "LastModified": dt.datetime.fromtimestamp(stat.st_mtime, tz=dt.timezone.utc)}


class EmrStepWatcher(EmrStepSensor):
    """``EmrStepSensor`` that, when the step completes, returns its timeline (for :func:`marker_is_fresh`) and,
    when it fails or is cancelled, fails the task without retries, naming the step, EMR's failure reason and the
    logs.

    EMR does not always give ``FailureDetails`` (moto never does, nor a step cancelled after an earlier one
    failed); the message then says so and points at the step's logs under the cluster's ``LogUri``.
    """

    def __init__(self, **kwargs: Any) -> None:
        # Poke or reschedule mode only: the deferrable path of EmrStepSensor has no timeline to return.
        super().__init__(**{**kwargs, "deferrable": False})

    def execute(self, context: Any) -> Any:
        # EmrStepSensor.execute drops what poke returns; keep it (the step's timeline) as this task's XCom.
        return BaseSensorOperator.execute(self, context)

    def poke(self, context: Any) -> bool | PokeReturnValue:
        response = self.get_emr_response(context=context)
        step = response["Step"]
        status = step["Status"]
        state = status["State"]
        self.log.info("EMR step %r (%s) is %s", step.get("Name"), self.step_id, state)
        if state in self.target_states:
            timeline = status.get("Timeline", {})
            started = timeline.get("StartDateTime") or timeline.get("CreationDateTime")
            return PokeReturnValue(is_done=True, xcom_value={
                "step_id": self.step_id,
                "state": state,
                "started": started.isoformat() if started else None,
                "ended": timeline["EndDateTime"].isoformat() if timeline.get("EndDateTime") else None,
            })
        if state in self.failed_states:
            # Retrying this sensor cannot re-run the step: fail now, with everything needed to investigate.
            raise AirflowFailException(self.describe_failure(step))
        return False

    def describe_failure(self, step: dict[str, Any]) -> str:
        """One paragraph: which step, what EMR says, the cluster's state and where the logs are."""
        status = step["Status"]
        state = status["State"]
        cluster = self.hook.conn.describe_cluster(ClusterId=self.job_flow_id)["Cluster"]
        log_uri = (cluster.get("LogUri") or "").replace("s3n://", "s3://")
        parts = [f"EMR step {step.get('Name')!r} ({self.step_id}) on cluster {self.job_flow_id} ended {state}."]

        details = status.get("FailureDetails") or {}
        if details:
            parts.append(f"Reason: {details.get('Reason') or 'not given'}; message: {details.get('Message') or 'none'}"
                         + (f"; log file: {details['LogFile']}." if details.get("LogFile") else "."))
        elif state == "CANCELLED":
            parts.append("EMR cancelled it: a step before it failed, or the cluster stopped.")
        else:
            parts.append("EMR gave no failure details.")

        change = (status.get("StateChangeReason") or {}).get("Message")
        if change:
            parts.append(f"Step state change: {change}.")
        cluster_status = cluster.get("Status", {})
        reason = cluster_status.get("StateChangeReason") or {}
        parts.append(f"Cluster state: {cluster_status.get('State')}"
                     + (f" ({reason.get('Code')}: {reason.get('Message')})" if reason.get("Message") else "") + ".")
        if log_uri:
            parts.append(f"Step logs (stderr has the job's error): {log_uri.rstrip('/')}/{self.job_flow_id}/steps/"
                         f"{self.step_id}/ ; cluster logs: {log_uri}")
        else:
            parts.append("The cluster has no LogUri: its step logs were not kept.")
        return " ".join(parts)
