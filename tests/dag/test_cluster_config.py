"""The cluster request of the EMR backend: on-demand groups by default, Spot fleets with an on-demand fallback and a
managed-scaling ceiling as options; checked against the RunJobFlow API model and sent to moto."""

from __future__ import annotations

import datetime as dt

import botocore.session
import pytest
from botocore.validate import ParamValidator

from dag_harness import REPO_ROOT
from fruits_dag.backends.emr import cluster_config
from fruits_dag.params import RunParams
from fruits_dag.plan import PlanError
from fruits_dag.settings import load

DAY = dt.date(2026, 5, 1)
CODE = "s3://fruits-prod/code/0123456789abcdef"
WHEELHOUSES = {"x86_64": "s3://fruits-prod/code/artifacts/wheelhouse-k-cp311-x86_64.tar"}


def settings(**variables: str):
    return load({"fruits_bucket": "fruits-prod", "fruits_emr_subnet_ids": "subnet-0abc,subnet-0def", **variables})


def request(params: RunParams, wheelhouses=WHEELHOUSES, **variables: str) -> dict:
    return cluster_config(settings(**variables), params, DAY, CODE, "scheduled__2026-05-01", wheelhouses)


def assert_valid_run_job_flow(config: dict) -> None:
    """The request fits botocore's model of EMR's RunJobFlow (what AWS itself would validate first)."""
    model = botocore.session.get_session().get_service_model("emr").operation_model("RunJobFlow").input_shape
    report = ParamValidator().validate(config, model)
    assert not report.has_errors(), report.generate_report()


def test_the_default_is_on_demand_instance_groups_without_scaling():
    config = request(RunParams())
    assert_valid_run_job_flow(config)
    groups = {g["InstanceRole"]: g for g in config["Instances"]["InstanceGroups"]}
    assert {g["Market"] for g in groups.values()} == {"ON_DEMAND"}
    assert (groups["CORE"]["InstanceType"], groups["CORE"]["InstanceCount"]) == ("m5.xlarge", 2)
    assert config["Instances"]["Ec2SubnetId"] == "subnet-0abc"
    assert "ManagedScalingPolicy" not in config
    assert config["BootstrapActions"][0]["ScriptBootstrapAction"] == {
        "Path": f"{CODE}/emr_bootstrap.sh",
        "Args": [f"x86_64={WHEELHOUSES['x86_64']}"],
    }


def test_spot_capacity_is_a_task_fleet_beside_an_on_demand_core_over_both_subnets():
    config = request(RunParams(spot_task_instances=4, core_instance_count=2, core_instance_type="m6i.xlarge"))
    assert_valid_run_job_flow(config)
    assert "InstanceGroups" not in config["Instances"]
    assert config["Instances"]["Ec2SubnetIds"] == ["subnet-0abc", "subnet-0def"]  # EMR picks the zone with capacity
    fleets = {f["InstanceFleetType"]: f for f in config["Instances"]["InstanceFleets"]}
    assert fleets["MASTER"]["TargetOnDemandCapacity"] == 1  # the primary node is never Spot
    # The core (application masters, HDFS, shuffle files) is on-demand only.
    core, task = fleets["CORE"], fleets["TASK"]
    assert core["TargetOnDemandCapacity"] == 2 and "TargetSpotCapacity" not in core
    assert "SpotSpecification" not in core["LaunchSpecifications"]
    # The elastic work is Spot, over several types, falling back to on-demand.
    assert task["TargetSpotCapacity"] == 4 and "TargetOnDemandCapacity" not in task
    types = [c["InstanceType"] for c in task["InstanceTypeConfigs"]]
    assert types[0] == "m6i.xlarge" and len(types) == len(set(types)) == 5  # the param's type, then the others
    assert {c["WeightedCapacity"] for c in task["InstanceTypeConfigs"]} == {1}
    spot = task["LaunchSpecifications"]["SpotSpecification"]
    assert spot["AllocationStrategy"] == "price-capacity-optimized"
    assert (spot["TimeoutAction"], spot["TimeoutDurationMinutes"]) == ("SWITCH_TO_ON_DEMAND", 10)


def test_managed_scaling_adds_spot_task_units_and_keeps_the_core():
    config = request(RunParams(core_instance_count=2, max_instances=8))
    assert_valid_run_job_flow(config)
    fleets = {f["InstanceFleetType"]: f for f in config["Instances"]["InstanceFleets"]}
    assert fleets["TASK"]["TargetSpotCapacity"] == 0  # scaling adds them when the steps need them
    assert config["ManagedScalingPolicy"] == {
        "ComputeLimits": {
            "UnitType": "InstanceFleetUnits",
            "MinimumCapacityUnits": 2,
            "MaximumCapacityUnits": 8,
            "MaximumCoreCapacityUnits": 2,
            "MaximumOnDemandCapacityUnits": 2,
        }
    }


def test_a_ceiling_below_the_starting_nodes_is_refused():
    with pytest.raises(PlanError, match="max_instances"):
        request(RunParams(core_instance_count=2, spot_task_instances=2, max_instances=3))


