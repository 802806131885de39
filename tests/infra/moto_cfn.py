"""Test-side completion of moto 5.2.5's CloudFormation for what ``infra/template.yaml`` uses.

moto's CloudFormation creates a template's resources through its own models and silently skips what they do not
know (a warning, and the stack still reaches CREATE_COMPLETE). For this template that means, on AWS vs. moto:

* ``AWS::S3::Bucket``: moto applies ``BucketEncryption`` and ``Tags`` only; ``PublicAccessBlockConfiguration``,
  ``OwnershipControls``, ``VersioningConfiguration`` and ``LifecycleConfiguration`` are dropped.
* ``AWS::S3::BucketPolicy``: no model at all.
* ``AWS::IAM::Role``: ``ManagedPolicyArns`` is ignored, and inline ``Policies`` come back from GetRolePolicy as
  Python reprs instead of JSON.
* ``AWS::IAM::ManagedPolicy`` has no update: an update that touches it loses it.
* Stack deletion: moto has no delete for managed policies, route tables, internet gateways, their attachments or
  VPC endpoints: the policy stays, and deleting the VPC fails with DependencyViolation. ``AWS::EMR::
  SecurityConfiguration``'s delete reads its ``Name`` unresolved (an ``Fn::Sub`` dict) and fails.

:class:`MotoCloudFormationCompletion` makes moto's CloudFormation do those things through moto's own S3, IAM and EC2
backends, with the values CloudFormation resolved from the template (the calls the AWS API would receive), so that
a deployed stack is inspected through the AWS API as on AWS. It patches classes of the moto server that runs in the
test process; :meth:`uninstall` restores them. Not covered, on purpose: ``AWS::Budgets::Budget`` (no moto model,
and it is what the template's ``CreateBudget=false`` leaves out together with its SNS topic, policy and e-mail
subscription); tests/infra/test_template.py checks those on the template itself.
"""

from __future__ import annotations

import json
from typing import Any

from moto.cloudformation import parsing
from moto.ec2.models import ec2_backends
from moto.ec2.models.internet_gateways import InternetGateway
from moto.ec2.models.route_tables import RouteTable
from moto.ec2.models.vpcs import VPCEndPoint
from moto.ec2.models.vpn_gateway import VPCGatewayAttachment
from moto.emr.models import SecurityConfiguration, emr_backends
from moto.iam.models import ManagedPolicy, Role, iam_backends
from moto.s3.models import FakeBucket, s3_backends

BUCKET_POLICY_TYPE = "AWS::S3::BucketPolicy"


def _s3(account_id: str) -> Any:
    return s3_backends[account_id]["aws"]


def _apply_bucket_properties(bucket_name: str, properties: dict[str, Any], account_id: str) -> None:
    """What CloudFormation does with the bucket properties moto drops: the S3 API calls they stand for."""
    backend = _s3(account_id)
    if "PublicAccessBlockConfiguration" in properties:
        backend.put_public_access_block(bucket_name, properties["PublicAccessBlockConfiguration"])
    if "OwnershipControls" in properties:
        backend.put_bucket_ownership_controls(
            bucket_name, properties["OwnershipControls"]["Rules"][0]["ObjectOwnership"]
        )
    if "VersioningConfiguration" in properties:
        backend.put_bucket_versioning(bucket_name, properties["VersioningConfiguration"]["Status"])
    if "LifecycleConfiguration" in properties:
        rules = []
        for rule in properties["LifecycleConfiguration"]["Rules"]:
            if rule is None:  # an !If that resolved to AWS::NoValue
                continue
            api_rule: dict[str, Any] = {"ID": rule["Id"], "Status": rule["Status"], "Prefix": rule.get("Prefix", "")}
            if "ExpirationInDays" in rule:
                api_rule["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
            if "NoncurrentVersionExpiration" in rule:
                days = int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
                api_rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": days}
            if "AbortIncompleteMultipartUpload" in rule:
                days = int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
                api_rule["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": days}
            rules.append(api_rule)
        backend.put_bucket_lifecycle_configuration(bucket_name, rules)


class BucketPolicyModel:
    """``AWS::S3::BucketPolicy`` for moto's CloudFormation: PutBucketPolicy on create, DeleteBucketPolicy on delete.

    Duck-typed rather than a ``CloudFormationModel`` subclass: a subclass would register itself with moto for the
    rest of the process.
    """

    def __init__(self, bucket_name: str) -> None:
        self.bucket_name = bucket_name

    @property
    def physical_resource_id(self) -> str:
        return self.bucket_name

    @staticmethod
    def cloudformation_type() -> str:
        return BUCKET_POLICY_TYPE

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return False

    def is_created(self) -> bool:
        return True

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str, **kwargs: Any
    ) -> BucketPolicyModel:
        properties = cloudformation_json["Properties"]
        _s3(account_id).put_bucket_policy(properties["Bucket"], json.dumps(properties["PolicyDocument"]).encode())
        return cls(properties["Bucket"])

    @classmethod
    def update_from_cloudformation_json(
        cls,
        original_resource: BucketPolicyModel,
        new_resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
    ) -> BucketPolicyModel:
        return cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)

    def delete(self, account_id: str, region_name: str) -> None:
        if self.bucket_name in _s3(account_id).buckets:
            _s3(account_id).delete_bucket_policy(self.bucket_name)


