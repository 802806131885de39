"""``infra/template.yaml`` on its own: cfn-lint, and what no emulator deploys (the budget alarm) or should be read
in the template's own terms (least privilege, lifecycle, outputs as the DAG's Variables)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from fruits_dag import settings as dag_settings
from fruits_dag.backends import emr
from infra import deploy

# The only actions the template allows on Resource "*": none has resource-level permissions in IAM.
ALLOWED_ON_ANY_RESOURCE = {"elasticmapreduce:RunJobFlow", "elasticmapreduce:ListClusters", "cloudwatch:PutMetricData"}
BUDGET_RESOURCES = {"Budget", "AlertTopic", "AlertTopicPolicy", "AlertEmailSubscription"}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _policy_documents(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every permissions policy of the template (role inline policies, managed, bucket and topic policies)."""
    documents: dict[str, dict[str, Any]] = {}
    for name, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        for policy in properties.get("Policies", []):
            documents[f"{name}/{policy['PolicyName']}"] = policy["PolicyDocument"]
        if "PolicyDocument" in properties:
            documents[name] = properties["PolicyDocument"]
    return documents


def _statements(template: dict[str, Any], document: str) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in _policy_documents(template)[document]["Statement"]}


def _bucket_paths(resources: Any) -> set[str]:
    """``${Bucket.Arn}/uploads/*`` -> ``uploads/*``; the bucket itself -> ``<bucket>``."""
    paths = set()
    for resource in _as_list(resources):
        if resource == {"Fn::GetAtt": ["Bucket", "Arn"]}:
            paths.add("<bucket>")
        else:
            text = resource["Fn::Sub"]
            assert text.startswith("${Bucket.Arn}/"), resource
            paths.add(text.removeprefix("${Bucket.Arn}/"))
    return paths


