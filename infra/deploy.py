"""Deploy, inspect and remove the fruits pipeline's AWS stack (``infra/template.yaml``) with one command.

    python infra/deploy.py deploy  --region eu-west-1 --account 123456789012 --bucket my-fruits --email me@example.com
    python infra/deploy.py outputs --region eu-west-1 --account 123456789012 [--apply]
    python infra/deploy.py destroy --region eu-west-1 --account 123456789012 [--delete-bucket]

Every command needs an explicit ``--region`` (no fallback on ``AWS_DEFAULT_REGION`` or a profile's region) and the
``--account`` the credentials must belong to, checked with STS ``GetCallerIdentity`` before anything else: a
forgotten profile or an environment left pointing at another account stops here, not half-way through a stack.

``deploy`` creates the stack or updates it (parameters not given keep their current values), waits, makes sure
EMR's service-linked role exists, tries to activate the ``project`` cost allocation tag the budget filters on, and
prints the ``airflow variables set fruits_settings`` and ``airflow connections add`` lines the DAG needs;
``--apply`` runs them, merging the stack's settings into the Variable's current ones. ``destroy`` refuses while
a pipeline cluster is still up, removes the security groups EMR created in the stack's VPC, deletes the stack and
waits; the bucket is kept (``DeletionPolicy: Retain``) unless ``--delete-bucket`` empties and removes it.

The functions are importable (tests run them against a moto server through ``endpoint_url``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

TEMPLATE = Path(__file__).resolve().with_name("template.yaml")
DEFAULT_STACK = "fruits-pipeline"
AWS_CONN_ID = "aws_default"
COST_TAG_KEY = "project"
COST_TAG_VALUE = "fruits"

# Stack output -> DAG setting (a key of the Airflow Variable fruits_settings: dags/fruits_dag/settings.py).
SETTINGS_VARIABLE = "fruits_settings"
OUTPUT_VARIABLES: dict[str, str] = {
    "BucketName": "fruits_bucket",
    "EmrServiceRoleName": "fruits_emr_service_role",
    "EmrInstanceProfileName": "fruits_emr_instance_profile",
    "EmrLogUri": "fruits_emr_log_uri",
    "EmrSubnetIds": "fruits_emr_subnet_ids",
    "OpsTopicArn": "fruits_alert_topic_arn",
    "EmrSecurityConfigurationName": "fruits_emr_security_configuration",
}
# The one output that is not a Variable: what to attach to Airflow's own AWS identity.
AIRFLOW_POLICY_OUTPUT = "AirflowPolicyArn"

# EMR clusters in these states still have instances (and use the security groups destroy removes).
ACTIVE_CLUSTER_STATES = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING"]
# The security groups EMR creates for itself (EMR-managed groups of a cluster in a VPC).
EMR_SECURITY_GROUP_PREFIX = "ElasticMapReduce-"


class DeployError(Exception):
    """A refusal or a failure, with a message for the operator."""


@dataclass(frozen=True)
class Aws:
    """A boto3 session checked against the expected account; ``endpoint_url`` points every client at an emulator."""

    session: boto3.Session
    region: str
    account: str
    endpoint_url: str | None = None

    def client(self, service: str, region: str | None = None, config: Config | None = None) -> Any:
        """A client of ``service`` in the session's region (or ``region``)."""
        return self.session.client(
            service, region_name=region or self.region, endpoint_url=self.endpoint_url, config=config
        )


