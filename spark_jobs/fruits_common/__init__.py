"""Code shared by the pipeline's Spark jobs (clean, embed, pca, report).

spark-submit ships this package to the executors as ``fruits_common.zip`` (``--py-files``); the jobs
import it on the driver and inside their UDFs.
"""