def test_cfn_lint_passes(template_path: Path) -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run(
        [str(cfn_lint), "--regions", "eu-west-1", "us-east-1", "--", str(template_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_template_fits_a_template_body(template_path: Path) -> None:
    # deploy.py sends the template inline: CloudFormation takes up to 51,200 bytes that way.
    assert len(template_path.read_bytes()) < 51_200


def test_budget_alarm_thresholds_and_subscriber(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert template["Conditions"]["WithBudget"] == {"Fn::Equals": [{"Ref": "CreateBudget"}, "true"]}
    assert template["Parameters"]["CreateBudget"]["Default"] == "true"
    assert {name for name, r in resources.items() if r.get("Condition") == "WithBudget"} == BUDGET_RESOURCES

    budget = resources["Budget"]["Properties"]
    assert budget["Budget"]["BudgetType"] == "COST"
    assert budget["Budget"]["TimeUnit"] == "MONTHLY"
    assert budget["Budget"]["BudgetLimit"] == {"Amount": {"Ref": "MonthlyBudget"}, "Unit": "USD"}
    # The cluster carries project=fruits (and EMR copies it to its instances and volumes).
    assert budget["Budget"]["CostFilters"] == {"TagKeyValue": ["user:project$fruits"]}
    notifications = {
        (n["Notification"]["NotificationType"], n["Notification"]["Threshold"]): n
        for n in budget["NotificationsWithSubscribers"]
    }
    assert set(notifications) == {("FORECASTED", 80), ("ACTUAL", 100)}
    for entry in notifications.values():
        assert entry["Notification"]["ComparisonOperator"] == "GREATER_THAN"
        assert entry["Notification"]["ThresholdType"] == "PERCENTAGE"
        assert entry["Subscribers"] == [{"SubscriptionType": "SNS", "Address": {"Ref": "AlertTopic"}}]

    subscription = resources["AlertEmailSubscription"]["Properties"]
    assert subscription == {"TopicArn": {"Ref": "AlertTopic"}, "Protocol": "email", "Endpoint": {"Ref": "AlertEmail"}}
    (publish,) = resources["AlertTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert publish["Principal"] == {"Service": "budgets.amazonaws.com"} and publish["Action"] == "sns:Publish"
    assert publish["Resource"] == {"Ref": "AlertTopic"}
    assert "AlertTopicPolicy" in _as_list(resources["Budget"]["DependsOn"])
    # No e-mail, no alarm: the template refuses it (and deploy.py says so before calling AWS).
    rule = template["Rules"]["BudgetNeedsAnEmail"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "CreateBudget"}, "true"]}


def test_nothing_grants_s3_star_or_any_action_on_any_resource(template: dict[str, Any]) -> None:
    allowed_everywhere: set[str] = set()
    for name, document in _policy_documents(template).items():
        for statement in document["Statement"]:
            actions = _as_list(statement["Action"])
            if statement["Effect"] == "Deny":
                continue
            assert not [a for a in actions if a == "*" or a.endswith(":*")], (name, statement)
            if statement["Resource"] == "*":
                allowed_everywhere.update(actions)
    assert allowed_everywhere == ALLOWED_ON_ANY_RESOURCE
    run_job_flow = _statements(template, "AirflowPolicy")["CreateTaggedClusters"]
    assert run_job_flow["Condition"] == {"StringEquals": {"elasticmapreduce:RequestTag/project": "fruits"}}


def test_nodes_read_inputs_and_write_outputs_only(template: dict[str, Any]) -> None:
    statements = _statements(template, "EmrNodesRole/fruits-bucket-and-cluster")
    reads, writes = set(), set()
    for statement in statements.values():
        actions = set(_as_list(statement["Action"]))
        if not any(a.startswith("s3:") for a in actions):
            continue
        paths = _bucket_paths(statement["Resource"])
        if "s3:GetObject" in actions:
            reads |= paths
        if actions & {"s3:PutObject", "s3:DeleteObject"}:
            writes |= paths
    assert reads == {"uploads/*", "datasets/*", "code/*", "stages/*", "models/*", "reports/*"}
    assert writes == {"stages/*", "models/*", "reports/*", "logs/*"}
    assert _bucket_paths(statements["ListTheBucket"]["Resource"]) == {"<bucket>"}
    described = statements["DescribeOwnCluster"]
    assert described["Condition"] == {"StringEquals": {"elasticmapreduce:ResourceTag/project": "fruits"}}


def test_airflow_policy_is_what_the_dag_calls(template: dict[str, Any]) -> None:
    statements = _statements(template, "AirflowPolicy")
    emr = {a for s in statements.values() for a in _as_list(s["Action"]) if a.startswith("elasticmapreduce:")}
    assert emr == {
        "elasticmapreduce:RunJobFlow",
        "elasticmapreduce:AddJobFlowSteps",
        "elasticmapreduce:AddTags",
        "elasticmapreduce:CancelSteps",
        "elasticmapreduce:DescribeCluster",
        "elasticmapreduce:DescribeStep",
        "elasticmapreduce:ListSteps",
        "elasticmapreduce:TerminateJobFlows",
        "elasticmapreduce:ListClusters",
        "elasticmapreduce:PutAutoTerminationPolicy",
        "elasticmapreduce:GetAutoTerminationPolicy",
        "elasticmapreduce:PutManagedScalingPolicy",
        "elasticmapreduce:GetManagedScalingPolicy",
    }
    manage = statements["ManageOwnClusters"]
    assert manage["Condition"] == {"StringEquals": {"elasticmapreduce:ResourceTag/project": "fruits"}}
    passes = {
        s["Resource"]["Fn::GetAtt"][0]: s["Condition"]["StringEquals"]["iam:PassedToService"]
        for s in statements.values()
        if s["Action"] == "iam:PassRole"
    }
    assert passes == {"EmrServiceRole": "elasticmapreduce.amazonaws.com", "EmrNodesRole": "ec2.amazonaws.com"}
    assert _bucket_paths(statements["StageCode"]["Resource"]) == {"code/*"}  # the only prefix it writes
    # ... besides its writer lease, one object.
    assert _bucket_paths(statements["WriterLease"]["Resource"]) == {"locks/writer.json"}
    writes = {
        p
        for s in statements.values()
        if {"s3:PutObject", "s3:DeleteObject"} & set(_as_list(s["Action"]))
        for p in _bucket_paths(s["Resource"])
    }
    assert writes == {"code/*", "locks/writer.json"}
    s3_actions = {a for s in statements.values() for a in _as_list(s["Action"]) if a.startswith("s3:")}
    assert s3_actions == {
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
    }
    # Alerts: publish to the stack's ops topic, and nowhere else.
    publish = statements["PublishAlerts"]
    assert (publish["Action"], publish["Resource"]) == ("sns:Publish", {"Ref": "OpsTopic"})
    assert {a for s in statements.values() for a in _as_list(s["Action"]) if a.startswith("sns:")} == {"sns:Publish"}


def test_service_role_is_the_scoped_managed_policy(template: dict[str, Any]) -> None:
    role = template["Resources"]["EmrServiceRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonEMRServicePolicy_v2"}
    ]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "elasticmapreduce.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    # The v2 policy launches only into resources tagged for it: the stack's VPC and subnet are.
    for name in ("Vpc", "Subnet"):
        tags = template["Resources"][name]["Properties"]["Tags"]
        assert {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"} in tags
    # EMR wants the instance profile named as its role.
    profile = template["Resources"]["EmrNodesInstanceProfile"]["Properties"]
    assert profile["InstanceProfileName"] == {"Ref": "EmrNodesRole"} and profile["Roles"] == [{"Ref": "EmrNodesRole"}]


def test_bucket_lifecycle_keeps_uploads_and_stages_unless_configured(template: dict[str, Any]) -> None:
    rules = template["Resources"]["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    plain = {r["Prefix"]: r for r in rules if "Fn::If" not in r}
    assert plain["logs/"]["ExpirationInDays"] == {"Ref": "LogRetentionDays"}
    assert plain["code/"]["ExpirationInDays"] == {"Ref": "CodeRetentionDays"}
    # The DAG rewrites staged files still in use once they are REFRESH_AFTER_DAYS old: they must outlive that.
    assert template["Parameters"]["CodeRetentionDays"]["MinValue"] > emr.REFRESH_AFTER_DAYS + 1
    assert "ExpirationInDays" not in plain[""]  # only aborts stale multipart uploads
    optional = {r["Fn::If"][1]["Prefix"]: r["Fn::If"] for r in rules if "Fn::If" in r}
    assert set(optional) == {"uploads/", "stages/"}
    for condition, _, otherwise in optional.values():
        assert otherwise == {"Ref": "AWS::NoValue"}
        parameter = template["Conditions"][condition]["Fn::Not"][0]["Fn::Equals"][0]["Ref"]
        assert template["Parameters"][parameter]["Default"] == 0
    bucket = template["Resources"]["Bucket"]
    assert bucket["DeletionPolicy"] == "Retain" and bucket["UpdateReplacePolicy"] == "Retain"


def test_region_must_match_the_stack(template: dict[str, Any]) -> None:
    (assertion,) = template["Rules"]["StackInTheNamedRegion"]["Assertions"]
    assert assertion["Assert"] == {"Fn::Equals": [{"Ref": "Region"}, {"Ref": "AWS::Region"}]}
    assert "Default" not in template["Parameters"]["Region"]


def test_outputs_are_the_dag_variables(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    named = {
        key: o["Description"].removeprefix("DAG setting ")
        for key, o in outputs.items()
        if o["Description"].startswith("DAG setting ")
    }
    assert named == deploy.OUTPUT_VARIABLES
    assert set(outputs) == set(deploy.OUTPUT_VARIABLES) | {deploy.AIRFLOW_POLICY_OUTPUT}
    # Settings the DAG has (keys of its Variable fruits_settings), and it takes the outputs as they come.
    assert set(named.values()) <= {setting.name for setting in dag_settings.SETTINGS}
    dag_settings.load(dict.fromkeys(named.values(), "") | {"fruits_bucket": "fruits-names"})
    # Every setting that names an AWS resource of the stack is among them.
    assert {"fruits_bucket", "fruits_emr_service_role", "fruits_emr_instance_profile"} <= set(named.values())


def test_the_run_alarms_watch_what_the_dag_publishes_and_tell_the_ops_topic(template: dict[str, Any]) -> None:
    """moto's CloudFormation has no AWS::CloudWatch::Alarm: the alarms are checked here, against the metrics
    fruits_dag/metrics.py puts (a run read 10, kept 0, rejected 10) and CloudWatch's PutMetricAlarm model."""
    import datetime as dt

    import botocore.session
    from botocore.validate import ParamValidator

    from fruits_dag import metrics

    published = metrics.run_metrics({"images_read": 10, "kept": 0, "rejected": 10}, {}, "b", dt.datetime.now(dt.UTC))
    values = {d["MetricName"]: d["Value"] for d in published}
    resources = template["Resources"]
    alarms = {name: r for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert set(alarms) == {"NothingKeptAlarm", "RejectedShareAlarm"}
    model = botocore.session.get_session().get_service_model("cloudwatch").operation_model("PutMetricAlarm")
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        assert alarm["Condition"] == "WithRunAlarms"
        assert props["Namespace"] == metrics.NAMESPACE and props["MetricName"] in values
        assert props["AlarmActions"] == [{"Ref": "OpsTopic"}] and props["TreatMissingData"] == "notBreaching"
        (dimension,) = props["Dimensions"]
        # The DAG's default environment is the bucket (fruits_environment), the template's too.
        assert dimension["Name"] == "Environment"
        assert dimension["Value"] == {"Fn::If": ["DefaultEnvironment", {"Ref": "BucketName"}, {"Ref": "Environment"}]}
        concrete = {
            **{k: v for k, v in props.items() if not isinstance(v, (dict, list))},
            "AlarmName": name,
            "Dimensions": [{"Name": "Environment", "Value": "b"}],
            "AlarmActions": ["arn:aws:sns:eu-west-1:123456789012:ops"],
            "Threshold": 0.5 if props["Threshold"] == {"Ref": "RejectedShareThreshold"} else props["Threshold"],
        }
        report = ParamValidator().validate(concrete, model.input_shape)
        assert not report.has_errors(), report.generate_report()
        # That night breaches both.
        breach = values[props["MetricName"]] >= concrete["Threshold"]
        if props["ComparisonOperator"] == "GreaterThanThreshold":
            breach = values[props["MetricName"]] > concrete["Threshold"]
        assert breach, name
    assert template["Parameters"]["RejectedShareThreshold"]["Default"] == 0.5


def test_the_clusters_network_is_private_over_two_zones(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    subnets = {n: r["Properties"] for n, r in resources.items() if r["Type"] == "AWS::EC2::Subnet"}
    assert set(subnets) == {"Subnet", "Subnet2"}
    assert [p["AvailabilityZone"] for p in subnets.values()] == [
        {"Fn::Select": [0, {"Fn::GetAZs": ""}]},
        {"Fn::Select": [1, {"Fn::GetAZs": ""}]},
    ]
    assert all(p["MapPublicIpOnLaunch"] is False for p in subnets.values())
    kinds = {r["Type"] for r in resources.values()}
    assert not kinds & {"AWS::EC2::InternetGateway", "AWS::EC2::NatGateway", "AWS::EC2::Route", "AWS::EC2::EIP"}
    output = template["Outputs"]["EmrSubnetIds"]["Value"]
    assert output["Fn::If"][1] == {"Fn::Join": [",", [{"Ref": "Subnet"}, {"Ref": "Subnet2"}]]}
