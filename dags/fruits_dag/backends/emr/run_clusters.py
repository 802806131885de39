"""Finding a run's clusters by their tags, and ending them: only the pipeline's own, of its own environment."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from airflow.sdk.exceptions import AirflowException
from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

# The states of a cluster that is (or will be) up and billed; ListClusters' filter.
ACTIVE_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
DAG_ID_TAG = "airflow:dag_id"
RUN_ID_TAG = "airflow:run_id"
ENVIRONMENT_TAG = "fruits:environment"  # the deployment (setting fruits_environment)
# Every cluster of the pipeline is named so: the look-up describes only those, never another team's clusters.
CLUSTER_NAME_PREFIX = "fruits-pipeline-"
# What DescribeCluster answers for a cluster this role may not describe (the Airflow policy allows project=fruits).
ACCESS_DENIED = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"})


def run_tags(dag_id: str, run_id: str, environment: str) -> dict[str, str]:
    """The tags that mark a cluster as the run's (:func:`cluster_config` sets them; a tag value has 256 chars).

    The environment is part of it: two deployments share run ids (``scheduled__<date>``)."""
    return {DAG_ID_TAG: dag_id, RUN_ID_TAG: run_id[:256], ENVIRONMENT_TAG: environment}


def find_run_clusters(emr: Any, dag_id: str, run_id: str, environment: str) -> list[dict[str, Any]]:
    """The run's active clusters (``DescribeCluster``'s ``Cluster``), oldest first (then by id: deterministic).

    Only the pipeline's clusters (by name) are described, and one this role may not describe (another team's,
    named alike) is skipped with a warning: the account's other clusters never break a night."""
    wanted = run_tags(dag_id, run_id, environment)
    found = []
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=list(ACTIVE_STATES)):
        for summary in page["Clusters"]:
            if not summary.get("Name", "").startswith(CLUSTER_NAME_PREFIX):
                continue
            # ListClusters gives no tags: DescribeCluster does.
            try:
                cluster = emr.describe_cluster(ClusterId=summary["Id"])["Cluster"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ACCESS_DENIED:
                    raise
                log.warning("EMR cluster %s (%s) may not be described: not this run's", summary["Id"], summary["Name"])
                continue
            tags = {t["Key"]: t["Value"] for t in cluster.get("Tags", [])}
            if cluster["Status"]["State"] in ACTIVE_STATES and all(tags.get(k) == v for k, v in wanted.items()):
                found.append(cluster)
    return sorted(found, key=lambda c: (c["Status"]["Timeline"]["CreationDateTime"], c["Id"]))


def terminate_clusters(emr: Any, cluster_ids: Iterable[str], log: Any, why: str) -> None:
    """``TerminateJobFlows`` on ``cluster_ids`` (deduplicated, in order; nothing to do when empty)."""
    ids = list(dict.fromkeys(i for i in cluster_ids if i))
    if ids:
        log.warning("Terminating EMR cluster(s) %s: %s", ", ".join(ids), why)
        emr.terminate_job_flows(JobFlowIds=ids)


def environment_of(job_flow_overrides: Any) -> str:
    """The environment tag of a cluster request (``cluster_config``'s); a request without one is an error."""
    tags = {t["Key"]: t["Value"] for t in (job_flow_overrides or {}).get("Tags", [])}
    if not tags.get(ENVIRONMENT_TAG):
        raise AirflowException(f"the cluster request has no {ENVIRONMENT_TAG} tag: refusing to look for clusters")
    return tags[ENVIRONMENT_TAG]
