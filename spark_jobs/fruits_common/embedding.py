"""MobileNetV2 feature extraction: one model per Python worker process, batched inference.

Keras is imported lazily so that the driver and the clean/pca jobs never pay for TensorFlow.
"""
from __future__ import annotations

import os
import threading
from typing import Callable

import numpy as np

from fruits_common.errors import JobError

FEATURE_SIZE = 1280
IMAGENET = "imagenet"
WEIGHTS_FILE_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + WEIGHTS_FILE_NAME

_models: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
_lock = threading.Lock()


def _configure_tensorflow(threads: int) -> None:
    # oneDNN kernels are 1.5-1.9x faster on x86 CPUs; TF only reads this before its first import.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        # One Spark task per core: more threads per task would only fight over the same cores.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TF already initialised in this process (e.g. a test that ran Keras first)


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
            "~/.keras/models/ (Makefile: WEIGHTS=...; DAG: Variable fruits_weights)."
        ) from exc


def build_keras_model(weights_file: str):
    """MobileNetV2 (ImageNet weights, no top, global average pooling) from a local Keras ``.h5`` file."""
    import keras

    if not os.path.isfile(weights_file):
        raise JobError(f"MobileNetV2 weights file not found: {weights_file}")
    return keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=weights_file)


def get_model(weights_file: str, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """The cached feature function for a weights file: ``(n, 224, 224, 3) uint8 -> (n, 1280) float32``.

    Built once per process and reused by every batch and task that this Python worker runs.
    """
    with _lock:
        if weights_file not in _models:
            _configure_tensorflow(threads)
            import tensorflow as tf
            from keras.applications.mobilenet_v2 import preprocess_input

            model = build_keras_model(weights_file)

            # A traced graph runs ~1.5x faster than eager calls and needs far less memory than predict().
            @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
            def features(batch):
                return model(preprocess_input(batch), training=False)

            def run(batch: np.ndarray) -> np.ndarray:
                return features(tf.constant(batch, dtype=tf.float32)).numpy().astype(np.float32)

            _models[weights_file] = run
        return _models[weights_file]
