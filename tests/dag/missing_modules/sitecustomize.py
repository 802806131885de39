"""Makes this interpreter a worker that lacks some packages: put this folder on ``PYTHONPATH`` and name them in
``FRUITS_TEST_MISSING_MODULES`` (comma-separated top-level modules). Python imports ``sitecustomize`` at start-up,
so every process of the run (Airflow's, the children it starts) sees them as not installed.

The tests use it to run the DAG as Amazon MWAA or a locked-down worker would: without TensorFlow, tf2onnx, Spark
or the nodes' packages, which stay installed in the test venv for the other tests.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

MISSING = frozenset(filter(None, os.environ.get("FRUITS_TEST_MISSING_MODULES", "").split(",")))


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 (the finder protocol)
        if fullname.split(".", 1)[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not installed on this worker)", name=fullname)
        return None


if MISSING:
    sys.meta_path.insert(0, _NotInstalled())
