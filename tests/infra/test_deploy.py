"""``infra/deploy.py`` against a moto server: the stack deploys, what it creates, its outputs as the DAG's settings,
updates, the guards, and the teardown."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from moto.emr.models import emr_backends
from moto.kms.models import kms_backends
from moto.s3.models import s3_backends

from fruits_dag import settings as dag_settings
from infra import deploy


def _statements(document: Any) -> list[dict[str, Any]]:
    document = json.loads(document) if isinstance(document, str) else document
    statements = document["Statement"]
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _template_resources(template: dict[str, Any], conditions: dict[str, bool]) -> set[str]:
    return {name for name, r in template["Resources"].items() if conditions.get(r.get("Condition", ""), True)}


@pytest.fixture(scope="module")
def stack(aws_env: Any) -> Iterator[dict[str, Any]]:
    """One stack deployed with the CLI (new VPC, no budget: moto has no AWS::Budgets::Budget), removed afterwards."""
    names = {"stack": "fruits-module", "bucket": "fruits-module-bucket"}
    guard = aws_env.guard(names["stack"])
    # moto's CloudFormation has no AWS::Budgets::Budget nor AWS::CloudWatch::Alarm: both left out.
    options = ["--no-budget-alarm", "--parameter", "CreateRunAlarms=false", "--skip-cost-tag"]
    assert deploy.main(["deploy", *guard, "--bucket", names["bucket"], *options]) == 0
    yield {**names, "outputs": deploy.stack_outputs(aws_env.client("cloudformation"), names["stack"])}
    assert deploy.main(["destroy", *guard, "--delete-bucket"]) == 0


def test_every_resource_of_the_template_is_deployed(moto: Any, stack: dict[str, Any], template: dict[str, Any]) -> None:
    # moto skips resource types it does not know and still reports CREATE_COMPLETE: compare with the template.
    cfn = moto.client("cloudformation")
    description = cfn.describe_stacks(StackName=stack["stack"])["Stacks"][0]
    assert description["StackStatus"] == "CREATE_COMPLETE"
    summaries = cfn.list_stack_resources(StackName=stack["stack"])["StackResourceSummaries"]
    deployed = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in summaries if r["LogicalResourceId"]}
    conditions = {"WithBudget": False, "CreateNetwork": True, "WithAlertEmail": False, "WithRunAlarms": False}
    expected = _template_resources(template, conditions)
    assert set(deployed) == expected
    assert all(deployed.values())
    # moto lists each resource a false condition left out as a blank entry: the budget alarm's four, the ops
    # topic's e-mail subscription (no AlertEmail given) and the two run alarms, no more.
    assert len(summaries) - len(deployed) == len(template["Resources"]) - len(expected) == 7
    assert {"Key": "project", "Value": "fruits"} in description["Tags"]
    # Outside the stack: EMR's service-linked role, which Airflow would otherwise need the right to create.
    linked = moto.client("iam").list_roles(PathPrefix="/aws-service-role/elasticmapreduce.amazonaws.com/")["Roles"]
    assert len(linked) == 1


def test_the_ops_topic_is_deployed_and_named_for_the_dag(moto: Any, stack: dict[str, Any]) -> None:
    arn = stack["outputs"]["OpsTopicArn"]
    assert arn.endswith(":fruits-module-ops-alerts")
    attributes = moto.client("sns").get_topic_attributes(TopicArn=arn)["Attributes"]
    assert attributes["TopicArn"] == arn
    assert deploy.airflow_variables(stack["outputs"])["fruits_alert_topic_arn"] == arn


def test_the_originals_are_versioned_and_old_versions_expire(moto: Any, stack: dict[str, Any]) -> None:
    s3 = moto.client("s3")
    assert s3.get_bucket_versioning(Bucket=stack["bucket"])["Status"] == "Enabled"
    rules = s3.get_bucket_lifecycle_configuration(Bucket=stack["bucket"])["Rules"]
    noncurrent = {
        r["Prefix"]: r["NoncurrentVersionExpiration"]["NoncurrentDays"]
        for r in rules
        if "NoncurrentVersionExpiration" in r
    }
    # The only copies of the photos keep overwritten or deleted versions for 90 days; what Spark rewrites, a day.
    assert noncurrent == {
        "uploads/": 90,
        "datasets/": 90,
        **dict.fromkeys(["stages/", "models/", "reports/", "code/", "logs/", "locks/"], 1),
    }
    # A deleted upload can be brought back (in-process: over moto's plain HTTP the TLS-only policy refuses writes).
    backend = s3_backends[moto.account]["aws"]
    first = backend.put_object(stack["bucket"], "uploads/2026-05-01/IMG_1.jpg", b"the photo")
    backend.delete_object(stack["bucket"], "uploads/2026-05-01/IMG_1.jpg")
    assert backend.get_object(stack["bucket"], "uploads/2026-05-01/IMG_1.jpg") is None  # deleted...
    old = backend.get_object(stack["bucket"], "uploads/2026-05-01/IMG_1.jpg", version_id=first.version_id)
    assert old.value == b"the photo"  # ...and still there as an older version


def test_the_clusters_security_configuration_encrypts_disks_and_emrfs(moto: Any, stack: dict[str, Any]) -> None:
    name = stack["outputs"]["EmrSecurityConfigurationName"]
    assert deploy.airflow_variables(stack["outputs"])["fruits_emr_security_configuration"] == name
    # (In-process: moto's EMR and KMS answer from their default account, not the test's.)
    described = emr_backends[moto.account][moto.region].security_configurations[name].security_configuration
    config = json.loads(described) if isinstance(described, str) else described
    encryption = config["EncryptionConfiguration"]
    assert encryption["EnableAtRestEncryption"] is True
    at_rest = encryption["AtRestEncryptionConfiguration"]
    assert at_rest["S3EncryptionConfiguration"] == {"EncryptionMode": "SSE-S3"}
    disks = at_rest["LocalDiskEncryptionConfiguration"]
    assert (disks["EncryptionKeyProviderType"], disks["EnableEbsEncryption"]) == ("AwsKms", True)
    kms = kms_backends[moto.account][moto.region]  # in-process, as above
    key = kms.describe_key(disks["AwsKmsKey"])
    assert key.enabled and key.key_state == "Enabled"
    assert kms.get_key_rotation_status(key.id) is True
    # No certificates given: no in-transit encryption (EMR needs the operator's certificates for it).
    assert encryption["EnableInTransitEncryption"] is False


def test_bucket_is_encrypted_private_and_tls_only(moto: Any, stack: dict[str, Any]) -> None:
    s3 = moto.client("s3")
    bucket = stack["bucket"]
    encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert encryption[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    policy = _statements(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    assert all(s["Effect"] == "Deny" for s in policy)
    tls = [s for s in policy if s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert len(tls) == 1
    assert tls[0]["Principal"] == "*" and tls[0]["Action"] == "s3:*"
    assert sorted(tls[0]["Resource"]) == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    owner = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert owner == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert {"Key": "project", "Value": "fruits"} in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]


def test_lifecycle_expires_logs_and_code_only(moto: Any, stack: dict[str, Any]) -> None:
    rules = moto.client("s3").get_bucket_lifecycle_configuration(Bucket=stack["bucket"])["Rules"]
    expiring = {
        r.get("Prefix", r.get("Filter", {}).get("Prefix")): r["Expiration"]["Days"] for r in rules if "Expiration" in r
    }
    assert expiring == {"logs/": 30, "code/": 90}


def test_roles_and_policies_name_only_this_bucket(moto: Any, stack: dict[str, Any]) -> None:
    iam = moto.client("iam")
    outputs = stack["outputs"]
    nodes_role, service_role = outputs["EmrInstanceProfileName"], outputs["EmrServiceRoleName"]
    documents = {}
    for role in (nodes_role, service_role):
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            documents[name] = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    policy_arn = outputs["AirflowPolicyArn"]
    version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
    documents["airflow"] = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
    assert set(documents) == {"fruits-bucket-and-cluster", "pass-nodes-role", "airflow"}

    bucket_arn = f"arn:aws:s3:::{stack['bucket']}"
    s3_resources: list[str] = []
    for document in documents.values():
        for statement in _statements(document):
            actions = _as_list(statement["Action"])
            resources = _as_list(statement["Resource"])
            assert statement["Effect"] == "Allow"
            assert not any(a in ("*", "s3:*") for a in actions), statement
            if any(a.startswith("s3:") for a in actions):
                assert "*" not in resources, statement
            s3_resources += [r for r in resources if r.startswith("arn:aws:s3:::")]
    assert s3_resources
    assert all(r == bucket_arn or r.startswith(bucket_arn + "/") for r in s3_resources), s3_resources

    attached = iam.list_attached_role_policies(RoleName=service_role)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == ["arn:aws:iam::aws:policy/service-role/AmazonEMRServicePolicy_v2"]
    profile = iam.get_instance_profile(InstanceProfileName=outputs["EmrInstanceProfileName"])["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [nodes_role]  # EMR wants one name for both


def test_network_is_two_private_subnets_in_two_zones_tagged_for_emr(moto: Any, stack: dict[str, Any]) -> None:
    ec2 = moto.client("ec2")
    ids = stack["outputs"]["EmrSubnetIds"].split(",")
    subnets = ec2.describe_subnets(SubnetIds=ids)["Subnets"]
    assert len(subnets) == 2 and len({s["AvailabilityZone"] for s in subnets}) == 2
    (vpc_id,) = {s["VpcId"] for s in subnets}
    vpc = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]
    tag = {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"}
    assert tag in vpc["Tags"] and all(tag in s["Tags"] for s in subnets)
    # Private: no way to the internet; S3 through the gateway endpoint of their route table. (No public IPs:
    # moto's CloudFormation ignores MapPublicIpOnLaunch, test_template.py checks it.)
    assert not ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}])[
        "InternetGateways"
    ]
    tables = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": ids}])["RouteTables"]
    routes = [r for t in tables for r in t["Routes"]]
    assert not [r for r in routes if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
    endpoints = {
        e["ServiceName"]: e
        for e in ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["VpcEndpoints"]
    }
    # S3 for the data, the code and the logs; KMS for the local disks' keys (the security configuration).
    s3, kms = endpoints.pop("com.amazonaws.eu-west-1.s3"), endpoints.pop("com.amazonaws.eu-west-1.kms")
    assert not endpoints and s3["VpcEndpointType"] == "Gateway" and kms["VpcEndpointType"] == "Interface"
    assert {t["RouteTableId"] for t in tables} <= set(s3["RouteTableIds"])
    assert set(kms["SubnetIds"]) == set(ids) and kms["PrivateDnsEnabled"] is True


def test_outputs_feed_the_dag_settings(
    moto: Any, stack: dict[str, Any], cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = stack["outputs"]
    variables = deploy.airflow_variables(outputs)
    assert set(variables) == set(deploy.OUTPUT_VARIABLES.values())
    settings = dag_settings.load(variables)
    assert settings.backend == "emr"
    assert settings.bucket == stack["bucket"]
    assert settings.emr_service_role == outputs["EmrServiceRoleName"]
    assert settings.emr_instance_profile == outputs["EmrInstanceProfileName"]
    assert settings.emr_log_uri == f"s3://{stack['bucket']}/logs/emr/"
    assert ",".join(settings.emr_subnet_ids) == outputs["EmrSubnetIds"]
    # The names resolve in the account: the role, the instance profile and the subnet exist.
    moto.client("iam").get_role(RoleName=settings.emr_service_role)
    moto.client("iam").get_instance_profile(InstanceProfileName=settings.emr_instance_profile)
    moto.client("ec2").describe_subnets(SubnetIds=list(settings.emr_subnet_ids))

    assert cli("outputs", stack=stack["stack"]) == 0
    printed = capsys.readouterr().out
    # One command (its JSON spans lines), before the connection's.
    command = printed[printed.index("airflow variables set") : printed.index("airflow connections add")]
    name, value = shlex.split(command)[3:]
    assert name == "fruits_settings" and json.loads(value) == variables
    assert dag_settings.parse_variable(value).bucket == stack["bucket"]
    assert (
        'airflow connections add aws_default --conn-type aws --conn-extra \'{"region_name": "eu-west-1"}\'' in printed
    )
    assert outputs["AirflowPolicyArn"] in printed


def test_apply_sets_the_variables_and_keeps_an_existing_connection(stack: dict[str, Any]) -> None:
    calls: list[list[str]] = []
    connection_exists = True
    # The operator's own settings, and an old bucket the stack's output replaces.
    current = json.dumps({"fruits_weights": "/opt/weights/mobilenet.h5", "fruits_bucket": "old-bucket"})

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        if command[1:3] == ["variables", "get"]:
            return subprocess.CompletedProcess(command, 0 if current else 1, current or "", "")
        missing = command[1:3] == ["connections", "get"] and not connection_exists
        return subprocess.CompletedProcess(command, 1 if missing else 0, "", "")

    deploy.apply_settings(stack["outputs"], "eu-west-1", airflow="/opt/airflow/bin/airflow", run=run)
    (set_call,) = [c for c in calls if c[1:3] == ["variables", "set"]]
    assert set_call[3] == "fruits_settings"
    stack_settings = deploy.airflow_variables(stack["outputs"])
    assert json.loads(set_call[4]) == {**stack_settings, "fruits_weights": "/opt/weights/mobilenet.h5"}
    assert all(c[0] == "/opt/airflow/bin/airflow" for c in calls)
    assert all(c[0] == "/opt/airflow/bin/airflow" for c in calls)
    assert not [c for c in calls if c[1:3] == ["connections", "add"]]  # it exists: its credentials are kept

    calls.clear()
    connection_exists, current = False, ""
    deploy.apply_settings(stack["outputs"], "eu-west-1", run=run)
    (set_call,) = [c for c in calls if c[1:3] == ["variables", "set"]]
    assert json.loads(set_call[4]) == stack_settings  # no Variable yet: the stack's settings alone
    added = [c for c in calls if c[1:3] == ["connections", "add"]]
    extra = '{"region_name": "eu-west-1"}'
    assert added == [["airflow", "connections", "add", "aws_default", "--conn-type", "aws", "--conn-extra", extra]]


# moto's update parses every resource of the template, whatever its condition, and warns about the budget's.
@pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")
def test_update_changes_only_what_is_given(moto: Any, stack: dict[str, Any], cli: Any) -> None:
    assert cli("deploy", "--parameter", "UploadRetentionDays=400", "--skip-cost-tag", stack=stack["stack"]) == 0
    cfn = moto.client("cloudformation")
    description = cfn.describe_stacks(StackName=stack["stack"])["Stacks"][0]
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in description["Parameters"]}
    assert parameters["UploadRetentionDays"] == "400"
    assert parameters["BucketName"] == stack["bucket"] and parameters["CreateBudget"] == "false"
    rules = moto.client("s3").get_bucket_lifecycle_configuration(Bucket=stack["bucket"])["Rules"]
    assert {r["ID"]: r["Expiration"]["Days"] for r in rules if "Expiration" in r}["expire-uploads"] == 400
    assert deploy.stack_outputs(cfn, stack["stack"]) == stack["outputs"]
    assert cli("deploy", "--parameter", "UploadRetentionDays=0", "--skip-cost-tag", stack=stack["stack"]) == 0
    # Turning the budget alarm on needs an e-mail address: refused before CloudFormation is called.
    assert cli("deploy", "--budget-alarm", "--skip-cost-tag", stack=stack["stack"]) == 1


def test_deploy_refuses_without_a_region(moto: Any, names: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        deploy.main(["deploy", "--account", moto.account, "--bucket", names["bucket"], "--no-budget-alarm"])
    assert exit_info.value.code == 2
    assert "--region" in capsys.readouterr().err
    with pytest.raises(deploy.DeployError, match="--region"):
        deploy.connect("", moto.account)


def test_deploy_refuses_another_account(
    moto: Any, cli: Any, names: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "123456789012"
    assert cli("deploy", "--bucket", names["bucket"], "--no-budget-alarm", account=wrong, stack=names["stack"]) == 1
    assert f"belong to account {moto.account}, not {wrong}" in capsys.readouterr().err
    assert cli("destroy", account=wrong, stack=names["stack"]) == 1
    assert cli("outputs", account=wrong, stack=names["stack"]) == 1
    assert deploy.describe_stack(moto.client("cloudformation"), names["stack"]) is None  # nothing was created
    assert names["bucket"] not in {b["Name"] for b in moto.client("s3").list_buckets()["Buckets"]}
    assert cli("deploy", "--bucket", names["bucket"], account="12345", stack=names["stack"]) == 1  # not an account id


def test_destroy_removes_the_stack_and_keeps_the_data(
    moto: Any, cli: Any, names: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from moto.s3.models import s3_backends

    assert cli("deploy", "--bucket", names["bucket"], "--no-budget-alarm", "--skip-cost-tag", stack=names["stack"]) == 0
    outputs = deploy.stack_outputs(moto.client("cloudformation"), names["stack"])
    # Data in the bucket (written in-process: over moto's plain HTTP the TLS-only policy refuses object writes).
    s3_backends[moto.account]["aws"].put_object(names["bucket"], "stages/pca/_SUCCESS", b"")
    # What a cluster leaves in the VPC: EMR's two security groups, referencing each other.
    ec2 = moto.client("ec2")
    vpc_id = ec2.describe_subnets(SubnetIds=outputs["EmrSubnetIds"].split(","))["Subnets"][0]["VpcId"]
    groups = [
        ec2.create_security_group(GroupName=f"ElasticMapReduce-{role}", Description="EMR", VpcId=vpc_id)["GroupId"]
        for role in ("master", "slave")
    ]
    for group, other in zip(groups, reversed(groups), strict=True):
        pairs = [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": other}]}]
        ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=pairs)
    # A pipeline cluster still up: destroy refuses.
    emr = moto.client("emr")
    cluster = emr.run_job_flow(
        Name="fruits-pipeline-test",
        ReleaseLabel="emr-7.13.0",
        Tags=[{"Key": "project", "Value": "fruits"}],
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole=outputs["EmrInstanceProfileName"],
        ServiceRole=outputs["EmrServiceRoleName"],
    )["JobFlowId"]
    assert cli("destroy", stack=names["stack"]) == 1
    assert cluster in capsys.readouterr().err
    emr.terminate_job_flows(JobFlowIds=[cluster])

    assert cli("destroy", stack=names["stack"]) == 0
    assert deploy.describe_stack(moto.client("cloudformation"), names["stack"]) is None
    iam = moto.client("iam")
    roles = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert not {outputs["EmrServiceRoleName"], outputs["EmrInstanceProfileName"]} & roles
    assert outputs["AirflowPolicyArn"] not in {p["Arn"] for p in iam.list_policies(Scope="Local")["Policies"]}
    assert not ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Vpcs"]
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": groups}])["SecurityGroups"]
    # The bucket and its data are kept.
    assert moto.client("s3").list_objects_v2(Bucket=names["bucket"])["KeyCount"] == 1
    assert "Kept bucket" in capsys.readouterr().out
    assert cli("destroy", stack=names["stack"]) == 0  # nothing left: says so
    assert "nothing to remove" in capsys.readouterr().out


def test_existing_subnet_and_airflow_role(
    moto: Any, cli: Any, names: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    ec2 = moto.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/24")["Subnet"]["SubnetId"]
    iam = moto.client("iam")
    worker_role = f"airflow-worker-{names['stack']}"
    trust = json.dumps({"Version": "2012-10-17", "Statement": []})
    iam.create_role(RoleName=worker_role, AssumeRolePolicyDocument=trust)

    options = ["--bucket", names["bucket"], "--email", "ops@example.com", "--budget", "20", "--no-budget-alarm"]
    options += ["--subnet-ids", subnet, "--airflow-role", worker_role]
    assert cli("deploy", *options, stack=names["stack"]) == 0
    cfn = moto.client("cloudformation")
    outputs = deploy.stack_outputs(cfn, names["stack"])
    assert outputs["EmrSubnetIds"] == subnet
    resources = cfn.list_stack_resources(StackName=names["stack"])["StackResourceSummaries"]
    assert not [r for r in resources if r["ResourceType"].startswith("AWS::EC2::")]  # no network of its own
    attached = iam.list_attached_role_policies(RoleName=worker_role)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [outputs["AirflowPolicyArn"]]
    # moto has no Cost Explorer tag API: the attempt is reported, and deploy still succeeds.
    assert "Could not check or activate cost allocation tag 'project'" in capsys.readouterr().out

    assert cli("destroy", "--delete-bucket", stack=names["stack"]) == 0
    assert names["bucket"] not in {b["Name"] for b in moto.client("s3").list_buckets()["Buckets"]}
    assert ec2.describe_subnets(SubnetIds=[subnet])["Subnets"]  # not the stack's: untouched
    assert not iam.list_attached_role_policies(RoleName=worker_role)["AttachedPolicies"]  # detached by the teardown


def test_help_names_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        deploy.build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "{deploy,outputs,destroy}" in capsys.readouterr().out