def connect(
    region: str | None,
    account: str | None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    session: boto3.Session | None = None,
) -> Aws:
    """Open a session on ``region`` and check that its credentials belong to ``account``.

    Raises :class:`DeployError` without a region, without a 12-digit account, or when STS names another account.
    """
    if not region:
        raise DeployError("an explicit --region is required (the region of the stack and of the cluster)")
    if not account or not re.fullmatch(r"[0-9]{12}", account):
        raise DeployError("an explicit --account is required: the 12-digit id of the AWS account to act on")
    session = session or boto3.Session(profile_name=profile, region_name=region)
    try:
        actual = session.client("sts", region_name=region, endpoint_url=endpoint_url).get_caller_identity()["Account"]
    except (BotoCoreError, ClientError) as error:
        raise DeployError(f"cannot identify the credentials (STS GetCallerIdentity): {error}") from error
    if actual != account:
        raise DeployError(f"refusing to act: the credentials belong to account {actual}, not {account}")
    return Aws(session=session, region=region, account=account, endpoint_url=endpoint_url)


def describe_stack(cfn: Any, stack: str) -> dict[str, Any] | None:
    """The stack's description, or ``None`` when it does not exist."""
    try:
        return cfn.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise


def stack_outputs(cfn: Any, stack: str) -> dict[str, str]:
    """The stack's outputs as ``{key: value}``; :class:`DeployError` when there is no such stack."""
    description = describe_stack(cfn, stack)
    if description is None:
        raise DeployError(f"no stack {stack!r} in this region: run deploy first")
    return {o["OutputKey"]: o.get("OutputValue", "") for o in description.get("Outputs", [])}


def _failure_events(cfn: Any, stack: str, limit: int = 10) -> str:
    """The stack's recent failed resource events, one per line: what CloudFormation said went wrong."""
    try:
        events = cfn.describe_stack_events(StackName=stack)["StackEvents"]
    except ClientError:
        return ""
    failed = [e for e in events if e.get("ResourceStatus", "").endswith("_FAILED")][:limit]
    return "\n".join(f"  {e['LogicalResourceId']}: {e.get('ResourceStatusReason', '')}" for e in failed)


