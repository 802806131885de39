"""The EMR backend: the jobs run as steps of a transient Amazon EMR cluster created for the run; storage in S3.

Its tasks: ``create_cluster`` (:class:`EmrCreateRunCluster`: the cluster request of :func:`cluster_config`, created
at most once per run), ``add_steps`` (one ``command-runner.jar spark-submit`` step per job), one deferrable
:class:`EmrStepWatcher` per job, ``S3KeySensor``s (reschedule mode) on the uploads and the ``_SUCCESS`` markers, and
``terminate_cluster`` (:class:`EmrTerminateRunClusters`) as the teardown of ``create_cluster``.
The code bundle goes to ``s3://<bucket>/code/<digest>/`` through the ``aws_default`` connection, and what the nodes
need besides it (the ONNX export, the wheelhouse of each architecture: :mod:`fruits_dag.artifacts`) to
``s3://<bucket>/code/artifacts/``: the bootstrap downloads nothing from the internet and installs no TensorFlow.

A run's clusters are found by their tags (``airflow:dag_id``, ``airflow:run_id``), not only by the XCom of
``create_cluster``: that is how a retry reuses the cluster an earlier try made, how the duplicate left by a resent
``RunJobFlow`` is found, and how the teardown ends every cluster of the run. ``AutoTerminationPolicy`` (idle
timeout) stays the last safety net when no task gets to run.
"""

from __future__ import annotations

import ast
import datetime as dt
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.links.emr import EmrClusterLink, EmrLogsLink, get_log_uri
from airflow.providers.amazon.aws.operators.emr import (
    EmrAddStepsOperator,
    EmrCreateJobFlowOperator,
    EmrTerminateJobFlowOperator,
)
from airflow.providers.amazon.aws.sensors.emr import EmrStepSensor
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.providers.amazon.aws.triggers.emr import EmrStepSensorTrigger
from airflow.sdk import BaseOperator, BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout
from botocore.exceptions import ClientError

from fruits_dag import artifacts, backends
from fruits_dag.bundle import REQUIREMENTS, Bundle, BundleFile, build_bundle, stage_file
from fruits_dag.params import RunParams
from fruits_dag.plan import Layout, PlanError, RunPlan
from fruits_dag.settings import AWS_CONN_ID, Settings

log = logging.getLogger(__name__)

# A failed step cancels the later ones and leaves the cluster up for the teardown task (and its logs intact).
ACTION_ON_FAILURE = "CANCEL_AND_WAIT"
PYTHON_ON_NODES = "/usr/bin/python3.11"  # installed by emr_bootstrap.sh; requirements.txt is tested on 3.11
CLUSTER_ID = "{{ ti.xcom_pull(task_ids='create_cluster') }}"
# The states of a cluster that is (or will be) up and billed; ListClusters' filter.
ACTIVE_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
DAG_ID_TAG = "airflow:dag_id"
RUN_ID_TAG = "airflow:run_id"
ENVIRONMENT_TAG = "fruits:environment"  # the deployment (Variable fruits_environment)
# Every cluster of the pipeline is named so: the look-up describes only those, never another team's clusters.
CLUSTER_NAME_PREFIX = "fruits-pipeline-"
# What DescribeCluster answers for a cluster this role may not describe (the Airflow policy allows project=fruits).
ACCESS_DENIED = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"})
# Spot: wait this long for Spot capacity at launch, then take on-demand instead (EMR's SWITCH_TO_ON_DEMAND).
SPOT_TIMEOUT_MINUTES = 10
# A staged file older than this is copied onto itself (a new LastModified), so that the bucket's expiry of code/
# (CodeRetentionDays, at least REFRESH_AFTER_DAYS + 5 in infra/template.yaml) never removes one still in use.
REFRESH_AFTER_DAYS = 30