def test_each_architecture_of_the_cluster_gets_its_wheelhouse():
    both = {**WHEELHOUSES, "aarch64": "s3://fruits-prod/code/artifacts/wheelhouse-k-cp311-aarch64.tar"}
    config = request(RunParams(core_instance_type="m7g.xlarge"), both)
    assert_valid_run_job_flow(config)
    assert config["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"] == [
        f"aarch64={both['aarch64']}",
        f"x86_64={both['x86_64']}",
    ]


def test_every_cluster_names_the_security_configuration():
    assert "SecurityConfiguration" not in request(RunParams())
    for params in (RunParams(), RunParams(spot_task_instances=2)):
        config = request(params, fruits_emr_security_configuration="fruits-pipeline-emr")
        assert_valid_run_job_flow(config)
        assert config["SecurityConfiguration"] == "fruits-pipeline-emr"


def test_moto_accepts_the_spot_request(boto):
    config = request(RunParams(spot_task_instances=2, max_instances=6))
    cluster = boto("emr").run_job_flow(**config)["JobFlowId"]
    described = boto("emr").describe_cluster(ClusterId=cluster)["Cluster"]
    assert described["Name"] == "fruits-pipeline-2026-05-01"
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags["fruits:environment"] == "fruits-prod"  # the bucket, by default
    staging = {t["Key"]: t["Value"] for t in request(RunParams(), fruits_environment="staging")["Tags"]}
    assert staging["fruits:environment"] == "staging"
    boto("emr").terminate_job_flows(JobFlowIds=[cluster])


def docs_sizing_table() -> dict[str, dict[str, str]]:
    """docs/aws.md's sizing table: {instance type: {row label: value}}."""
    text = (REPO_ROOT / "docs" / "aws.md").read_text(encoding="utf-8")
    section = text[text.index("## Spark sized for the instance types") :]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    types = [cell.strip() for cell in rows[0].strip("|").split("|")][1:]
    table: dict[str, dict[str, str]] = {t: {} for t in types}
    for row in rows[2:]:
        label, *values = [cell.strip() for cell in row.strip("|").split("|")]
        for t, value in zip(types, values, strict=True):
            table[t][label] = value
    return table


@pytest.mark.parametrize("core_type", ["m5.xlarge", "r5.2xlarge"])
def test_spark_is_sized_for_the_instance_type_as_docs_aws_md_computes_it(core_type):
    documented = docs_sizing_table()[core_type]
    config = request(RunParams(core_instance_type=core_type, core_instance_count=10))
    assert_valid_run_job_flow(config)
    classes = {c["Classification"]: c.get("Properties", {}) for c in config["Configurations"]}
    spark, yarn = classes["spark-defaults"], classes["yarn-site"]
    for label, value in documented.items():
        name = label.split("`")[1] if "`" in label else None
        if name in spark:
            assert spark[name] == value, label
        elif name in yarn:
            assert yarn[name] == value, label
    assert spark["spark.sql.shuffle.partitions"] == spark["spark.default.parallelism"]
    groups = {g["InstanceRole"]: g for g in config["Instances"]["InstanceGroups"]}
    volume = groups["CORE"]["EbsConfiguration"]["EbsBlockDeviceConfigs"][0]["VolumeSpecification"]
    assert (volume["VolumeType"], str(volume["SizeInGB"])) == ("gp3", documented["EBS per core node (GiB)"])
    # Every documented Spark or YARN property was compared.
    named = [label.split("`")[1] for label in documented if "`" in label]
    assert len(named) == 7 and all(n in spark or n in yarn for n in named)


def test_a_python_worker_fits_the_worst_accepted_upload_and_the_model():
    """PYTHON_WORKER_MIB covers clean's bound for the largest accepted upload (the jobs' own formula)."""
    from fruits_common import images
    from fruits_dag.backends.emr import spark_sizing

    worst = max(
        images.peak_bytes_bound(8000, 8000, mode, fmt)
        for mode, fmt in [("RGBA", "HEIF"), ("RGBA", "PNG"), ("RGB", "JPEG")]
    )
    upload = worst + images.MAX_FILE_BYTES
    assert spark_sizing.PYTHON_WORKER_MIB * 2**20 >= max(upload, 2**30) + 300 * 2**20


def test_a_core_type_too_small_for_the_workers_is_refused_with_the_reason():
    with pytest.raises(PlanError, match=r"c5.xlarge is too small for the jobs: 4096 MiB per executor"):
        request(RunParams(core_instance_type="c5.xlarge"))
    with pytest.raises(PlanError, match="cannot size Spark for instance type 'p4d.24xlarge'"):
        request(RunParams(core_instance_type="p4d.24xlarge"))


def test_spot_fleets_are_sized_for_their_smallest_type():
    config = request(RunParams(spot_task_instances=2, core_instance_type="r5.2xlarge"))
    assert_valid_run_job_flow(config)
    spark = {c["Classification"]: c.get("Properties", {}) for c in config["Configurations"]}["spark-defaults"]
    # The alternatives (m5.xlarge...) are 4 vCPU / 16 GiB: one executor of 4 cores per node, as on m5.xlarge.
    assert spark["spark.executor.memory"] == "5585m"
