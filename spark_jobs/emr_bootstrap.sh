#!/bin/bash
# EMR bootstrap action of fruits_pipeline: Python 3.11 and the jobs' pinned packages on every node.
#
#   emr_bootstrap.sh s3://<bucket>/code/<digest>/requirements.txt
#
# EMR 7.x runs Amazon Linux 2023, whose Spark uses Python 3.9; the cluster's spark-env configuration
# (PYSPARK_PYTHON=/usr/bin/python3.11, set by the DAG) makes the jobs run on the 3.11 prepared here, the Python
# requirements.txt is tested with. Runs as the hadoop user, before Spark starts, on the primary and core nodes.
# Lines marked `driver-only` (TensorFlow and the ONNX exporter, ~600 MB) are installed on the primary node alone:
# the driver runs there (client mode) and exports the model to ONNX; executors only need ONNX Runtime.
set -euxo pipefail

requirements_uri="${1:?usage: emr_bootstrap.sh s3://.../requirements.txt}"

sudo dnf install -y python3.11 python3.11-pip
aws s3 cp "$requirements_uri" /tmp/fruits-requirements.txt
if grep -q '"isMaster": *true' /mnt/var/lib/info/instance.json; then
  role=primary
  check="import numpy, pandas, pyarrow, PIL, onnxruntime, tensorflow, tf2onnx"
else
  role=core
  grep -v 'driver-only' /tmp/fruits-requirements.txt > /tmp/fruits-requirements.core.txt
  mv /tmp/fruits-requirements.core.txt /tmp/fruits-requirements.txt
  check="import numpy, pandas, pyarrow, PIL, onnxruntime"
fi
# --no-cache-dir: the root volume is small and the wheels (TensorFlow) are large.
sudo python3.11 -m pip install --no-cache-dir --quiet -r /tmp/fruits-requirements.txt
python3.11 -c "$check; print('fruits bootstrap ok on the $role node')"
