"""Fixtures for the infrastructure tests: the template, a moto server as AWS, credentials of a test account.

The stack is deployed into its own moto account (credentials from a moto STS ``AssumeRole`` into
:data:`ACCOUNT`), so it shares nothing with the moto state of other tests in the same process, and the account
check of ``deploy.py`` compares real STS answers.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from repo import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # ``from infra import deploy``

ACCOUNT = "111111111111"
REGION = "eu-west-1"


@dataclass(frozen=True)
class MotoAws:
    """The moto server and the test account on it: clients, and the guard options of ``infra/deploy.py``."""

    endpoint: str
    credentials: dict[str, str] = field(repr=False)
    account: str = ACCOUNT
    region: str = REGION

    def client(self, service: str) -> Any:
        """A boto3 client of ``service`` on the moto server, as the test account."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=self.credentials["AWS_SESSION_TOKEN"],
        )

    def guard(self, stack: str = "", account: str | None = None, region: str | None = None) -> list[str]:
        """``--region ... --account ... --endpoint-url ... [--stack-name ...]``."""
        options = ["--region", region or self.region, "--account", account or self.account]
        options += ["--endpoint-url", self.endpoint]
        return options + (["--stack-name", stack] if stack else [])

    def environment(self) -> dict[str, str]:
        """What an operator's shell would hold: these credentials, no profile, no region, no config files."""
        return {**self.credentials, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


UNSET_IN_ENVIRONMENT = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


def set_environment(monkeypatch: pytest.MonkeyPatch, moto: MotoAws) -> None:
    """Put the test account's credentials in the environment (for ``infra/deploy.py``'s default session)."""
    for name in UNSET_IN_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    for name, value in moto.environment().items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def template_path() -> Path:
    """``infra/template.yaml``."""
    return REPO_ROOT / "infra" / "template.yaml"


@pytest.fixture(scope="session")
def template(template_path: Path) -> dict[str, Any]:
    """The template as data, short-form intrinsics (``!Ref``) turned into long form (``{"Ref": ...}``)."""
    from cfnlint.decode import decode_str

    decoded, errors = decode_str(template_path.read_text())
    assert not errors, errors
    return decoded


@pytest.fixture(scope="package")
def moto() -> Iterator[MotoAws]:
    """A moto server on 127.0.0.1 whose CloudFormation does what the template needs (see ``moto_cfn``)."""
    import boto3
    from moto.iam.models import iam_backends
    from moto.server import ThreadedMotoServer
    from moto_cfn import MotoCloudFormationCompletion  # tests/infra is on sys.path, as tests/dag is for its helpers

    # The EMR service role attaches an AWS managed policy, which moto knows only when told to load them; the
    # setting is read when an account's IAM backend is created, so it is set for the test account alone.
    previous = os.environ.get("MOTO_IAM_LOAD_MANAGED_POLICIES")
    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    try:
        iam_backends[ACCOUNT]["aws"]
    finally:
        if previous is None:
            del os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"]
        else:
            os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = previous

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    sts = boto3.client(
        "sts",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    issued = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/deployer", RoleSessionName="infra-tests")
    credentials = {
        "AWS_ACCESS_KEY_ID": issued["Credentials"]["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": issued["Credentials"]["SecretAccessKey"],
        "AWS_SESSION_TOKEN": issued["Credentials"]["SessionToken"],
    }
    with MotoCloudFormationCompletion():
        yield MotoAws(endpoint, credentials)
    server.stop()


@pytest.fixture(scope="package")
def aws_env(moto: MotoAws) -> Iterator[MotoAws]:
    """The test account's credentials in the environment, as an operator's shell would have them."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        set_environment(monkeypatch, moto)
        yield moto


@pytest.fixture
def names() -> dict[str, str]:
    """A fresh stack and bucket name, so tests never see each other's resources."""
    suffix = uuid.uuid4().hex[:8]
    return {"stack": f"fruits-test-{suffix}", "bucket": f"fruits-test-{suffix}"}


@pytest.fixture
def cli(aws_env: MotoAws) -> Any:
    """Runs ``infra/deploy.py`` against the moto server: ``cli("deploy", "--bucket", ..., stack=..., account=...)``."""
    from infra import deploy

    def run(command: str, *args: str, stack: str = "", account: str | None = None) -> int:
        return deploy.main([command, *aws_env.guard(stack, account=account), *args])

    return run
