"""A downstream DAG as a product team would write it: scheduled on the pipeline's PCA asset, by name.

Used by the DAG tests (it sits in their DAG folder beside fruits_pipeline): a pipeline run that completes its pca
job must queue a run of this DAG, carrying the asset event's extras (run date, rows added, PCA version).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Asset, task

with DAG(
    dag_id="fruits_pca_consumer",
    schedule=[Asset.ref(name="fruits_pca")],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    tags=["fruits", "test"],
):

    @task
    def train(**context) -> dict:
        """Read what the triggering event says (a real consumer would train a classifier here)."""
        events = context["triggering_asset_events"]
        return {str(asset): [event.extra for event in evs] for asset, evs in events.items()}

    train()