class MotoCloudFormationCompletion:
    """Installs the behaviour described in the module docstring; use as a context manager."""

    def __init__(self) -> None:
        self._originals: list[tuple[Any, str, Any]] = []

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._originals.append((owner, name, owner.__dict__[name] if name in owner.__dict__ else None))
        setattr(owner, name, value)

    def install(self) -> MotoCloudFormationCompletion:
        """Patch moto's CloudFormation parsing and models."""
        original_class_from_type = parsing.resource_class_from_type

        def resource_class_from_type(resource_type: str) -> Any:
            if resource_type == BUCKET_POLICY_TYPE:
                return BucketPolicyModel
            return original_class_from_type(resource_type)

        self._patch(parsing, "resource_class_from_type", resource_class_from_type)

        bucket_create = FakeBucket.create_from_cloudformation_json.__func__
        bucket_update = FakeBucket.update_from_cloudformation_json.__func__

        def create_bucket(
            cls: type,
            resource_name: str,
            cloudformation_json: dict[str, Any],
            account_id: str,
            region_name: str,
            **kwargs: Any,
        ) -> Any:
            bucket = bucket_create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
            _apply_bucket_properties(bucket.name, cloudformation_json.get("Properties", {}), account_id)
            return bucket

        def update_bucket(
            cls: type,
            original_resource: Any,
            new_resource_name: str,
            cloudformation_json: dict[str, Any],
            account_id: str,
            region_name: str,
        ) -> Any:
            bucket = bucket_update(
                cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name
            )
            _apply_bucket_properties(bucket.name, cloudformation_json.get("Properties", {}), account_id)
            return bucket

        self._patch(FakeBucket, "create_from_cloudformation_json", classmethod(create_bucket))
        self._patch(FakeBucket, "update_from_cloudformation_json", classmethod(update_bucket))

        role_create = Role.create_from_cloudformation_json.__func__
        role_delete = Role.delete_from_cloudformation_json.__func__

        def create_role(
            cls: type,
            resource_name: str,
            cloudformation_json: dict[str, Any],
            account_id: str,
            region_name: str,
            **kwargs: Any,
        ) -> Any:
            role = role_create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
            # moto keeps a template's inline policies as dicts and answers GetRolePolicy with their Python repr.
            role.policies = {name: json.dumps(document) for name, document in role.policies.items()}
            for arn in cloudformation_json["Properties"].get("ManagedPolicyArns", []):
                iam_backends[account_id]["aws"].attach_role_policy(arn, role.name)
            return role

        def delete_role(
            cls: type, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str
        ) -> None:
            # As CloudFormation does: detach the role's managed policies (the json here is the unresolved template).
            backend = iam_backends[account_id]["aws"]
            for arn in list(backend.get_role(resource_name).managed_policies):
                backend.detach_role_policy(arn, resource_name)
            role_delete(cls, resource_name, cloudformation_json, account_id, region_name)

        self._patch(Role, "create_from_cloudformation_json", classmethod(create_role))
        self._patch(Role, "delete_from_cloudformation_json", classmethod(delete_role))

        # Deletes moto lacks. ``resource_name`` is the physical id; the resource json is the unresolved template.
        # moto deletes a stack's resources in no particular order, retrying what fails; where a dependent resource
        # would then be stuck, its dependency's delete removes it first, as CloudFormation's order would have.
        def delete_managed_policy(
            cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
        ) -> None:
            backend = iam_backends[account_id]["aws"]  # resource_name is the policy's ARN
            policy = backend.get_policy(resource_name)
            for holder in [*backend.roles.values(), *backend.users.values(), *backend.groups.values()]:
                if resource_name in holder.managed_policies:
                    policy.detach_from(holder)
            backend.delete_policy(resource_name)

        def update_managed_policy(
            cls: type,
            original_resource: Any,
            new_resource_name: str,
            cloudformation_json: dict[str, Any],
            account_id: str,
            region_name: str,
        ) -> Any:
            # CloudFormation updates a managed policy in place; replacing it under the same name (same ARN, same
            # document, same attachments) shows the same state through the API.
            delete_managed_policy(cls, original_resource.arn, cloudformation_json, account_id, region_name)
            return ManagedPolicy.create_from_cloudformation_json(
                new_resource_name, cloudformation_json, account_id, region_name
            )

        def delete_route_table(
            cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
        ) -> None:
            ec2 = ec2_backends[account_id][region_name]
            for endpoint in list(ec2.vpc_end_points.values()):
                if resource_name in (endpoint.route_table_ids or []) and endpoint.state != "deleted":
                    ec2.delete_vpc_endpoints([endpoint.id])  # it removes its routes from this table
            for association_id in list(ec2.get_route_table(resource_name).associations):
                ec2.disassociate_route_table(association_id)
            ec2.delete_route_table(resource_name)

        def delete_gateway_attachment(
            cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
        ) -> None:
            ec2 = ec2_backends[account_id][region_name]  # resource_name is the VPC id
            for gateway in ec2.describe_internet_gateways(filters={"attachment.vpc-id": [resource_name]}):
                ec2.detach_internet_gateway(internet_gateway_id=gateway.id, vpc_id=resource_name)

        def delete_internet_gateway(
            cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
        ) -> None:
            ec2_backends[account_id][region_name].delete_internet_gateway(resource_name)

        def delete_vpc_endpoint(
            cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
        ) -> None:
            ec2 = ec2_backends[account_id][region_name]
            if ec2.vpc_end_points[resource_name].state != "deleted":
                ec2.delete_vpc_endpoints([resource_name])

        self._patch(ManagedPolicy, "delete_from_cloudformation_json", classmethod(delete_managed_policy))
        self._patch(ManagedPolicy, "update_from_cloudformation_json", classmethod(update_managed_policy))
        self._patch(RouteTable, "delete_from_cloudformation_json", classmethod(delete_route_table))
        self._patch(VPCGatewayAttachment, "delete_from_cloudformation_json", classmethod(delete_gateway_attachment))
        self._patch(InternetGateway, "delete_from_cloudformation_json", classmethod(delete_internet_gateway))
        self._patch(VPCEndPoint, "delete_from_cloudformation_json", classmethod(delete_vpc_endpoint))

        def delete_security_configuration(
            cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
        ) -> None:
            emr_backends[account_id][region_name].delete_security_configuration(resource_name)  # the name

        def update_security_configuration(
            cls: type,
            original_resource: Any,
            new_resource_name: str,
            cloudformation_json: Any,
            account_id: str,
            region_name: str,
        ) -> Any:
            # A security configuration cannot change in place on AWS either; an update that keeps it keeps it.
            return original_resource

        self._patch(
            SecurityConfiguration, "delete_from_cloudformation_json", classmethod(delete_security_configuration)
        )
        self._patch(
            SecurityConfiguration, "update_from_cloudformation_json", classmethod(update_security_configuration)
        )
        return self

    def uninstall(self) -> None:
        """Restore what :meth:`install` patched."""
        for owner, name, original in reversed(self._originals):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._originals.clear()

    def __enter__(self) -> MotoCloudFormationCompletion:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