class EmrBackend(backends.Backend):
    """Jobs as steps of a transient EMR cluster that the ``terminate_cluster`` teardown always removes."""

    def code_store(self) -> S3CodeStore:
        return S3CodeStore(AWS_CONN_ID)

    def bundle(self) -> Bundle:
        # The nodes load the ONNX export (prepare), not the Keras file; a given .onnx file is staged as is.
        weights = self.settings.weights
        return build_bundle(self.settings.jobs_dir, weights, stage_weights=weights.endswith(".onnx"))

    def prepare(self, params: RunParams) -> backends.Prepared:
        """Stage the ONNX export (unless the weights are one) and a wheelhouse per architecture of the cluster."""
        settings, store = self.settings, self.code_store()
        prefix, cache = Layout(settings.storage_root).artifacts(), settings.build_cache
        model = None
        if not settings.weights.endswith(".onnx"):
            weights = settings.weights
            if weights.startswith("s3://"):
                weights = store.download(weights, cache / "weights")
            model = artifacts.ensure_staged(artifacts.onnx_model(weights, settings.jobs_dir), prefix, cache, store)
        node_types = (settings.emr_primary_instance_type, *core_instance_types(settings, params))
        needed = sorted({artifacts.architecture(t) for t in node_types})
        if settings.wheelhouse:
            wheelhouses = self._given_wheelhouses(needed, prefix, store)
        else:
            requirements = artifacts.node_requirements((settings.jobs_dir / REQUIREMENTS).read_text())
            wheelhouses = {
                arch: artifacts.ensure_staged(artifacts.wheelhouse(requirements, arch), prefix, cache, store)
                for arch in needed
            }
        return backends.Prepared(model=model, extras={"wheelhouses": wheelhouses})

    def _given_wheelhouses(self, needed: list[str], prefix: str, store: S3CodeStore) -> dict[str, str]:
        """The prebuilt wheelhouses of the Variable, by architecture; local files are staged (if missing)."""
        given = {name.rsplit("-", 1)[-1].removesuffix(".tar"): name for name in self.settings.wheelhouse}
        missing = [arch for arch in needed if arch not in given]
        if missing:
            raise PlanError(
                f"the cluster needs a wheelhouse for {', '.join(missing)} and Variable fruits_wheelhouse has none "
                "(make wheelhouse ARCH=..., or set it to 'build')"
            )
        staged = {}
        for arch in needed:
            source = given[arch]
            if source.startswith("s3://"):
                staged[arch] = source
                continue
            path = Path(source).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"wheelhouse not found: {path} (Variable fruits_wheelhouse)")
            staged[arch] = f"{prefix}/{path.name}"
            stage_file(BundleFile(path.name, path=path), staged[arch], store)
        return staged

    def plan_extras(self, plan: RunPlan, params: RunParams, run_id: str, prepared: backends.Prepared) -> dict[str, Any]:
        return {
            "job_flow_overrides": cluster_config(
                self.settings, params, plan.run_date, plan.code_uri, run_id, prepared.extras["wheelhouses"]
            ),
            "emr_steps": emr_steps(plan),
            "environment": self.settings.environment,
        }

    def key_sensor(self, task_id: str, keys: str, **kwargs: Any) -> BaseOperator:
        # The freshness check (check_fn) compares the markers' LastModified with the step's start.
        metadata = {"metadata_keys": ["Key", "LastModified"]} if kwargs.get("check_fn") else {}
        return S3KeySensor(
            task_id=task_id, bucket_key=keys, aws_conn_id=AWS_CONN_ID, **metadata, **self.sensor_args, **kwargs
        )

    def setup(self) -> Sequence[BaseOperator]:
        create_cluster = EmrCreateRunCluster(
            task_id="create_cluster",
            aws_conn_id=AWS_CONN_ID,
            emr_conn_id=None,
            job_flow_overrides=backends.from_plan("job_flow_overrides"),
        )
        add_steps = EmrAddRunSteps(
            task_id="add_steps", aws_conn_id=AWS_CONN_ID, job_flow_id=CLUSTER_ID, steps=backends.from_plan("emr_steps")
        )
        return (create_cluster, add_steps)

    def job_task(self, name: str, index: int) -> BaseOperator:
        # Deferrable: a step runs for hours, and the triggerer watches it without a worker slot or a task start
        # per poke (sensor_args' mode only applies if deferral is turned off).
        return EmrStepWatcher(
            task_id=f"{name}_step",
            aws_conn_id=AWS_CONN_ID,
            job_flow_id=CLUSTER_ID,
            step_id=f"{{{{ ti.xcom_pull(task_ids='add_steps')[{index}] }}}}",
            deferrable=True,
            **self.sensor_args,
        )

    def teardown(self, setup: Sequence[BaseOperator], last: BaseOperator) -> None:
        terminate_cluster = EmrTerminateRunClusters(
            task_id="terminate_cluster",
            aws_conn_id=AWS_CONN_ID,
            job_flow_id=CLUSTER_ID,
            environment=backends.from_plan("environment"),
        )
        # Teardown: runs after success, failure, a cleared task or a run marked failed (Airflow 3 keeps teardowns
        # when it stops a run), and the run still fails when a step failed.
        last >> terminate_cluster.as_teardown(setups=setup[0])


BACKEND = EmrBackend


