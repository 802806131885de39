"""What the EMR nodes get besides the code: the nodes' wheelhouse (built for their platform, installed offline by
the bootstrap), the ONNX export made on the Airflow side, and their staging (built once, kept fresh)."""

from __future__ import annotations

import io
import os
import platform
import socket
import subprocess
import sys
import tarfile
import time
import venv
from pathlib import Path

import numpy as np
import pytest

from dag_harness import REPO_ROOT, aws_connection
from fruits_dag import artifacts
from fruits_dag.backends.local import LocalCodeStore
from repo import SAMPLE_DIR, WEIGHTS_FILE

BOOTSTRAP = REPO_ROOT / "spark_jobs" / "emr_bootstrap.sh"
REQUIREMENTS = REPO_ROOT / "spark_jobs" / "requirements.txt"
# A small package with compiled (platform) wheels for CPython 3.11 on manylinux x86_64 and aarch64.
TINY = "markupsafe==3.0.2"
# Where pip would go if it tried the network: nowhere (the install must not need it).
OFFLINE = {
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
}


@pytest.mark.parametrize(
    ("instance_type", "arch"),
    [
        ("m5.xlarge", "x86_64"),
        ("m6i.2xlarge", "x86_64"),
        ("g4dn.xlarge", "x86_64"),
        ("m7i-flex.large", "x86_64"),
        ("m7g.xlarge", "aarch64"),
        ("c6gn.4xlarge", "aarch64"),
        ("r8gd.xlarge", "aarch64"),
        ("im4gn.large", "aarch64"),
    ],
)
def test_graviton_instance_types_are_aarch64(instance_type, arch):
    assert artifacts.architecture(instance_type) == arch


def test_the_nodes_requirements_leave_out_tensorflow_and_the_exporter():
    nodes = artifacts.node_requirements(REQUIREMENTS.read_text())
    names = {line.split("==")[0] for line in nodes.splitlines() if line and not line.startswith("#")}
    assert {"numpy", "pandas", "pyarrow", "pillow", "pillow-heif", "onnxruntime", "matplotlib"} <= names
    assert not names & {"tensorflow-cpu", "tf2onnx", "onnx", "ml_dtypes"}
    assert all("==" in line for line in nodes.splitlines() if line and not line.startswith("#"))


def test_the_nodes_requirements_pin_every_dependency_at_the_tested_version():
    """The wheelhouse holds exactly these pins: each node package's dependencies must be among them, at the
    versions this environment (the one the tests run in) has."""
    from importlib.metadata import distribution

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    nodes = artifacts.node_requirements(REQUIREMENTS.read_text())
    pins = dict(
        (canonicalize_name(name), version)
        for name, version in (line.split("#")[0].strip().split("==") for line in nodes.splitlines() if "==" in line)
    )
    environment = {**default_environment(), "extra": ""}
    missing = set()
    for name in pins:
        assert distribution(name).version == pins[name], f"{name}: pinned {pins[name]}, tests run on another"
        for requirement in map(Requirement, distribution(name).requires or []):
            if requirement.marker is None or requirement.marker.evaluate(environment):
                missing |= {canonicalize_name(requirement.name)} - pins.keys()
    assert not missing, f"dependencies of node packages without a pin in requirements.txt: {sorted(missing)}"


def test_a_wheelhouse_is_named_by_its_inputs():
    first = artifacts.wheelhouse(TINY + "\n", "x86_64")
    assert first.name == artifacts.wheelhouse(TINY + "\n", "x86_64").name
    assert first.name.endswith("-cp311-x86_64.tar")
    assert first.name != artifacts.wheelhouse(TINY + "\n", "aarch64").name
    assert first.name != artifacts.wheelhouse("markupsafe==3.0.1\n", "x86_64").name


