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

The package, by what each file holds: ``cluster_request`` (the ``RunJobFlow`` arguments and the steps),
``spark_sizing`` (Spark, YARN and EBS sized for the instance types),
``run_clusters`` (the look-up by tags and the termination), ``operators`` (``create_cluster``, ``add_steps``,
``terminate_cluster``), ``step_watcher`` (the deferrable step sensor), ``code_store`` (staging to S3).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import BaseOperator, task

from fruits_dag import alerts, artifacts, backends, metrics
from fruits_dag.backends.emr.cluster_request import cluster_config, core_instance_types, emr_steps, instances_config
from fruits_dag.backends.emr.code_store import REFRESH_AFTER_DAYS, S3CodeStore
from fruits_dag.backends.emr.operators import (
    CLUSTER_ID,
    EmrAddRunSteps,
    EmrCreateRunCluster,
    EmrTerminateRunClusters,
)
from fruits_dag.backends.emr.run_clusters import ENVIRONMENT_TAG, find_run_clusters
from fruits_dag.backends.emr.step_watcher import EmrStepWatcher
from fruits_dag.bundle import REQUIREMENTS, Bundle, BundleFile, build_bundle, stage_file
from fruits_dag.lease import S3LeaseStore
from fruits_dag.params import RunParams
from fruits_dag.plan import STEP_NAMES, Layout, PlanError, RunPlan
from fruits_dag.settings import AWS_CONN_ID

__all__ = [
    "BACKEND",
    "ENVIRONMENT_TAG",
    "REFRESH_AFTER_DAYS",
    "EmrBackend",
    "EmrStepWatcher",
    "S3CodeStore",
    "cluster_config",
    "emr_steps",
    "find_run_clusters",
    "instances_config",
]

log = logging.getLogger(__name__)


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
            export = artifacts.onnx_model(weights, settings.jobs_dir, timeout=settings.build_timeout)
            model = artifacts.ensure_staged(export, prefix, cache, store)
        node_types = (settings.emr_primary_instance_type, *core_instance_types(settings, params))
        needed = sorted({artifacts.architecture(t) for t in node_types})
        if settings.wheelhouse:
            wheelhouses = self._given_wheelhouses(needed, prefix, store)
        else:
            requirements = artifacts.node_requirements((settings.jobs_dir / REQUIREMENTS).read_text())
            wheelhouses = {
                arch: artifacts.ensure_staged(
                    artifacts.wheelhouse(requirements, arch, timeout=settings.build_timeout), prefix, cache, store
                )
                for arch in needed
            }
        return backends.Prepared(model=model, extras={"wheelhouses": wheelhouses})

    def _given_wheelhouses(self, needed: list[str], prefix: str, store: S3CodeStore) -> dict[str, str]:
        """The prebuilt wheelhouses of the Variable, by architecture; local files are staged (if missing)."""
        given = {name.rsplit("-", 1)[-1].removesuffix(".tar"): name for name in self.settings.wheelhouse}
        missing = [arch for arch in needed if arch not in given]
        if missing:
            raise PlanError(
                f"the cluster needs a wheelhouse for {', '.join(missing)} and setting fruits_wheelhouse has none "
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
                raise FileNotFoundError(f"wheelhouse not found: {path} (setting fruits_wheelhouse)")
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

    def uploads_sensor(self, task_id: str, pattern: str, earlier: str) -> BaseOperator:
        return S3UploadsSensor(
            task_id=task_id,
            bucket_key=pattern,
            wildcard_match=True,
            earlier=earlier,
            quiet_nights=self.settings.alert_after_empty_nights,
            aws_conn_id=AWS_CONN_ID,
            **self.sensor_args,
        )

    def lease_store(self, uri: str) -> S3LeaseStore:
        return S3LeaseStore(uri, AWS_CONN_ID)

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
            # Beyond its own timeout (which fails it with a clear message), with a margin for the last look.
            execution_timeout=dt.timedelta(seconds=self.settings.sensor_timeout + 600),
        )

    def after_jobs(self) -> Sequence[BaseOperator]:
        # The run's figures to CloudWatch, for the stack's alarms (fruits_dag/metrics.py).
        return (publish_metrics(backends.from_plan("report_summary"), backends.from_plan("environment")),)

    def teardown(self, setup: Sequence[BaseOperator], last: BaseOperator) -> BaseOperator:
        terminate_cluster = EmrTerminateRunClusters(
            task_id="terminate_cluster",
            aws_conn_id=AWS_CONN_ID,
            job_flow_id=CLUSTER_ID,
            environment=backends.from_plan("environment"),
        )
        # Teardown: runs after success, failure, a cleared task or a run marked failed (Airflow 3 keeps teardowns
        # when it stops a run), and the run still fails when a step failed.
        last >> terminate_cluster.as_teardown(setups=setup[0])
        return terminate_cluster


BACKEND = EmrBackend


@task
def publish_metrics(report_uri: str, environment: str, **context: Any) -> int:
    """Put the run's figures (its report, its steps' durations) to CloudWatch; returns how many."""
    steps = {name: context["ti"].xcom_pull(task_ids=f"{name}_step") or {} for name in STEP_NAMES}
    return len(metrics.publish(report_uri, steps, environment, AWS_CONN_ID))


class S3UploadsSensor(alerts.UploadsWait, S3KeySensor):
    """``S3KeySensor`` on the night's uploads, alerting after too many nights without any."""

    template_fields: Sequence[str] = (*S3KeySensor.template_fields, "earlier")

    def __init__(self, *, earlier: str | list[str], quiet_nights: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.earlier = earlier
        self.quiet_nights = quiet_nights

    def has_files(self, folder: str) -> bool:
        bucket, prefix = self.hook.parse_s3_url(folder)
        return bool(self.hook.list_keys(bucket_name=bucket, prefix=prefix, max_items=1))
