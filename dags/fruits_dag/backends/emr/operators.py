"""The cluster's tasks: create it once per run, add the run's steps once, terminate every cluster of the run."""

from __future__ import annotations

import ast
from typing import Any

from airflow.providers.amazon.aws.links.emr import EmrClusterLink, EmrLogsLink, get_log_uri
from airflow.providers.amazon.aws.operators.emr import (
    EmrAddStepsOperator,
    EmrCreateJobFlowOperator,
    EmrTerminateJobFlowOperator,
)
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from fruits_dag.backends.emr.run_clusters import environment_of, find_run_clusters, terminate_clusters

CLUSTER_ID = "{{ ti.xcom_pull(task_ids='create_cluster') }}"


class EmrCreateRunCluster(EmrCreateJobFlowOperator):
    """``EmrCreateJobFlowOperator`` that creates at most one cluster per run and leaves none behind when it fails.

    * A try first looks for the run's active clusters (by tags). One that already ran steps belongs to an earlier
      pass of the run (the run was cleared): it is terminated. A fresh one (no steps yet: an earlier try failed
      after ``RunJobFlow``) is reused instead of creating another.
    * botocore resends a ``RunJobFlow`` answered with a 5xx; when AWS had carried out the first call, that makes
      two clusters. After creating, the run's clusters are listed again: the oldest is kept, the others
      terminated (and the teardown ends every cluster of the run anyway).
    * A try that fails leaves the run's clusters to the retry that will reuse them; the last try (no retry to
      come) terminates them before failing, since the teardown does not run when its setup failed.
    * Killed (the run is marked failed or cleared while it creates), it terminates the run's clusters.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._job_flow_id: str | None = None  # the provider sets it only once RunJobFlow answered
        self._run: tuple[str, str, str] | None = None

    def execute(self, context: Any) -> str:
        ti = context["ti"]
        self._run = (ti.dag_id, ti.run_id, environment_of(self.job_flow_overrides))
        try:
            return self._find_or_create(context)
        except BaseException:
            if ti.max_tries and ti.try_number <= ti.max_tries:
                self.log.warning("Try %s failed: the run's cluster, if any, is left for the retry", ti.try_number)
            else:
                self._terminate_run_clusters("the last try of create_cluster failed", self._job_flow_id)
            raise

    def _find_or_create(self, context: Any) -> str:
        emr = self.hook.conn
        dag_id, run_id, environment = self._run or ("", "", "")
        existing = find_run_clusters(emr, dag_id, run_id, environment)
        used = [c["Id"] for c in existing if emr.list_steps(ClusterId=c["Id"]).get("Steps")]
        terminate_clusters(emr, used, self.log, "it ran steps of an earlier pass of this run (the run was cleared)")
        fresh = [c for c in existing if c["Id"] not in used]
        if fresh:
            self.log.info("Reusing EMR cluster %s, made for this run by an earlier try", fresh[0]["Id"])
        else:
            created = super().execute(context)
            if created is None:
                raise AirflowException("RunJobFlow returned no cluster id")
            fresh = [c for c in find_run_clusters(emr, dag_id, run_id, environment) if c["Id"] not in used]
            if created not in {c["Id"] for c in fresh}:  # not listed yet: keep it in the race for oldest
                fresh = sorted(
                    [*fresh, emr.describe_cluster(ClusterId=created)["Cluster"]],
                    key=lambda c: (c["Status"]["Timeline"]["CreationDateTime"], c["Id"]),
                )
        keep = fresh[0]
        self._job_flow_id = keep["Id"]
        terminate_clusters(
            emr, [c["Id"] for c in fresh[1:]], self.log, f"one cluster per run: {keep['Id']} is the run's cluster"
        )
        EmrClusterLink.persist(
            context=context,
            operator=self,
            region_name=self.hook.conn_region_name,
            aws_partition=self.hook.conn_partition,
            job_flow_id=keep["Id"],
        )
        EmrLogsLink.persist(
            context=context,
            operator=self,
            region_name=self.hook.conn_region_name,
            aws_partition=self.hook.conn_partition,
            job_flow_id=keep["Id"],
            log_uri=get_log_uri(cluster={"Cluster": keep}),
        )
        return keep["Id"]

    def _terminate_run_clusters(self, why: str, *also: str | None) -> None:
        """Terminate ``also`` and every active cluster of the run; the known ids even if the lookup fails."""
        emr = self.hook.conn
        try:
            found = [c["Id"] for c in find_run_clusters(emr, *self._run)] if self._run else []
        except Exception:
            self.log.exception("Could not list the run's clusters; terminating the known ones only")
            found = []
        try:
            terminate_clusters(emr, [*also, *found], self.log, why)
        except Exception:
            self.log.exception("Could not terminate the run's clusters: their idle timeout will end them")

    def on_kill(self) -> None:
        self._terminate_run_clusters("create_cluster was killed (run marked failed or cleared)", self._job_flow_id)


class EmrAddRunSteps(EmrAddStepsOperator):
    """``EmrAddStepsOperator`` that adds the run's steps to its cluster once.

    ``AddJobFlowSteps`` has no idempotency token: a call that AWS carried out but whose answer was lost, sent again
    by botocore or by a retry of this task, would add every job a second time (the run's cluster is fresh, so any
    step on it was added by this task). botocore does not resend it here; a retry first lists the cluster's steps
    and, when they are the plan's steps, returns their ids instead of adding them again.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(botocore_config={"retries": {"mode": "standard", "total_max_attempts": 1}}, **kwargs)

    def execute(self, context: Any) -> list[str]:
        steps = ast.literal_eval(self.steps) if isinstance(self.steps, str) else self.steps
        wanted = [step["Name"] for step in steps]
        pages = self.hook.conn.get_paginator("list_steps").paginate(ClusterId=self.job_flow_id)
        existing = [step for page in pages for step in page["Steps"]][::-1]  # ListSteps: newest first
        if not existing:
            return super().execute(context)
        if [step["Name"] for step in existing] == wanted:
            self.log.info(
                "The steps are already on cluster %s (an earlier try added them): reusing them", self.job_flow_id
            )
            return [step["Id"] for step in existing]
        raise AirflowFailException(
            f"EMR cluster {self.job_flow_id} already has steps {[s['Name'] for s in existing]}, not this run's "
            f"{wanted}: clear the whole run (create_cluster then makes a new cluster)"
        )