def emr_steps(plan: RunPlan) -> list[dict[str, Any]]:
    """The plan's jobs as EMR steps: ``command-runner.jar spark-submit`` of the staged scripts."""
    return [
        {
            "Name": job.name,
            "ActionOnFailure": ACTION_ON_FAILURE,
            "HadoopJarStep": {
                "Jar": "command-runner.jar",
                # Client mode: the driver's output (and a job's error) lands in the step's stderr log.
                "Args": ["spark-submit", "--deploy-mode", "client", *job.submit_args()],
            },
        }
        for job in plan.jobs
    ]


def core_instance_types(settings: Settings, params: RunParams) -> list[str]:
    """The instance types the core nodes may have: the param's, and with Spot the Variable's alternatives."""
    types = [params.core_instance_type]
    if params.core_market == "spot":
        types += [t for t in settings.emr_spot_instance_types if t != params.core_instance_type]
    return types


def instances_config(settings: Settings, params: RunParams) -> dict[str, Any]:
    """``Instances`` of the cluster: instance groups (on-demand core), or instance fleets (Spot core)."""
    if params.core_max_instances is not None and params.core_max_instances < params.core_instance_count:
        raise PlanError(
            f"param core_max_instances ({params.core_max_instances}) is below core_instance_count "
            f"({params.core_instance_count})"
        )
    core_types = core_instance_types(settings, params)
    instances: dict[str, Any]
    if params.core_market == "spot":
        instances = {
            "InstanceFleets": [
                {
                    "Name": "primary",
                    "InstanceFleetType": "MASTER",
                    "TargetOnDemandCapacity": 1,
                    "InstanceTypeConfigs": [{"InstanceType": settings.emr_primary_instance_type}],
                },
                {
                    "Name": "core",
                    "InstanceFleetType": "CORE",
                    "TargetSpotCapacity": params.core_instance_count,
                    "InstanceTypeConfigs": [{"InstanceType": t, "WeightedCapacity": 1} for t in core_types],
                    "LaunchSpecifications": {
                        "SpotSpecification": {
                            "TimeoutDurationMinutes": SPOT_TIMEOUT_MINUTES,
                            "TimeoutAction": "SWITCH_TO_ON_DEMAND",
                            # The pools least likely to be interrupted, among the cheapest.
                            "AllocationStrategy": "price-capacity-optimized",
                        },
                        "OnDemandSpecification": {"AllocationStrategy": "lowest-price"},
                    },
                },
            ]
        }
        if settings.emr_subnet_id:
            instances["Ec2SubnetIds"] = [settings.emr_subnet_id]
    else:
        instances = {
            "InstanceGroups": [
                {
                    "Name": "primary",
                    "InstanceRole": "MASTER",
                    "Market": "ON_DEMAND",
                    "InstanceType": settings.emr_primary_instance_type,
                    "InstanceCount": 1,
                },
                {
                    "Name": "core",
                    "InstanceRole": "CORE",
                    "Market": "ON_DEMAND",
                    "InstanceType": params.core_instance_type,
                    "InstanceCount": params.core_instance_count,
                },
            ]
        }
        if settings.emr_subnet_id:
            instances["Ec2SubnetId"] = settings.emr_subnet_id
    # Steps are added after creation; the teardown task (or the idle timeout) ends the cluster.
    return {**instances, "KeepJobFlowAliveWhenNoSteps": True, "TerminationProtected": False}


def managed_scaling(params: RunParams) -> dict[str, Any] | None:
    """``ManagedScalingPolicy``: core nodes between ``core_instance_count`` and ``core_max_instances``."""
    if params.core_max_instances is None:
        return None
    fleets = params.core_market == "spot"
    limits = {
        "UnitType": "InstanceFleetUnits" if fleets else "Instances",
        "MinimumCapacityUnits": params.core_instance_count,
        "MaximumCapacityUnits": params.core_max_instances,
        "MaximumCoreCapacityUnits": params.core_max_instances,
        # With Spot, scaling adds Spot units only; on-demand, every unit is on-demand.
        "MaximumOnDemandCapacityUnits": 0 if fleets else params.core_max_instances,
    }
    return {"ComputeLimits": limits}


