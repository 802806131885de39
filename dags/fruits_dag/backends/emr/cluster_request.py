"""The run's cluster request: ``RunJobFlow`` arguments (instances, bootstrap, tags, scaling) and the jobs as steps."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fruits_dag.backends.emr import spark_sizing
from fruits_dag.backends.emr.run_clusters import CLUSTER_NAME_PREFIX, DAG_ID_TAG, ENVIRONMENT_TAG, RUN_ID_TAG
from fruits_dag.params import RunParams
from fruits_dag.plan import Layout, PlanError, RunPlan
from fruits_dag.settings import Settings

# A failed step cancels the later ones and leaves the cluster up for the teardown task (and its logs intact).
ACTION_ON_FAILURE = "CANCEL_AND_WAIT"
PYTHON_ON_NODES = "/usr/bin/python3.11"  # installed by emr_bootstrap.sh; requirements.txt is tested on 3.11
# Spot: wait this long for Spot capacity at launch, then take on-demand instead (EMR's SWITCH_TO_ON_DEMAND).
SPOT_TIMEOUT_MINUTES = 10


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
    """The instance types the worker nodes may have: the param's, and with Spot task nodes (or scaling, which adds
    them) the setting's alternatives of the same size."""
    types = [params.core_instance_type]
    if params.spot_task_instances or params.max_instances is not None:
        types += [t for t in settings.emr_spot_instance_types if t != params.core_instance_type]
    return types


def sizing(settings: Settings, params: RunParams) -> spark_sizing.Sizing:
    """Spark and YARN sized for the worker instance types, at the cluster's largest configured size."""
    most = params.max_instances or params.core_instance_count + params.spot_task_instances
    return spark_sizing.size(core_instance_types(settings, params), settings.emr_primary_instance_type, most)


def instances_config(settings: Settings, params: RunParams) -> dict[str, Any]:
    """``Instances`` of the cluster: instance groups (an on-demand core only), or instance fleets (an on-demand
    core fleet and a Spot task fleet, over every subnet of the setting: EMR launches in the one with capacity)."""
    workers = params.core_instance_count + params.spot_task_instances
    if params.max_instances is not None and params.max_instances < workers:
        raise PlanError(
            f"param max_instances ({params.max_instances}) is below core_instance_count + spot_task_instances "
            f"({workers})"
        )
    ebs = sizing(settings, params).ebs()
    subnets = list(settings.emr_subnet_ids)
    instances: dict[str, Any]
    if params.spot_task_instances or params.max_instances is not None:
        types = core_instance_types(settings, params)
        configs = [{"InstanceType": t, "WeightedCapacity": 1, "EbsConfiguration": ebs} for t in types]
        instances = {
            "InstanceFleets": [
                {
                    "Name": "primary",
                    "InstanceFleetType": "MASTER",
                    "TargetOnDemandCapacity": 1,
                    "InstanceTypeConfigs": [{"InstanceType": settings.emr_primary_instance_type}],
                },
                {
                    # The state (application masters, HDFS, shuffle files) on capacity that is not taken back.
                    "Name": "core",
                    "InstanceFleetType": "CORE",
                    "TargetOnDemandCapacity": params.core_instance_count,
                    "InstanceTypeConfigs": configs,
                    "LaunchSpecifications": {"OnDemandSpecification": {"AllocationStrategy": "lowest-price"}},
                },
                {
                    # The elastic work: a lost node costs its running tasks, retried on the others.
                    "Name": "task",
                    "InstanceFleetType": "TASK",
                    "TargetSpotCapacity": params.spot_task_instances,
                    "InstanceTypeConfigs": configs,
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
        if subnets:
            instances["Ec2SubnetIds"] = subnets
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
                    "EbsConfiguration": ebs,
                },
            ]
        }
        if subnets:
            instances["Ec2SubnetId"] = subnets[0]  # instance groups take one subnet
    # Steps are added after creation; the teardown task (or the idle timeout) ends the cluster.
    return {**instances, "KeepJobFlowAliveWhenNoSteps": True, "TerminationProtected": False}


def managed_scaling(params: RunParams) -> dict[str, Any] | None:
    """``ManagedScalingPolicy``: Spot task units added up to ``max_instances`` nodes in all; the core stays."""
    if params.max_instances is None:
        return None
    limits = {
        "UnitType": "InstanceFleetUnits",
        "MinimumCapacityUnits": params.core_instance_count + params.spot_task_instances,
        "MaximumCapacityUnits": params.max_instances,
        "MaximumCoreCapacityUnits": params.core_instance_count,
        # Only the core is on-demand: whatever scaling adds is Spot.
        "MaximumOnDemandCapacityUnits": params.core_instance_count,
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
            # Executors, Python workers, driver and partition counts sized for the instance types (docs/aws.md).
            *sizing(settings, params).classifications(Layout(settings.storage_root).spark_events(day)),
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
    if settings.emr_security_configuration:
        # Encryption of local disks, EBS and EMRFS data (infra/template.yaml's EmrSecurityConfiguration).
        config["SecurityConfiguration"] = settings.emr_security_configuration
    return config