class EmrTerminateRunClusters(EmrTerminateJobFlowOperator):
    """``EmrTerminateJobFlowOperator`` that terminates ``job_flow_id`` and every other active cluster of the run.

    ``job_flow_id`` (``create_cluster``'s XCom) may be missing or not the only one: the run's clusters are also
    found by their tags (``environment``: the deployment's, from the run's plan), so a duplicate left by a resent
    ``RunJobFlow`` ends with the run too.
    """

    template_fields = (*EmrTerminateJobFlowOperator.template_fields, "environment")

    def __init__(self, *, environment: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.environment = environment

    def execute(self, context: Any) -> None:
        ti = context["ti"]
        emr = self.hook.conn
        known = [self.job_flow_id] if isinstance(self.job_flow_id, str) and self.job_flow_id.startswith("j-") else []
        try:
            found = [c["Id"] for c in find_run_clusters(emr, ti.dag_id, ti.run_id, self.environment)]
        except Exception:
            # Still end the cluster we know of; the retry looks for the others again.
            terminate_clusters(emr, known, self.log, "the run is over")
            raise
        ids = list(dict.fromkeys([*known, *found]))
        if not ids:
            self.log.info("No active cluster of this run: nothing to terminate")
            return
        EmrClusterLink.persist(
            context=context,
            operator=self,
            region_name=self.hook.conn_region_name,
            aws_partition=self.hook.conn_partition,
            job_flow_id=ids[0],
        )
        terminate_clusters(emr, ids, self.log, "the run is over")
