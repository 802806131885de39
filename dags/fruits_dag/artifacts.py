"""What the EMR nodes need besides the code, built once on the Airflow side and staged under ``code/artifacts/``.

* **The ONNX model**: MobileNetV2 exported once from the Keras weights (TensorFlow is on the Airflow image, not on
  the nodes), named by the weights' content and the opset.
* **The wheelhouse**: the wheels of the nodes' Python packages (``requirements.txt`` without its
  ``not-on-nodes`` lines) for the cluster's platform (CPython 3.11, manylinux, x86_64 or aarch64), in one tar with
  the requirements file; the bootstrap installs it with ``pip --no-index``. Named by the requirements' content,
  the Python version and the architecture.

An artifact's name is a function of its inputs, so "is it staged?" is an S3 HEAD, and it is built (in the build
cache on the worker) only when neither S3 nor the cache has it: once per weights file, once per requirements change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fruits_dag.bundle import BundleFile, CodeStore

log = logging.getLogger(__name__)

NODE_PYTHON = "3.11"  # what emr_bootstrap.sh installs and requirements.txt is tested with
ARCHITECTURES = ("x86_64", "aarch64")
NOT_ON_NODES = "not-on-nodes"  # the requirements.txt marker of packages the nodes never get (TensorFlow...)
# Amazon Linux 2023 (EMR 7) has glibc 2.34: any manylinux wheel up to 2.34 runs there.
_GLIBC_MINORS = range(34, 16, -1)
_GRAVITON_FAMILY = re.compile(r"[a-z]+\d+g[a-z]*")  # m7g, c6gn, r8gd, x2gd, im4gn: a "g" after the generation


class ArtifactError(RuntimeError):
    """An artifact could not be built (the message says why and what to do)."""


@dataclass(frozen=True)
class Artifact:
    """A file named by its inputs, and how to build it at a given path."""

    name: str
    build: Callable[[Path], None]


def architecture(instance_type: str) -> str:
    """``aarch64`` for a Graviton instance type (``m7g.xlarge``), else ``x86_64``."""
    family = instance_type.split(".", 1)[0]
    return "aarch64" if _GRAVITON_FAMILY.fullmatch(family) else "x86_64"


def node_requirements(text: str) -> str:
    """``requirements.txt`` as the nodes install it: without the lines marked ``not-on-nodes``."""
    return "".join(line for line in text.splitlines(keepends=True) if NOT_ON_NODES not in line)


def platform_tags(arch: str) -> list[str]:
    """The manylinux platform tags a wheel may carry to run on the nodes (newest first)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: one of {', '.join(ARCHITECTURES)}")
    tags = [f"manylinux_2_{minor}_{arch}" for minor in _GLIBC_MINORS]
    return [*tags, f"manylinux2014_{arch}"]


def wheelhouse(requirements: str, arch: str, python: str = NODE_PYTHON, timeout: float | None = None) -> Artifact:
    """The wheelhouse artifact of ``requirements`` (already without ``not-on-nodes`` lines) for ``arch``; its
    build is killed after ``timeout`` seconds (setting ``fruits_build_timeout``)."""
    tags = platform_tags(arch)
    key = hashlib.sha256("\n".join([python, arch, *tags, requirements]).encode()).hexdigest()[:16]
    name = f"wheelhouse-{key}-cp{python.replace('.', '')}-{arch}.tar"
    return Artifact(name, lambda target: build_wheelhouse(requirements, arch, target, python, timeout))


def build_wheelhouse(
    requirements: str, arch: str, target: Path, python: str = NODE_PYTHON, timeout: float | None = None
) -> Path:
    """Download the wheels of ``requirements`` for the nodes' platform and write them, with the requirements file,
    as one tar at ``target`` (atomically). Binary wheels only: nothing is compiled, on this machine or the nodes."""
    python_tag = f"cp{python.replace('.', '')}"
    with tempfile.TemporaryDirectory(prefix="fruits-wheelhouse-") as tmp:
        folder = Path(tmp)
        (folder / "requirements.txt").write_text(requirements)
        wheels = folder / "wheels"
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--dest", str(wheels), "--only-binary=:all:",
            "--implementation", "cp", "--python-version", python, "--abi", python_tag, "--abi", "abi3", "--abi", "none",
            *(f"--platform={tag}" for tag in platform_tags(arch)),
            "-r", str(folder / "requirements.txt"),
        ]  # fmt: skip
        result = _run(command, f"pip download of the {arch} wheelhouse", timeout)
        if result.returncode != 0:
            raise ArtifactError(
                f"pip could not download the nodes' wheels for {python_tag} {arch} (a package without such a "
                f"wheel, or no access to the package index):\n{(result.stderr or result.stdout)[-3000:]}"
            )
        downloaded = sorted(wheels.iterdir())
        not_wheels = [p.name for p in downloaded if p.suffix != ".whl"]
        if not_wheels or not downloaded:
            raise ArtifactError(f"the wheelhouse must hold wheels only, got {not_wheels or 'nothing'}")
        _write_atomically(target, lambda partial: _tar(partial, folder / "requirements.txt", downloaded))
    log.info("Built the %s wheelhouse (%d wheels, %.0f MB)", arch, len(downloaded), target.stat().st_size / 1e6)
    return target