def cluster_config(
    settings: Settings,
    params: RunParams,
    day: dt.date,
    code_uri: str,
    run_id: str,
    wheelhouses: dict[str, str],
) -> dict[str, Any]:
    """``RunJobFlow`` arguments of the run's transient cluster (``EmrCreateJobFlowOperator`` overrides).

    ``wheelhouses``: the staged wheelhouse of each architecture (``{"x86_64": "s3://..."}``), for the bootstrap.
    """
    python = {"PYSPARK_PYTHON": PYTHON_ON_NODES, "PYSPARK_DRIVER_PYTHON": PYTHON_ON_NODES}
    config: dict[str, Any] = {
        "Name": f"{CLUSTER_NAME_PREFIX}{day.isoformat()}",
        "ReleaseLabel": settings.emr_release,
        "Applications": [{"Name": "Spark"}],
        "LogUri": settings.emr_log_uri,
        "Instances": instances_config(settings, params),
        "BootstrapActions": [
            {
                "Name": "python dependencies",
                "ScriptBootstrapAction": {
                    "Path": f"{code_uri}/emr_bootstrap.sh",
                    # arch=URI pairs: each node installs the wheelhouse of its own architecture.
                    "Args": [f"{arch}={uri}" for arch, uri in sorted(wheelhouses.items())],
                },
            }
        ],
        "Configurations": [
            # Spark's own Python on EMR 7 is 3.9; the jobs' dependencies are installed for 3.11.
            {"Classification": "spark-env", "Configurations": [{"Classification": "export", "Properties": python}]},
        ],
        "AutoTerminationPolicy": {"IdleTimeout": settings.emr_idle_timeout},
        "ServiceRole": settings.emr_service_role,
        "JobFlowRole": settings.emr_instance_profile,
        "VisibleToAllUsers": True,
        "Tags": [
            {"Key": "project", "Value": "fruits"},
            # EMR's v2 managed service policy (infra/template.yaml) acts only on resources carrying this tag.
            {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"},
            # How the run's tasks find its clusters (EmrCreateRunCluster, EmrTerminateRunClusters).
            {"Key": DAG_ID_TAG, "Value": "fruits_pipeline"},
            {"Key": RUN_ID_TAG, "Value": run_id[:256]},
            {"Key": ENVIRONMENT_TAG, "Value": settings.environment},
            {"Key": "fruits:run_date", "Value": day.isoformat()},
        ],
    }
    scaling = managed_scaling(params)
    if scaling:
        config["ManagedScalingPolicy"] = scaling
    return config


class S3CodeStore:
    """The bundle and the artifacts in S3, through the ``aws_default`` connection."""

    def __init__(self, aws_conn_id: str) -> None:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self.hook = S3Hook(aws_conn_id=aws_conn_id)

    def size_of(self, uri: str) -> int | None:
        bucket, key = self.hook.parse_s3_url(uri)
        head = self.hook.head_object(key=key, bucket_name=bucket)
        return None if head is None else int(head["ContentLength"])

    def write(self, uri: str, file: BundleFile) -> None:
        bucket, key = self.hook.parse_s3_url(uri)
        if file.data is not None:
            self.hook.load_bytes(file.data, key=key, bucket_name=bucket, replace=True)
        else:
            self.hook.load_file(str(file.path), key=key, bucket_name=bucket, replace=True)

    def refresh(self, uri: str) -> None:
        """Copy a staged file older than ``REFRESH_AFTER_DAYS`` onto itself: the bucket's expiry of ``code/``
        counts from the last write, so what every night still uses is never expired under a running cluster."""
        bucket, key = self.hook.parse_s3_url(uri)
        head = self.hook.head_object(key=key, bucket_name=bucket)
        if head is None or dt.datetime.now(dt.UTC) - head["LastModified"] < dt.timedelta(days=REFRESH_AFTER_DAYS):
            return
        # Server-side; a copy onto itself must replace something (its metadata, kept identical).
        self.hook.get_conn().copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            Metadata=head.get("Metadata", {}),
            MetadataDirective="REPLACE",
        )
        log.info("Refreshed %s (older than %d days)", uri, REFRESH_AFTER_DAYS)

    def download(self, uri: str, folder: Path) -> str:
        """A local copy of the S3 file ``uri`` under ``folder/<ETag>/`` (kept: fetched once per content)."""
        bucket, key = self.hook.parse_s3_url(uri)
        head = self.hook.head_object(key=key, bucket_name=bucket)
        if head is None:
            raise FileNotFoundError(f"weights file not found: {uri} (Variable fruits_weights)")
        target = folder / head["ETag"].strip('"') / key.rsplit("/", 1)[-1]
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            self.hook.get_conn().download_file(bucket, key, str(partial))
            partial.replace(target)
        return str(target)


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


def environment_of(job_flow_overrides: Any) -> str:
    """The environment tag of a cluster request (``cluster_config``'s); a request without one is an error."""
    tags = {t["Key"]: t["Value"] for t in (job_flow_overrides or {}).get("Tags", [])}
    if not tags.get(ENVIRONMENT_TAG):
        raise AirflowException(f"the cluster request has no {ENVIRONMENT_TAG} tag: refusing to look for clusters")
    return tags[ENVIRONMENT_TAG]


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