@pytest.fixture(scope="module")
def tiny_wheelhouses(tmp_path_factory) -> dict[str, Path]:
    """A real wheelhouse per architecture, from the package index (one small package: CI stays short)."""
    folder = tmp_path_factory.mktemp("wheelhouses")
    built = {}
    for arch in artifacts.ARCHITECTURES:
        artifact = artifacts.wheelhouse(TINY + "\n", arch)
        built[arch] = artifacts.build_wheelhouse(TINY + "\n", arch, folder / artifact.name)
    return built


@pytest.mark.parametrize("arch", artifacts.ARCHITECTURES)
def test_the_wheelhouse_holds_wheels_for_the_nodes_platform(tiny_wheelhouses, arch):
    with tarfile.open(tiny_wheelhouses[arch]) as archive:
        names = archive.getnames()
        requirements = archive.extractfile("requirements.txt").read().decode()  # type: ignore[union-attr]
    assert requirements == TINY + "\n"
    (wheel,) = [n for n in names if n != "requirements.txt"]
    # CPython 3.11, manylinux (glibc <= 2.34: Amazon Linux 2023), the node's architecture.
    assert wheel.lower().startswith("markupsafe-3.0.2-cp311-cp311-") and wheel.endswith(".whl")
    tags = wheel.removesuffix(".whl").split("-")[-1].split(".")
    assert tags and all(t.startswith("manylinux") and t.endswith(arch) for t in tags)


