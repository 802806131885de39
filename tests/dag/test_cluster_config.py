"""The cluster request of the EMR backend: on-demand groups by default, Spot fleets with an on-demand fallback and a
managed-scaling ceiling as options; checked against the RunJobFlow API model and sent to moto."""

from __future__ import annotations

import datetime as dt

import botocore.session
import pytest
from botocore.validate import ParamValidator

from fruits_dag.backends.emr import cluster_config
from fruits_dag.params import RunParams
from fruits_dag.plan import PlanError
from fruits_dag.settings import load

DAY = dt.date(2026, 5, 1)
CODE = "s3://fruits-prod/code/0123456789abcdef"
WHEELHOUSES = {"x86_64": "s3://fruits-prod/code/artifacts/wheelhouse-k-cp311-x86_64.tar"}


def settings(**variables: str):
    return load({"fruits_bucket": "fruits-prod", "fruits_emr_subnet_id": "subnet-0abc", **variables})


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


def test_spot_core_nodes_are_a_fleet_that_falls_back_to_on_demand():
    config = request(RunParams(core_market="spot", core_instance_count=4, core_instance_type="m6i.xlarge"))
    assert_valid_run_job_flow(config)
    assert "InstanceGroups" not in config["Instances"]
    assert config["Instances"]["Ec2SubnetIds"] == ["subnet-0abc"]
    fleets = {f["InstanceFleetType"]: f for f in config["Instances"]["InstanceFleets"]}
    assert fleets["MASTER"]["TargetOnDemandCapacity"] == 1  # the primary node is never Spot
    core = fleets["CORE"]
    assert core["TargetSpotCapacity"] == 4 and "TargetOnDemandCapacity" not in core
    types = [c["InstanceType"] for c in core["InstanceTypeConfigs"]]
    assert types[0] == "m6i.xlarge" and len(types) == len(set(types)) == 5  # the param's type, then the others
    assert {c["WeightedCapacity"] for c in core["InstanceTypeConfigs"]} == {1}
    spot = core["LaunchSpecifications"]["SpotSpecification"]
    assert spot["AllocationStrategy"] == "price-capacity-optimized"
    assert (spot["TimeoutAction"], spot["TimeoutDurationMinutes"]) == ("SWITCH_TO_ON_DEMAND", 10)


@pytest.mark.parametrize(
    ("market", "unit", "on_demand"), [("on_demand", "Instances", 8), ("spot", "InstanceFleetUnits", 0)]
)
def test_managed_scaling_grows_the_core_nodes_up_to_the_ceiling(market, unit, on_demand):
    config = request(RunParams(core_market=market, core_instance_count=2, core_max_instances=8))
    assert_valid_run_job_flow(config)
    assert config["ManagedScalingPolicy"] == {
        "ComputeLimits": {
            "UnitType": unit,
            "MinimumCapacityUnits": 2,
            "MaximumCapacityUnits": 8,
            "MaximumCoreCapacityUnits": 8,
            "MaximumOnDemandCapacityUnits": on_demand,
        }
    }


def test_a_ceiling_below_the_core_count_is_refused():
    with pytest.raises(PlanError, match="core_max_instances"):
        request(RunParams(core_instance_count=4, core_max_instances=3))


def test_each_architecture_of_the_cluster_gets_its_wheelhouse():
    both = {**WHEELHOUSES, "aarch64": "s3://fruits-prod/code/artifacts/wheelhouse-k-cp311-aarch64.tar"}
    config = request(RunParams(core_instance_type="m7g.xlarge"), both)
    assert_valid_run_job_flow(config)
    assert config["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"] == [
        f"aarch64={both['aarch64']}",
        f"x86_64={both['x86_64']}",
    ]


def test_moto_accepts_the_spot_request(boto):
    config = request(RunParams(core_market="spot", core_max_instances=6))
    cluster = boto("emr").run_job_flow(**config)["JobFlowId"]
    described = boto("emr").describe_cluster(ClusterId=cluster)["Cluster"]
    assert described["Name"] == "fruits-pipeline-2026-05-01"
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags["fruits:environment"] == "fruits-prod"  # the bucket, by default
    staging = {t["Key"]: t["Value"] for t in request(RunParams(), fruits_environment="staging")["Tags"]}
    assert staging["fruits:environment"] == "staging"
    boto("emr").terminate_job_flows(JobFlowIds=[cluster])