def _wait(cfn: Any, waiter_name: str, stack: str, delay: int) -> None:
    """Wait for a stack operation; a failed one raises :class:`DeployError` with CloudFormation's reasons."""
    try:
        cfn.get_waiter(waiter_name).wait(StackName=stack, WaiterConfig={"Delay": delay, "MaxAttempts": 3600 // delay})
    except WaiterError as error:
        raise DeployError(f"stack {stack} failed ({error})\n{_failure_events(cfn, stack)}".rstrip()) from error


def deploy(
    aws: Aws,
    parameters: dict[str, str],
    stack: str = DEFAULT_STACK,
    template_body: str | None = None,
    delay: int = 10,
) -> dict[str, str]:
    """Create the stack or update it to the template, wait until it is done, and return its outputs.

    ``parameters`` are template parameters; on an update the ones not given keep their current values. A stack
    left in ROLLBACK_COMPLETE by a failed first creation holds nothing and is deleted first.
    """
    cfn = aws.client("cloudformation")
    body = template_body if template_body is not None else TEMPLATE.read_text()
    description = describe_stack(cfn, stack)
    status = description["StackStatus"] if description else None
    if status == "ROLLBACK_COMPLETE":
        print(f"Stack {stack} is left over from a failed creation (ROLLBACK_COMPLETE): deleting it first")
        cfn.delete_stack(StackName=stack)
        _wait(cfn, "stack_delete_complete", stack, delay)
        description, status = None, None
    if status is not None and (status.endswith("_IN_PROGRESS") or status.endswith("_FAILED")):
        raise DeployError(f"stack {stack} is {status}: wait for it to settle, or look at its events in the console")

    common = {
        "StackName": stack,
        "TemplateBody": body,
        # Named IAM roles and policies: the DAG's Variables name them.
        "Capabilities": ["CAPABILITY_NAMED_IAM"],
        # Stack tags propagate to every resource that takes tags: all of it counts in the budget.
        "Tags": [{"Key": COST_TAG_KEY, "Value": COST_TAG_VALUE}],
    }
    given = [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()]
    previous = {p["ParameterKey"]: p.get("ParameterValue", "") for p in (description or {}).get("Parameters", [])}
    effective = {**previous, **parameters}
    if description is None:
        missing = [key for key in ("BucketName", "Region") if not parameters.get(key)]
        if missing:
            raise DeployError(f"creating the stack needs {', '.join(missing)} (--bucket, --region)")
    # The template's rule says the same; checked here first, for a clear message before anything starts.
    if effective.get("CreateBudget", "true") == "true" and not effective.get("AlertEmail"):
        raise DeployError("the budget alarm needs --email (or --no-budget-alarm)")
    if description is None:
        print(f"Creating stack {stack} in {aws.region} (account {aws.account})")
        cfn.create_stack(Parameters=given, **common)
        _wait(cfn, "stack_create_complete", stack, delay)
    else:
        # Parameters not given keep their current values, passed as they are (a NoEcho one, shown as ****, would
        # need UsePreviousValue; the template has none).
        kept = [
            {"ParameterKey": key, "UsePreviousValue": True}
            if value == "****"
            else {"ParameterKey": key, "ParameterValue": value}
            for key, value in previous.items()
            if key not in parameters
        ]
        print(f"Updating stack {stack} in {aws.region} (account {aws.account})")
        try:
            cfn.update_stack(Parameters=given + kept, **common)
        except ClientError as error:
            if "No updates are to be performed" not in str(error):
                raise
            print("Nothing to update: the stack already matches the template and parameters")
        else:
            _wait(cfn, "stack_update_complete", stack, delay)
    return stack_outputs(cfn, stack)


def ensure_emr_cleanup_role(aws: Aws) -> str:
    """Create EMR's service-linked role ``AWSServiceRoleForEMRCleanup`` unless the account has it; says which.

    EMR creates it at the first cluster of an account, as the caller of RunJobFlow, which would need
    ``iam:CreateServiceLinkedRole``: creating it here keeps that permission out of Airflow's policy. It is shared
    with any other EMR use of the account, so ``destroy`` leaves it.
    """
    iam = aws.client("iam")
    exists = "EMR's service-linked role AWSServiceRoleForEMRCleanup exists."
    try:
        iam.get_role(RoleName="AWSServiceRoleForEMRCleanup")
        return exists
    except iam.exceptions.NoSuchEntityException:
        pass
    try:
        iam.create_service_linked_role(AWSServiceName="elasticmapreduce.amazonaws.com")
    except ClientError as error:
        # A concurrent creation: IAM answers InvalidInput "... has been taken" (or EntityAlreadyExists).
        if "has been taken" not in str(error) and error.response["Error"]["Code"] != "EntityAlreadyExists":
            raise
        return exists
    return "Created EMR's service-linked role AWSServiceRoleForEMRCleanup (the account's first EMR use)."


def activate_cost_tag(aws: Aws) -> str:
    """Activate ``project`` as a cost allocation tag, so that the budget counts what carries it; says what it did.

    AWS lists a user tag for activation only after it has seen it on a billed resource (up to 24 hours after the
    first cluster), and only the payer account of an organization may activate it: a failure is reported, not raised.
    """
    # Cost Explorer's endpoint is in us-east-1 whatever the stack's region; one attempt: this is best effort.
    ce = aws.client("ce", region="us-east-1", config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    try:
        tags = ce.list_cost_allocation_tags(TagKeys=[COST_TAG_KEY], Type="UserDefined")["CostAllocationTags"]
        if any(t["Status"] == "Active" for t in tags):
            return f"Cost allocation tag {COST_TAG_KEY!r} is active: the budget counts the pipeline's resources."
        if not tags:
            return (
                f"Cost allocation tag {COST_TAG_KEY!r} is not known to billing yet (AWS lists it up to 24 h after a "
                "tagged resource first runs): run deploy again after the first night to activate it."
            )
        status = [{"TagKey": COST_TAG_KEY, "Status": "Active"}]
        errors = ce.update_cost_allocation_tags_status(CostAllocationTagsStatus=status).get("Errors", [])
        if errors:
            return f"Could not activate cost allocation tag {COST_TAG_KEY!r}: {errors[0].get('Message', errors[0])}"
        return f"Activated cost allocation tag {COST_TAG_KEY!r}: the budget counts the pipeline's costs from now on."
    except (BotoCoreError, ClientError) as error:
        return (
            f"Could not check or activate cost allocation tag {COST_TAG_KEY!r} ({error.__class__.__name__}); "
            "activate it in Billing > Cost allocation tags, from the payer account (see docs/aws.md)."
        )


def airflow_variables(outputs: dict[str, str]) -> dict[str, str]:
    """The DAG's settings from the stack's outputs (an empty value leaves the DAG's default)."""
    return {setting: outputs[key] for key, setting in OUTPUT_VARIABLES.items() if outputs.get(key)}


def merged_settings(current: str | None, outputs: dict[str, str]) -> str:
    """The Variable ``fruits_settings``: its ``current`` text (JSON, or none) with the stack's settings set; the
    operator's other settings (weights, timeouts...) are kept."""
    try:
        values = json.loads(current) if current and current.strip() else {}
    except ValueError as error:
        raise DeployError(f"Variable {SETTINGS_VARIABLE} is not JSON ({error}): fix it, then run again") from None
    if not isinstance(values, dict):
        raise DeployError(f"Variable {SETTINGS_VARIABLE} is not a JSON object: fix it, then run again")
    return json.dumps({**values, **airflow_variables(outputs)}, indent=2, sort_keys=True)


def airflow_commands(outputs: dict[str, str], region: str, current: str | None = None) -> list[list[str]]:
    """``airflow`` command lines that set the Variable (``current`` merged with the stack's settings) and add the
    AWS connection in ``region``."""
    commands = [["airflow", "variables", "set", SETTINGS_VARIABLE, merged_settings(current, outputs)]]
    extra = json.dumps({"region_name": region})
    commands.append(["airflow", "connections", "add", AWS_CONN_ID, "--conn-type", "aws", "--conn-extra", extra])
    return commands


def print_settings(outputs: dict[str, str], region: str, commands: bool = True) -> None:
    """Print the lines to paste on the Airflow host (unless ``commands`` is false), and where Airflow's policy goes."""
    if commands:
        print(
            f"\n# On the Airflow host (or rerun with --apply, which keeps the other settings of {SETTINGS_VARIABLE}):"
        )
        for command in airflow_commands(outputs, region):
            print(shlex.join(command))
    policy = outputs.get(AIRFLOW_POLICY_OUTPUT)
    if policy:
        print(
            f"\n# Airflow's own permissions: attach {policy} to the workers' role or to the user of the "
            f"{AWS_CONN_ID} connection's access keys (or deploy with --airflow-role / --airflow-user)."
        )


def apply_settings(
    outputs: dict[str, str],
    region: str,
    airflow: str = "airflow",
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> None:
    """Merge the stack's settings into the Variable with the ``airflow`` CLI, and add the connection unless one
    exists (it keeps its keys)."""
    existing = run([airflow, "variables", "get", SETTINGS_VARIABLE], capture_output=True, text=True)
    current = existing.stdout if existing.returncode == 0 else None
    for command in airflow_commands(outputs, region, current):
        command = [airflow, *command[1:]]
        if command[1] == "connections":
            existing = run([airflow, "connections", "get", AWS_CONN_ID], capture_output=True, text=True)
            if existing.returncode == 0:
                print(f"Connection {AWS_CONN_ID} exists: left as it is (its extra must hold region_name {region}).")
                continue
        result = run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise DeployError(f"{shlex.join(command)} failed:\n{result.stderr or result.stdout}".rstrip())
        print(shlex.join(command))


def active_pipeline_clusters(aws: Aws) -> list[str]:
    """Ids of this region's EMR clusters tagged ``project=fruits`` that still have instances."""
    emr = aws.client("emr")
    ids: list[str] = []
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=ACTIVE_CLUSTER_STATES):
        for summary in page["Clusters"]:
            tags = emr.describe_cluster(ClusterId=summary["Id"])["Cluster"].get("Tags", [])
            if {"Key": COST_TAG_KEY, "Value": COST_TAG_VALUE} in tags:
                ids.append(summary["Id"])
    return ids


def remove_emr_security_groups(aws: Aws, vpc_id: str) -> list[str]:
    """Delete the security groups EMR created in the stack's VPC, which would otherwise block the VPC's deletion.

    EMR's groups reference each other, so every rule is revoked first. Returns the deleted group ids.
    """
    ec2 = aws.client("ec2")
    groups = [
        g
        for g in ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]
        if g["GroupName"].startswith(EMR_SECURITY_GROUP_PREFIX)
    ]
    for group in groups:
        if group.get("IpPermissions"):
            ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=group["IpPermissions"])
        if group.get("IpPermissionsEgress"):
            ec2.revoke_security_group_egress(GroupId=group["GroupId"], IpPermissions=group["IpPermissionsEgress"])
    for group in groups:
        ec2.delete_security_group(GroupId=group["GroupId"])
    return [g["GroupId"] for g in groups]


def empty_and_delete_bucket(aws: Aws, bucket: str) -> int:
    """Delete every object (all versions) of ``bucket``, then the bucket; returns how many objects went."""
    s3 = aws.client("s3")
    count = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", [])]
        doomed += [{"Key": m["Key"], "VersionId": m["VersionId"]} for m in page.get("DeleteMarkers", [])]
        for start in range(0, len(doomed), 1000):  # DeleteObjects takes 1,000 keys at most
            s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed[start : start + 1000], "Quiet": True})
        count += len(doomed)
    s3.delete_bucket(Bucket=bucket)
    return count


