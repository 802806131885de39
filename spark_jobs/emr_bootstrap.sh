#!/bin/bash
# EMR bootstrap action of fruits_pipeline: Python 3.11 and the jobs' pinned packages on every node, offline.
#
#   emr_bootstrap.sh x86_64=s3://<bucket>/code/artifacts/wheelhouse-<key>-cp311-x86_64.tar [aarch64=s3://...]
#
# EMR 7.x runs Amazon Linux 2023, whose Spark uses Python 3.9; the cluster's spark-env configuration
# (PYSPARK_PYTHON=/usr/bin/python3.11, set by the DAG) makes the jobs run on the 3.11 installed here, the Python
# requirements.txt is tested with. Runs as the hadoop user, before Spark starts, on the primary and core nodes.
# Nothing comes from the internet: python3.11 from the Amazon Linux repository (served from S3 in the region,
# reachable through the VPC's S3 gateway endpoint), the packages from the wheelhouse that stage_code built for
# this architecture and staged in the bucket (pip --no-index). No node gets TensorFlow: the DAG stages the model
# already exported to ONNX.
set -euo pipefail

# install_wheelhouse TAR PYTHON: install the wheelhouse's requirements.txt into PYTHON, from its wheels only.
install_wheelhouse() {
  local tar="$1" python="$2" folder
  folder="$(mktemp -d)"
  tar -xf "$tar" -C "$folder"
  ${SUDO-sudo} "$python" -m pip install --no-index --find-links "$folder" --no-cache-dir \
    --disable-pip-version-check --quiet -r "$folder/requirements.txt"
  rm -rf "$folder"
}

# wheelhouse_for ARCH ARCH=URI...: the URI given for ARCH.
wheelhouse_for() {
  local arch="$1" pair
  shift
  for pair in "$@"; do
    if [[ "${pair%%=*}" == "$arch" ]]; then
      echo "${pair#*=}"
      return 0
    fi
  done
  echo "no wheelhouse for $arch among: $*" >&2
  return 1
}

main() {
  [[ $# -gt 0 ]] || { echo "usage: emr_bootstrap.sh ARCH=s3://.../wheelhouse-...-ARCH.tar ..." >&2; exit 2; }
  set -x
  local started arch uri
  started=$(date +%s)
  arch="$(uname -m)"
  uri="$(wheelhouse_for "$arch" "$@")"
  sudo dnf install -y --quiet python3.11 python3.11-pip
  aws s3 cp --only-show-errors "$uri" /tmp/fruits-wheelhouse.tar
  install_wheelhouse /tmp/fruits-wheelhouse.tar /usr/bin/python3.11
  rm -f /tmp/fruits-wheelhouse.tar
  /usr/bin/python3.11 -c "import numpy, pandas, pyarrow, PIL, pillow_heif, onnxruntime, matplotlib"
  echo "fruits bootstrap ok on $arch in $(($(date +%s) - started)) s"
}

# Sourced (the tests do), it only defines the functions above.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
