"""A release: what the EMR nodes need besides the code, built once on a build machine and staged to the bucket.

``stage_code`` can build the ONNX export and the nodes' wheelhouses itself, but that needs TensorFlow, tf2onnx
and the package index on the Airflow worker. Managed Airflow (Amazon MWAA) and locked-down workers have neither.
``make release`` (this module) builds them where those are (a laptop, CI), stages them under
``s3://<bucket>/code/artifacts/`` with the names ``stage_code`` would give them, and prints the two settings that
make the DAG use them as they are::

    {"fruits_weights": "s3://<bucket>/code/artifacts/<weights>.<hash>.opset17.onnx",
     "fruits_wheelhouse": "s3://<bucket>/code/artifacts/wheelhouse-<hash>-cp311-x86_64.tar,..."}

With these, a run stages only the code bundle (job scripts and the shared package, plain files) and never imports
TensorFlow nor calls pip. A release is named by its inputs, like the artifacts: building it again with the same
weights and requirements stages nothing new.

    python -m fruits_dag.release --bucket my-fruits --weights mobilenet_v2_no_top.h5 [--arch x86_64 --arch aarch64]

AWS access goes through the Airflow connection ``aws_default`` when one is defined (``AIRFLOW_CONN_AWS_DEFAULT``),
else through boto3's usual credentials chain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fruits_dag import artifacts
from fruits_dag.bundle import REQUIREMENTS, BundleFile, CodeStore, stage_file
from fruits_dag.plan import Layout
from fruits_dag.settings import AWS_CONN_ID, DEFAULT_JOBS_DIR

DEFAULT_CACHE = Path("~/.cache/fruits-pipeline").expanduser()


def build_release(
    bucket: str,
    weights: str,
    archs: list[str],
    store: CodeStore,
    jobs_dir: Path = DEFAULT_JOBS_DIR,
    cache: Path = DEFAULT_CACHE,
    wheelhouses: list[Path] | None = None,
    timeout: float | None = None,
) -> dict[str, str]:
    """Build (in ``cache``) and stage the ONNX export of ``weights`` and a wheelhouse per architecture; return the
    settings that point the DAG at them. ``wheelhouses``: prebuilt ones (``make wheelhouse``) to stage instead of
    building, one per architecture."""
    prefix = Layout(f"s3://{bucket}").artifacts()
    if weights.endswith(".onnx"):
        path = Path(weights)
        model = f"{prefix}/{path.name}"
        stage_file(BundleFile(path.name, path=path), model, store)
    else:
        model = artifacts.ensure_staged(artifacts.onnx_model(weights, jobs_dir, timeout=timeout), prefix, cache, store)
    staged = {}
    given = {p.name.rsplit("-", 1)[-1].removesuffix(".tar"): p for p in wheelhouses or []}
    requirements = artifacts.node_requirements((jobs_dir / REQUIREMENTS).read_text())
    for arch in archs:
        if arch in given:
            staged[arch] = f"{prefix}/{given[arch].name}"
            stage_file(BundleFile(given[arch].name, path=given[arch]), staged[arch], store)
        else:
            built = artifacts.wheelhouse(requirements, arch, timeout=timeout)
            staged[arch] = artifacts.ensure_staged(built, prefix, cache, store)
    return {"fruits_weights": model, "fruits_wheelhouse": ",".join(staged[a] for a in archs)}


def main(argv: list[str] | None = None) -> int:
    """``python -m fruits_dag.release``: build and stage a release, print its settings (JSON)."""
    from fruits_dag.backends.emr.code_store import S3CodeStore

    parser = argparse.ArgumentParser(prog="python -m fruits_dag.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bucket", required=True, help="the pipeline's bucket (setting fruits_bucket)")
    parser.add_argument("--weights", required=True, help="MobileNetV2 no-top weights: a .h5 file, imagenet, or .onnx")
    parser.add_argument(
        "--arch",
        action="append",
        choices=artifacts.ARCHITECTURES,
        help="node architectures the clusters use (default: x86_64; add aarch64 for Graviton types)",
    )
    parser.add_argument("--wheelhouse", action="append", type=Path, help="a prebuilt wheelhouse to stage as is")
    parser.add_argument("--jobs-dir", type=Path, default=DEFAULT_JOBS_DIR)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="build folder (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per build step (default %(default)s)")
    parser.add_argument("--output", type=Path, help="also write the settings (JSON) to this file")
    args = parser.parse_args(argv)
    try:
        settings = build_release(
            args.bucket,
            args.weights,
            args.arch or ["x86_64"],
            S3CodeStore(AWS_CONN_ID),
            jobs_dir=args.jobs_dir,
            cache=args.cache,
            wheelhouses=args.wheelhouse,
            timeout=args.timeout,
        )
    except (artifacts.ArtifactError, FileNotFoundError) as error:
        print(f"release failed: {error}", file=sys.stderr)
        return 1
    text = json.dumps(settings, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print("# Merge into the Variable fruits_settings of the Airflow that runs the DAG:", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
