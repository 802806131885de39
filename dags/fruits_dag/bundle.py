"""The code bundle staged for the Spark jobs, named by its content hash, and its staging (only missing files).

A bundle is the job scripts, the shared package zipped as ``fruits_common.zip`` (for ``--py-files``), the nodes'
``requirements.txt``, the EMR bootstrap script and, when they are a local file, the MobileNetV2 weights. The same
files always give the same digest (the zip is built with fixed timestamps and sorted entries), so a re-run stages
nothing new and produces the same step arguments, and a changed file gets a new ``code/<digest>/`` prefix instead
of overwriting what a running cluster reads.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

JOB_NAMES = ("clean", "embed", "pca", "report")  # in run order
JOB_SCRIPTS = tuple(f"{name}.py" for name in JOB_NAMES)
SHARED_PACKAGE = "fruits_common"
SHARED_ZIP = f"{SHARED_PACKAGE}.zip"
REQUIREMENTS = "requirements.txt"
BOOTSTRAP = "emr_bootstrap.sh"

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BundleFile:
    """One file of the bundle: its name under ``code/<digest>/`` and its content (in memory or on disk)."""

    name: str
    data: bytes | None = None
    path: Path | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]

    def sha256(self) -> str:
        digest = hashlib.sha256()
        if self.data is not None:
            digest.update(self.data)
        else:
            with open(self.path, "rb") as stream:  # type: ignore[arg-type]
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
        return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """The files to stage and their combined digest."""

    files: tuple[BundleFile, ...]
    digest: str
    weights_name: str | None  # the weights file's name in the bundle, when the weights are staged

    def names(self) -> list[str]:
        return [f.name for f in self.files]


def zip_package(package_dir: Path) -> bytes:
    """Zip ``package_dir`` as ``<its name>/...``, byte-for-byte reproducible (no caches, fixed metadata)."""
    entries = sorted(
        p
        for p in package_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in entries:
            info = zipfile.ZipInfo(f"{package_dir.name}/{path.relative_to(package_dir).as_posix()}", _ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # Unix, whatever machine builds it
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def build_bundle(jobs_dir: Path, weights: str, stage_weights: bool = True) -> Bundle:
    """Collect the bundle from ``jobs_dir``; ``weights`` is staged too when it is a local file, unless
    ``stage_weights`` is false (the EMR backend stages the ONNX export instead of a Keras file)."""
    missing = [
        name for name in (*JOB_SCRIPTS, REQUIREMENTS, BOOTSTRAP, SHARED_PACKAGE) if not (jobs_dir / name).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"the Spark jobs folder {jobs_dir} lacks {', '.join(missing)} (setting fruits_jobs_dir names it)"
        )
    files = [BundleFile(name, data=(jobs_dir / name).read_bytes()) for name in (*JOB_SCRIPTS, REQUIREMENTS, BOOTSTRAP)]
    files.append(BundleFile(SHARED_ZIP, data=zip_package(jobs_dir / SHARED_PACKAGE)))

    weights_name = None
    if stage_weights and weights != "imagenet" and "://" not in weights:
        weights_path = Path(weights).expanduser()
        if not weights_path.is_file():
            raise FileNotFoundError(f"weights file not found: {weights_path} (setting fruits_weights)")
        weights_name = weights_path.name
        files.append(BundleFile(weights_name, path=weights_path))

    files.sort(key=lambda f: f.name)
    combined = hashlib.sha256()
    for f in files:
        combined.update(f"{f.name}\0{f.sha256()}\n".encode())
    return Bundle(files=tuple(files), digest=combined.hexdigest()[:16], weights_name=weights_name)


class CodeStore(Protocol):
    """Where a backend stages a bundle: answers whether a staged file is complete, writes one, and keeps a staged
    file from expiring while runs still use it."""

    def size_of(self, uri: str) -> int | None: ...

    def write(self, uri: str, file: BundleFile) -> None: ...

    def refresh(self, uri: str) -> None: ...


def stage_file(file: BundleFile, uri: str, store: CodeStore) -> bool:
    """Put ``file`` at ``uri`` unless a file of its size is there (then only keep it fresh); True when written.

    Used under content-named prefixes only, where a file present with the right size is this very file (S3 and the
    local store both write a file whole or not at all).
    """
    if store.size_of(uri) == file.size:
        store.refresh(uri)
        return False
    store.write(uri, file)
    return True


def stage(bundle: Bundle, code_uri: str, store: CodeStore) -> list[str]:
    """Put each bundle file at ``<code_uri>/<name>`` unless it is already there; returns the names written.

    The prefix is the bundle's content digest, so a file present with the right size is this very file (S3 and
    the local store both write a file whole or not at all).
    """
    written = [file.name for file in bundle.files if stage_file(file, f"{code_uri}/{file.name}", store)]
    if written:
        log.info("Staged %s under %s", ", ".join(written), code_uri)
    else:
        log.info("Code already staged under %s: nothing uploaded", code_uri)
    return written
