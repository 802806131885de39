"""report: its numbers agree with the Parquet outputs, its plots are real PNGs of the expected size."""

from __future__ import annotations

import json

from jobs.conftest import RUN_DATE
from PIL import Image
from pyspark.sql import functions as F

import report


def test_report_matches_the_datasets(full_run, spark, tmp_path):
    out = tmp_path / "reports" / RUN_DATE.isoformat()
    result = report.run(
        spark, full_run.paths["clean"], full_run.paths["rejected"], full_run.paths["pca"], str(out), RUN_DATE
    )
    data = json.loads((out / "report.json").read_text())
    clean_df = spark.read.parquet(full_run.paths["clean"]).filter(F.col("ingest_date") == RUN_DATE)
    pca_df = spark.read.parquet(full_run.paths["pca"])
    summary = json.loads((full_run.root / "pca" / "_summary.json").read_text())

    assert data["images_read"] == data["kept"] + data["rejected"] == 4800
    assert data["kept"] == clean_df.count() and data["rejected"] == 0 and data["duplicates"] == 0
    assert data["rows_per_label"] == {r["label"]: r["count"] for r in pca_df.groupBy("label").count().collect()}
    assert data["final_rows"] == pca_df.count()
    assert data["k"] == summary["k"] == len(data["explained_variance"])
    assert data["cumulative_explained_variance"] == summary["cumulative_explained_variance"]
    assert result == {"images_read": 4800, "kept": 4800, "rejected": 0, "k": summary["k"]}
    for name in report.PLOTS:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size == report.FIGURE_SIZE_PX
            assert len(image.getcolors(1 << 20) or []) > 10  # something was drawn
    assert (out / "_SUCCESS").exists()


def test_report_counts_rejections_by_reason(spark, tmp_path, full_run):
    rejected = tmp_path / "rejected"
    rows = [
        ("a", "file:/x/a.jpg", None, 0, "empty_file", "no bytes"),
        ("b", "file:/x/b.jpg", None, 10, "duplicate", "same content as c"),
        ("b", "file:/x/d.jpg", None, 10, "duplicate", "same content as c"),
    ]
    (
        spark.createDataFrame(
            rows, "image_id string, path string, label string, size_bytes long, reason string, detail string"
        ).write.parquet(str(rejected / f"ingest_date={RUN_DATE}"))
    )
    out = tmp_path / "report"
    report.run(spark, full_run.paths["clean"], str(rejected), full_run.paths["pca"], str(out), RUN_DATE)
    data = json.loads((out / "report.json").read_text())
    assert data["rejected_by_reason"] == {"duplicate": 2, "empty_file": 1}
    assert data["duplicates"] == 2 and data["images_read"] == 4803