def destroy(aws: Aws, stack: str = DEFAULT_STACK, delete_bucket: bool = False, delay: int = 10) -> None:
    """Remove the stack (refused while a pipeline cluster is up); the bucket stays unless ``delete_bucket``."""
    cfn = aws.client("cloudformation")
    if describe_stack(cfn, stack) is None:
        print(f"No stack {stack} in {aws.region}: nothing to remove")
        return
    outputs = stack_outputs(cfn, stack)
    clusters = active_pipeline_clusters(aws)
    if clusters:
        raise DeployError(
            f"refusing to remove the stack while pipeline clusters are up: {', '.join(clusters)} "
            "(terminate them, or wait for the DAG's teardown or idle timeout)"
        )
    resources = cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]
    vpc_ids = [r["PhysicalResourceId"] for r in resources if r["ResourceType"] == "AWS::EC2::VPC"]
    for vpc_id in vpc_ids:
        removed = remove_emr_security_groups(aws, vpc_id)
        if removed:
            print(f"Removed the security groups EMR created in {vpc_id}: {', '.join(removed)}")
    print(f"Deleting stack {stack} in {aws.region} (account {aws.account})")
    cfn.delete_stack(StackName=stack)
    _wait(cfn, "stack_delete_complete", stack, delay)
    bucket = outputs.get("BucketName")
    if bucket and delete_bucket:
        count = empty_and_delete_bucket(aws, bucket)
        print(f"Deleted bucket {bucket} and its {count} objects")
    elif bucket:
        print(f"Kept bucket {bucket} and its data (to delete them too: aws s3 rb s3://{bucket} --force)")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``deploy``, ``outputs`` and ``destroy``, each with the region/account guard."""
    parser = argparse.ArgumentParser(
        prog="infra/deploy.py",
        description="Deploy, inspect or remove the fruits pipeline's AWS stack (infra/template.yaml).",
    )
    guard = argparse.ArgumentParser(add_help=False)
    guard.add_argument("--region", required=True, help="region of the stack and the cluster, e.g. eu-west-1")
    guard.add_argument("--account", required=True, help="12-digit AWS account id the credentials must belong to")
    guard.add_argument("--stack-name", default=DEFAULT_STACK, help=f"CloudFormation stack (default {DEFAULT_STACK})")
    guard.add_argument("--profile", help="AWS named profile for the credentials (default: the usual chain)")
    guard.add_argument("--endpoint-url", help="send every AWS call there (an emulator such as moto, for tests)")
    airflow = argparse.ArgumentParser(add_help=False)
    airflow.add_argument("--apply", action="store_true", help="run the airflow commands instead of printing them")
    airflow.add_argument("--airflow", default="airflow", help="the airflow executable for --apply")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("deploy", parents=[guard, airflow], help="create or update the stack")
    up.add_argument("--bucket", help="bucket name (required to create; fruits_bucket)")
    up.add_argument("--email", help="e-mail address for the ops and budget alerts (required with the budget alarm)")
    up.add_argument("--budget", type=float, help="monthly budget in USD (default 50)")
    up.add_argument(
        "--budget-alarm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="create the AWS Budget and its alert topic (default: yes on creation, unchanged on update)",
    )
    up.add_argument(
        "--subnet-ids",
        help="existing subnets, comma-separated, tagged for EMR's managed policy (default: a new VPC, 2 subnets)",
    )
    up.add_argument("--airflow-role", help="IAM role of the Airflow workers: attach Airflow's policy to it")
    up.add_argument("--airflow-user", help="IAM user of the aws_default connection: attach Airflow's policy to it")
    up.add_argument(
        "--parameter",
        action="append",
        default=[],
        type=_key_value,
        metavar="KEY=VALUE",
        help="any other template parameter, e.g. LogRetentionDays=14 (repeatable)",
    )
    up.add_argument("--skip-cost-tag", action="store_true", help="do not try to activate the cost allocation tag")

    commands.add_parser("outputs", parents=[guard, airflow], help="print the stack's Airflow settings")

    down = commands.add_parser("destroy", parents=[guard], help="delete the stack (the bucket is kept)")
    down.add_argument("--delete-bucket", action="store_true", help="also empty and delete the bucket: ALL the data")
    return parser


def deploy_parameters(args: argparse.Namespace) -> dict[str, str]:
    """Template parameters from the ``deploy`` options (only those given: an update keeps the others)."""
    parameters: dict[str, str] = {"Region": args.region}
    options = {
        "BucketName": args.bucket,
        "AlertEmail": args.email,
        "MonthlyBudget": None if args.budget is None else f"{args.budget:g}",
        "CreateBudget": None if args.budget_alarm is None else str(args.budget_alarm).lower(),
        "SubnetIds": args.subnet_ids,
        "AirflowRoleName": args.airflow_role,
        "AirflowUserName": args.airflow_user,
    }
    parameters.update({key: value for key, value in options.items() if value is not None})
    parameters.update(dict(args.parameter))
    return parameters


def main(argv: Sequence[str] | None = None, session: boto3.Session | None = None) -> int:
    """Run the command line; returns the exit status (1 on a refusal or an AWS error)."""
    args = build_parser().parse_args(argv)
    try:
        aws = connect(args.region, args.account, args.profile, args.endpoint_url, session=session)
        if args.command == "destroy":
            destroy(aws, args.stack_name, delete_bucket=args.delete_bucket)
            return 0
        if args.command == "deploy":
            outputs = deploy(aws, deploy_parameters(args), args.stack_name)
            print(f"Stack {args.stack_name} is ready.")
            print(ensure_emr_cleanup_role(aws))
            if not args.skip_cost_tag:
                print(activate_cost_tag(aws))
        else:
            outputs = stack_outputs(aws.client("cloudformation"), args.stack_name)
        if args.apply:
            apply_settings(outputs, args.region, airflow=args.airflow)
        print_settings(outputs, args.region, commands=not args.apply)
        return 0
    except DeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as error:
        print(f"error: AWS said: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
