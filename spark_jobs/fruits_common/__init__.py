"""Code shared by the pipeline's Spark jobs (clean, embed, pca, report).

spark-submit ships this package to the executors as ``fruits_common.zip`` (``--py-files``); the jobs
import it on the driver and inside their UDFs.
"""

import sys
import zipimport

if sys.version_info < (3, 12):
    # Spark's Python worker calls importlib.invalidate_caches() at the start of every task (pyspark 3.5, before
    # SPARK-54744), and on Python 3.10/3.11 that makes each zipimporter re-read its whole archive's directory:
    # pyspark.zip's ~800 entries cost ~70 ms of CPU per task (CPython gh-103200, fixed in 3.12 by reading lazily).
    # The archives on a worker's path (pyspark, py4j, fruits_common) never change while it lives: skip the reread.
    zipimport.zipimporter.invalidate_caches = lambda self: None  # type: ignore[method-assign]
