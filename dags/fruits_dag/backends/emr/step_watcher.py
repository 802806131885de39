"""Watching one EMR step (deferred to the triggerer) and saying why it failed."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from airflow.providers.amazon.aws.sensors.emr import EmrStepSensor
from airflow.providers.amazon.aws.triggers.emr import EmrStepSensorTrigger
from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout


class EmrStepWatcher(EmrStepSensor):
    """``EmrStepSensor`` that, when the step completes, returns its timeline (for :func:`marker_is_fresh`) and,
    when it fails or is cancelled, fails the task without retries, naming the step, EMR's failure reason and the
    logs.

    Deferrable (the default here): after a first look, the triggerer watches the step with the provider's
    ``EmrStepSensorTrigger`` (``DescribeStep`` every ``poke_interval``, for at most ``timeout`` seconds); when it
    fires, the task looks at the step once more and returns or fails as above. The provider's own deferrable path
    returns nothing and gives up after ``max_attempts`` pokes whatever ``timeout`` says, hence this override.
    With ``deferrable=False`` it pokes in ``mode`` (reschedule) instead.

    EMR does not always give ``FailureDetails`` (moto never does, nor a step cancelled after an earlier one
    failed); the message then says so and points at the step's logs under the cluster's ``LogUri``.
    """

    def __init__(self, *, deferrable: bool = True, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "deferrable": deferrable})

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            # EmrStepSensor.execute drops what poke returns; keep it (the step's timeline) as this task's XCom.
            return BaseSensorOperator.execute(self, context)
        done = self.poke(context)
        if done:
            return done.xcom_value
        attempts = max(1, math.ceil(self.timeout / self.poke_interval))
        self.defer(
            trigger=EmrStepSensorTrigger(
                job_flow_id=self.job_flow_id,
                step_id=self.step_id,
                waiter_delay=int(self.poke_interval),
                waiter_max_attempts=attempts,
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                verify=self.verify,
                botocore_config=self.botocore_config,
            ),
            method_name="execute_complete",
            # A margin over the trigger's own limit, so that it reports (and this task says which step) first.
            timeout=dt.timedelta(seconds=self.timeout + 60),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """The trigger fired: the step's state, read again, decides (the event only says why the watch ended)."""
        done = self.poke(context)
        if done:
            return done.xcom_value
        message = (event or {}).get("message") or "no message"
        if "max attempts" in message:
            raise AirflowSensorTimeout(
                f"EMR step {self.step_id} on cluster {self.job_flow_id} has not ended after {self.timeout:g} s "
                "(the sensor timeout)"
            )
        raise AirflowException(f"Watching EMR step {self.step_id} on cluster {self.job_flow_id} failed: {message}")

    def poke(self, context: Any) -> bool | PokeReturnValue:
        response = self.get_emr_response(context=context)
        step = response["Step"]
        status = step["Status"]
        state = status["State"]
        self.log.info("EMR step %r (%s) is %s", step.get("Name"), self.step_id, state)
        if state in self.target_states:
            timeline = status.get("Timeline", {})
            started = timeline.get("StartDateTime") or timeline.get("CreationDateTime")
            return PokeReturnValue(
                is_done=True,
                xcom_value={
                    "step_id": self.step_id,
                    "state": state,
                    "started": started.isoformat() if started else None,
                    "ended": timeline["EndDateTime"].isoformat() if timeline.get("EndDateTime") else None,
                },
            )
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
            parts.append(
                f"Reason: {details.get('Reason') or 'not given'}; message: {details.get('Message') or 'none'}"
                + (f"; log file: {details['LogFile']}." if details.get("LogFile") else ".")
            )
        elif state == "CANCELLED":
            parts.append("EMR cancelled it: a step before it failed, or the cluster stopped.")
        else:
            parts.append("EMR gave no failure details.")

        change = (status.get("StateChangeReason") or {}).get("Message")
        if change:
            parts.append(f"Step state change: {change}.")
        cluster_status = cluster.get("Status", {})
        reason = cluster_status.get("StateChangeReason") or {}
        parts.append(
            f"Cluster state: {cluster_status.get('State')}"
            + (f" ({reason.get('Code')}: {reason.get('Message')})" if reason.get("Message") else "")
            + "."
        )
        if log_uri:
            parts.append(
                f"Step logs (stderr has the job's error): {log_uri.rstrip('/')}/{self.job_flow_id}/steps/"
                f"{self.step_id}/ ; cluster logs: {log_uri}"
            )
        else:
            parts.append("The cluster has no LogUri: its step logs were not kept.")
        return " ".join(parts)
