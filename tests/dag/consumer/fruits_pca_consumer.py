"""A downstream DAG as a product team would write it: scheduled on the pipeline's PCA asset.

Used by the DAG tests: a pipeline run that completes its pca job must queue a run of this DAG, which gets the asset
event's extras (run date, rows added, PCA version). The asset is named in full (name and URI: the deployment's
storage root, here from FRUITS_PCA_ASSET_URI): with a by-name reference (``Asset.ref(name=...)``) Airflow 3.3 starts
the run but gives it no triggering events.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, Asset, task

with DAG(
    dag_id="fruits_pca_consumer",
    schedule=[Asset(name="fruits_pca", uri=os.environ.get("FRUITS_PCA_ASSET_URI", "s3://fruits-bucket/stages/pca"))],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    # Every PCA event counts, including those emitted before this DAG first resolved the asset's name.
    catchup=True,
    tags=["fruits", "test"],
):

    @task
    def train(**context) -> dict:
        """Read what the triggering event says (a real consumer would train a classifier here)."""
        events = context["triggering_asset_events"]
        return {str(asset): [event.extra for event in evs] for asset, evs in events.items()}

    train()
