"""Helpers of the ``fruits_pipeline`` DAG: settings, params, run plan, staging, sensors and the local Spark step."""