def test_the_bootstrap_installs_the_wheelhouse_offline_in_a_fresh_environment(tiny_wheelhouses, tmp_path):
    arch = platform.machine()
    if arch not in tiny_wheelhouses:
        pytest.skip(f"no wheelhouse for this machine's architecture ({arch})")
    environment = tmp_path / "node"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    # The bootstrap's own function, as the script defines it (sourced: main does not run), without sudo.
    result = subprocess.run(
        [
            "bash",
            "-c",
            'source "$1" && install_wheelhouse "$2" "$3"',
            "bash",
            BOOTSTRAP,
            tiny_wheelhouses[arch],
            python,
        ],
        env={**os.environ, **OFFLINE, "SUDO": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    version = subprocess.run(
        [python, "-c", "import markupsafe; print(markupsafe.__version__)"], capture_output=True, text=True
    )
    assert version.stdout.strip() == "3.0.2", version.stderr


def test_the_bootstrap_picks_the_wheelhouse_of_its_architecture():
    def pick(arch: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", f'source "$1" && wheelhouse_for {arch} x86_64=s3://b/x.tar aarch64=s3://b/a.tar']
            + ["bash", str(BOOTSTRAP)],
            capture_output=True,
            text=True,
        )

    assert pick("aarch64").stdout.strip() == "s3://b/a.tar"
    assert pick("x86_64").stdout.strip() == "s3://b/x.tar"
    missing = pick("riscv64")
    assert missing.returncode == 1 and "no wheelhouse for riscv64" in missing.stderr


def test_a_wheel_missing_for_the_platform_is_a_clear_error(tmp_path):
    # tensorflow-cpu publishes no aarch64 wheel under that name: the reason to keep it off the nodes.
    with pytest.raises(artifacts.ArtifactError, match="aarch64"):
        artifacts.build_wheelhouse("tensorflow-cpu==2.21.0\n", "aarch64", tmp_path / "w.tar")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_package_index_that_never_answers_is_given_up_after_the_build_timeout(tmp_path, monkeypatch):
    """A hung index (it accepts the connection and says nothing) must not hold the worker: pip is killed."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no configured index or local wheel folder
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{silent.getsockname()[1]}/simple/")
        monkeypatch.setenv("PIP_TIMEOUT", "600")  # pip's own socket timeout would not save us
        started = time.monotonic()
        with pytest.raises(
            artifacts.ArtifactError, match=r"did not finish in 5 s and was killed.*fruits_build_timeout"
        ):
            artifacts.build_wheelhouse(TINY + "\n", "x86_64", tmp_path / "w.tar", timeout=5)
        assert time.monotonic() - started < 60
    assert not list(tmp_path.iterdir())


def test_an_artifact_is_built_once_and_then_only_staged(tmp_path):
    builds = []

    def build(target: Path) -> None:
        builds.append(target)
        target.write_bytes(b"built")

    artifact = artifacts.Artifact("thing-123.bin", build)
    store, prefix = LocalCodeStore(), str(tmp_path / "code" / "artifacts")
    uri = artifacts.ensure_staged(artifact, prefix, tmp_path / "cache", store)
    assert Path(uri).read_bytes() == b"built" and len(builds) == 1
    assert artifacts.ensure_staged(artifact, prefix, tmp_path / "cache", store) == uri
    # Another worker, with an empty cache: the store has it, nothing is built.
    assert artifacts.ensure_staged(artifact, prefix, tmp_path / "other-cache", store) == uri
    assert len(builds) == 1
    # Gone from the store (expired), still in the cache: uploaded again, not rebuilt.
    Path(uri).unlink()
    artifacts.ensure_staged(artifact, prefix, tmp_path / "cache", store)
    assert Path(uri).read_bytes() == b"built" and len(builds) == 1


def test_an_old_staged_file_is_refreshed_in_s3(moto_endpoint, boto, monkeypatch):
    from fruits_dag.backends import emr

    s3 = boto("s3")
    s3.create_bucket(Bucket="fruits-artifacts")
    s3.put_object(Bucket="fruits-artifacts", Key="code/artifacts/w.tar", Body=b"wheels", Metadata={"k": "v"})
    before = s3.head_object(Bucket="fruits-artifacts", Key="code/artifacts/w.tar")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(moto_endpoint))
    store = emr.S3CodeStore("aws_default")
    store.refresh("s3://fruits-artifacts/code/artifacts/w.tar")  # younger than REFRESH_AFTER_DAYS: untouched
    assert s3.head_object(Bucket="fruits-artifacts", Key="code/artifacts/w.tar")["ETag"] == before["ETag"]
    assert (
        s3.head_object(Bucket="fruits-artifacts", Key="code/artifacts/w.tar")["LastModified"] == before["LastModified"]
    )

    monkeypatch.setattr(emr.code_store, "REFRESH_AFTER_DAYS", -1)  # every file counts as old
    time.sleep(1.1)  # LastModified has a resolution of one second
    store.refresh("s3://fruits-artifacts/code/artifacts/w.tar")
    after = s3.head_object(Bucket="fruits-artifacts", Key="code/artifacts/w.tar")
    assert after["LastModified"] > before["LastModified"]
    assert after["Metadata"] == {"k": "v"} and after["ContentLength"] == len(b"wheels")


def test_a_missing_weights_file_fails_the_export_with_its_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        artifacts.onnx_model(str(tmp_path / "nope.h5"), REPO_ROOT / "spark_jobs")


@pytest.fixture
def emr_backend(moto_endpoint, boto, monkeypatch, tmp_path):
    """The EMR backend's prepare() against moto, with a copy of the jobs whose requirements are one small package."""
    import shutil

    from fruits_dag.backends import emr
    from fruits_dag.settings import load

    jobs = tmp_path / "spark_jobs"
    shutil.copytree(REPO_ROOT / "spark_jobs", jobs, ignore=shutil.ignore_patterns("__pycache__"))
    (jobs / "requirements.txt").write_text(f"{TINY}\ntensorflow-cpu==2.21.0  # {artifacts.NOT_ON_NODES}\n")
    boto("s3").create_bucket(Bucket="fruits-prepare")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(moto_endpoint))

    def backend(**variables: str) -> emr.EmrBackend:
        base = {
            "fruits_bucket": "fruits-prepare",
            "fruits_jobs_dir": str(jobs),
            "fruits_build_cache": str(tmp_path / "cache"),
            "fruits_weights": str(tmp_path / "model.onnx"),
        }
        return emr.EmrBackend(load({**base, **variables}))

    (tmp_path / "model.onnx").write_bytes(b"onnx stand-in")
    return backend


def test_prepare_builds_and_stages_a_wheelhouse_per_architecture_of_the_cluster(emr_backend, boto):
    from fruits_dag.params import RunParams

    prepared = emr_backend().prepare(RunParams(core_instance_type="m7g.xlarge"))
    assert prepared.model is None  # a given .onnx goes in the bundle, as it is
    wheelhouses = prepared.extras["wheelhouses"]
    assert sorted(wheelhouses) == ["aarch64", "x86_64"]  # primary m5 (x86_64), core m7g (Graviton)
    listing = boto("s3").list_objects_v2(Bucket="fruits-prepare", Prefix="code/artifacts/")["Contents"]
    assert {f"s3://fruits-prepare/{o['Key']}" for o in listing} == set(wheelhouses.values())
    body = boto("s3").get_object(Bucket="fruits-prepare", Key=wheelhouses["aarch64"].split("/", 3)[3])["Body"]
    with tarfile.open(fileobj=io.BytesIO(body.read())) as archive:
        requirements = archive.extractfile("requirements.txt").read().decode()  # type: ignore[union-attr]
    assert requirements == TINY + "\n"  # the not-on-nodes line left out


def test_prepare_refuses_prebuilt_wheelhouses_without_the_clusters_architecture(emr_backend, tmp_path):
    from fruits_dag.params import RunParams
    from fruits_dag.plan import PlanError

    prebuilt = tmp_path / "wheelhouse-abc-cp311-x86_64.tar"
    prebuilt.write_bytes(b"tar")
    backend = emr_backend(fruits_wheelhouse=str(prebuilt))
    assert backend.prepare(RunParams()).extras["wheelhouses"] == {
        "x86_64": "s3://fruits-prepare/code/artifacts/wheelhouse-abc-cp311-x86_64.tar"
    }
    with pytest.raises(PlanError, match="aarch64"):
        backend.prepare(RunParams(core_instance_type="m7g.xlarge"))


@pytest.mark.skipif(not WEIGHTS_FILE.is_file(), reason=f"weights file missing: {WEIGHTS_FILE}")
def test_prepare_exports_the_keras_weights_to_onnx_once_and_the_export_matches_keras(emr_backend, boto, tmp_path):
    """The Keras weights become the ONNX model embed loads on the nodes: exported on the Airflow side by the jobs'
    own exporter, staged under code/artifacts/, equal to Keras; a worker with an empty cache exports nothing."""
    from fruits_dag.params import RunParams

    sys.path.insert(0, str(REPO_ROOT / "spark_jobs"))
    from fruits_common import embedding, images

    prepared = emr_backend(fruits_weights=str(WEIGHTS_FILE)).prepare(RunParams())
    name = embedding.onnx_name(str(WEIGHTS_FILE))
    assert prepared.model == f"s3://fruits-prepare/code/artifacts/{name}"
    staged = tmp_path / name
    staged.write_bytes(boto("s3").get_object(Bucket="fruits-prepare", Key=f"code/artifacts/{name}")["Body"].read())

    photo = next(iter(sorted(SAMPLE_DIR.glob("Training/*/*.jpg"))))
    pixels = images.model_input(photo.read_bytes())[np.newaxis]
    exported = embedding.get_model(str(staged), "onnx", threads=2)(pixels)
    keras = embedding.keras_feature_function(str(WEIGHTS_FILE))(pixels.astype(np.float32))["features"].numpy()
    assert exported.shape == (1, 1280)
    np.testing.assert_allclose(exported, keras, atol=1e-4)

    other_cache = tmp_path / "other-worker-cache"
    again = emr_backend(fruits_weights=str(WEIGHTS_FILE), fruits_build_cache=str(other_cache)).prepare(RunParams())
    assert again.model == prepared.model
    assert not other_cache.exists() or not any(other_cache.rglob("*.onnx"))  # S3 had it: nothing exported