def _tar(path: Path, requirements: Path, wheels: Iterable[Path]) -> None:
    # Uncompressed: wheels are zip files already. Flat: the bootstrap points pip's --find-links at the folder.
    with tarfile.open(path, "w") as archive:
        archive.add(requirements, arcname="requirements.txt")
        for wheel in wheels:
            archive.add(wheel, arcname=wheel.name)


def onnx_model(weights: str, jobs_dir: Path, timeout: float | None = None) -> Artifact:
    """The ONNX export of the Keras ``weights`` (a .h5 file or ``imagenet``), made by the jobs' own exporter in a
    child process.

    A child process: TensorFlow (~2 GB, its threads) never loads into the Airflow task, and the name and the
    export come from the same code the jobs use (``fruits_common.embedding``).
    """
    if weights != "imagenet" and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights} (setting fruits_weights)")
    name = _embedding(jobs_dir, timeout, "name", weights).strip()
    return Artifact(name, lambda target: _write_atomically(target, lambda p: _export(jobs_dir, weights, p, timeout)))


def _export(jobs_dir: Path, weights: str, target: Path, timeout: float | None) -> None:
    log.info("Exporting %s to ONNX (once per weights file)", weights)
    _embedding(jobs_dir, timeout, "export", weights, str(target))


def _run(command: list[str], what: str, timeout: float | None, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` that kills the child after ``timeout`` s: a hung index never holds a worker for ever."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as expired:
        output = expired.stderr or expired.stdout or b""
        tail = (output.decode(errors="replace") if isinstance(output, bytes) else output)[-2000:]
        raise ArtifactError(
            f"{what} did not finish in {timeout:.0f} s and was killed (setting fruits_build_timeout); "
            f"its last output:\n{tail}"
        ) from None


def _embedding(jobs_dir: Path, timeout: float | None, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(jobs_dir), os.environ.get("PYTHONPATH")]))}
    result = _run(
        [sys.executable, "-m", "fruits_common.embedding", *args], f"fruits_common.embedding {args[0]}", timeout, env=env
    )
    if result.returncode != 0:
        raise ArtifactError(f"fruits_common.embedding {args[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        write(partial)
        partial.replace(target)  # a crash leaves no half artifact under the final name
    finally:
        partial.unlink(missing_ok=True)


def ensure_staged(artifact: Artifact, prefix: str, cache: Path, store: CodeStore) -> str:
    """``<prefix>/<name>``, staged: kept as it is when the store has it (refreshed if old), else uploaded from the
    build cache, built there first when missing."""
    uri = f"{prefix}/{artifact.name}"
    if store.size_of(uri):
        store.refresh(uri)
        return uri
    local = cache / artifact.name
    if not local.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        artifact.build(local)
    store.write(uri, BundleFile(artifact.name, path=local))
    log.info("Staged %s", uri)
    return uri


def main(argv: list[str] | None = None) -> int:
    """``python -m fruits_dag.artifacts --arch ARCH --output DIR``: build the nodes' wheelhouse (``make wheelhouse``)
    from ``spark_jobs/requirements.txt`` and print its path."""
    import argparse

    from fruits_dag.bundle import REQUIREMENTS
    from fruits_dag.settings import DEFAULT_JOBS_DIR

    parser = argparse.ArgumentParser(prog="python -m fruits_dag.artifacts", description=main.__doc__)
    parser.add_argument("--arch", choices=ARCHITECTURES, default="x86_64")
    parser.add_argument("--output", type=Path, required=True, help="folder of the wheelhouse file")
    parser.add_argument("--jobs-dir", type=Path, default=DEFAULT_JOBS_DIR)
    args = parser.parse_args(argv)
    artifact = wheelhouse(node_requirements((args.jobs_dir / REQUIREMENTS).read_text()), args.arch)
    target = args.output / artifact.name
    if not target.is_file():
        artifact.build(target)
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
