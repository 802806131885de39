"""MobileNetV2 feature extraction: one model per Python worker process, batched inference.

Two engines compute the same features (max abs difference ~1e-5):
- ``onnx`` (default): ONNX Runtime on the model exported once from Keras; about 2x faster on CPUs and
  executors need no TensorFlow;
- ``keras``: the reference, Keras/TensorFlow through a traced ``tf.function``.
TensorFlow and ONNX Runtime are imported lazily so that the driver and the other jobs never pay for them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fruits_common.errors import JobError

FEATURE_SIZE = 1280
INPUT_SHAPE = (224, 224, 3)
IMAGENET = "imagenet"
WEIGHTS_FILE_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + WEIGHTS_FILE_NAME
ENGINES = ("onnx", "keras")
ONNX_OPSET = 17
# Where exported ONNX models are kept when the weights' own folder is not writable.
MODEL_CACHE = Path(os.environ.get("FRUITS_MODEL_CACHE", Path.home() / ".cache" / "fruits-pipeline"))

FeatureFunction = Callable[[np.ndarray], np.ndarray]
_models: dict[tuple[str, str], FeatureFunction] = {}
_lock = threading.Lock()


def download_imagenet_weights() -> str:
    """Keras' own ImageNet weights file, from its cache (``~/.keras/models/``) or downloaded once."""
    from keras.utils import get_file

    try:
        return get_file(WEIGHTS_FILE_NAME, WEIGHTS_URL, cache_subdir="models")
    except Exception as exc:
        raise JobError(
            "could not download the MobileNetV2 ImageNet weights "
            f"({type(exc).__name__}: {exc}). Without internet access, pass the weights file: "
            f"--weights /path/to/{WEIGHTS_FILE_NAME} (or an s3:// URI), or put that file in "
            "~/.keras/models/ (Makefile: WEIGHTS=...; DAG: setting fruits_weights)."
        ) from exc


def _import_tensorflow(threads: int):
    # oneDNN kernels are 1.5-1.9x faster on x86 CPUs; TF only reads these before its first import.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        # One Spark task per core: more threads per task would only fight over the same cores.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TF already initialised in this process (e.g. a test that ran Keras first)
    return tf


def keras_feature_function(weights_file: str, threads: int = 0):
    """A traced ``tf.function``: ``(n, 224, 224, 3)`` float32 pixels in 0-255 -> ``{"features": (n, 1280)}``."""
    if not os.path.isfile(weights_file):
        raise JobError(f"MobileNetV2 weights file not found: {weights_file}")
    tf = _import_tensorflow(threads)
    import keras
    from keras.applications.mobilenet_v2 import preprocess_input

    model = keras.applications.MobileNetV2(
        input_shape=INPUT_SHAPE, include_top=False, pooling="avg", weights=weights_file
    )

    # A traced graph runs ~1.5x faster than eager calls and needs far less memory than predict().
    @tf.function(input_signature=[tf.TensorSpec([None, *INPUT_SHAPE], tf.float32, name="pixels")])
    def features(pixels):
        return {"features": model(preprocess_input(pixels), training=False)}

    return features


def export_onnx(weights_file: str, onnx_file: Path) -> Path:
    """Export the Keras model (preprocessing included) to ONNX, atomically; returns ``onnx_file``."""
    import tf2onnx

    function = keras_feature_function(weights_file)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=ONNX_OPSET)
    onnx_file.parent.mkdir(parents=True, exist_ok=True)
    partial = onnx_file.with_name(f".{onnx_file.name}.{os.getpid()}.partial")
    partial.write_bytes(proto.SerializeToString())
    partial.replace(onnx_file)  # readers never see half a file
    return onnx_file


def onnx_name(weights_file: str) -> str:
    """The exported model's file name, keyed by the weights' content so changed weights re-export."""
    digest = hashlib.sha256(Path(weights_file).read_bytes()).hexdigest()[:16]
    return f"{Path(weights_file).stem}.{digest}.opset{ONNX_OPSET}.onnx"


def _onnx_function(onnx_file: str, threads: int) -> FeatureFunction:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: batch.astype(np.float32, copy=False)})[0]

    return run


def _keras_function(weights_file: str, threads: int) -> FeatureFunction:
    features = keras_feature_function(weights_file, threads)

    def run(batch: np.ndarray) -> np.ndarray:
        return features(batch.astype(np.float32, copy=False))["features"].numpy()

    return run


def get_model(model_file: str, engine: str = "onnx", threads: int = 1) -> FeatureFunction:
    """The cached feature function: ``(n, 224, 224, 3)`` uint8 -> ``(n, 1280)`` float32.

    ``model_file`` is the ``.onnx`` export for the ``onnx`` engine, the Keras ``.h5`` weights for ``keras``.
    Built once per process and reused by every batch and task that this Python worker runs.
    """
    if engine not in ENGINES:
        raise JobError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    with _lock:
        key = (model_file, engine)
        if key not in _models:
            build = _onnx_function if engine == "onnx" else _keras_function
            _models[key] = build(model_file, threads)
        return _models[key]


def main(argv: list[str] | None = None) -> int:
    """``python -m fruits_common.embedding name WEIGHTS`` prints the ONNX export's file name;
    ``... export WEIGHTS OUT.onnx`` writes the export. ``WEIGHTS``: a ``.h5`` file or ``imagenet``.

    Airflow's ``stage_code`` runs these as a child process, so TensorFlow (~2 GB, many threads) never loads into
    a task process, and the name and the export come from the code the jobs use.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fruits_common.embedding", description="The ONNX export.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("name", help="print the export's file name").add_argument("weights")
    export = commands.add_parser("export", help="export the weights to ONNX")
    export.add_argument("weights")
    export.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    weights = download_imagenet_weights() if args.weights == IMAGENET else args.weights
    if not os.path.isfile(weights):
        parser.error(f"weights file not found: {weights}")
    if args.command == "name":
        print(onnx_name(weights))
    else:
        export_onnx(weights, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
