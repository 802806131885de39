"""clean on real images with real Spark: counts, schema, labels, rejections, duplicates, re-runs."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest
from jobs.conftest import RUN_DATE
from pyspark.sql import functions as F

import bad_images
import clean
from fruits_common import schemas
from fruits_common.errors import JobError
from sample_images import copy_images


def _rows(spark, path, columns=("image_id", "path", "label")):
    return sorted(tuple(r) for r in spark.read.parquet(str(path)).select(*columns).collect())


def test_all_valid_images_in_all_rows_out(full_run, sample_dir, spark):
    images_in = sorted(sample_dir.rglob("*.jpg"))
    clean_df = spark.read.parquet(full_run.paths["clean"])
    assert full_run.clean["kept"] == clean_df.count() == len(images_in) == 4800
    assert full_run.clean["rejected"] == 0
    assert clean_df.schema.fieldNames() == schemas.CLEAN.fieldNames()
    assert [f.dataType for f in clean_df.schema.fields] == [f.dataType for f in schemas.CLEAN.fields]
    by_label = {r["label"]: r["count"] for r in clean_df.groupBy("label").count().collect()}
    expected = {}
    for image in images_in:
        expected[image.parent.name] = expected.get(image.parent.name, 0) + 1
    assert by_label == expected
    sizes = clean_df.agg(F.min("width"), F.max("width"), F.min("height"), F.max("height")).first()
    assert tuple(sizes) == (100, 100, 100, 100)
    # The stored bytes are the original files, byte for byte.
    one = clean_df.filter(F.col("path").endswith("/Training/Kiwi/0_100.jpg")).first()
    assert bytes(one["content"]) == (sample_dir / "Training" / "Kiwi" / "0_100.jpg").read_bytes()
    assert one["ingest_date"] == RUN_DATE


@pytest.fixture
def messy_input(tmp_path, sample_dir):
    """A copy of part of the sample with every kind of bad file, odd valid files and duplicates."""
    root = tmp_path / "input"
    good = copy_images(sample_dir, root, per_label=5, splits=("Training",))
    real_jpeg = good[0]
    bad = bad_images.write_bad_files(root / "uploads", real_jpeg)
    odd = bad_images.write_odd_but_valid_files(root / "Training" / "Odd", real_jpeg)
    # Two copies of a good image under other names: one duplicate each, the original stays.
    shutil.copy(good[1], root / "uploads" / "copy-a.jpg")
    shutil.copy(good[1], root / "Training" / "Odd" / "copy-b.jpg")
    # Names Spark's file sources hide: a camera's Adobe RGB photo (_DSC...), a sync folder's leftovers, a hidden
    # folder. Each one is an upload: kept or rejected, never skipped.
    shutil.copy(
        sample_dir / "Test" / "Kiwi" / sorted(p.name for p in (sample_dir / "Test" / "Kiwi").iterdir())[0],
        root / "uploads" / "_DSC0001.JPG",
    )
    (root / "uploads" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "uploads" / "_partial.jpg").write_bytes(good[2].read_bytes()[:100])
    (root / "uploads" / ".thumbnails").mkdir()
    (root / "uploads" / ".thumbnails" / "t.jpg").write_bytes(good[3].read_bytes())
    # A link to nothing: not a file to read, recorded as unreadable.
    (root / "uploads" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    return root, good, bad, odd


def test_bad_files_are_rejected_with_their_reason(spark, tmp_path, messy_input):
    root, good, bad, odd = messy_input
    out, rejected = tmp_path / "clean", tmp_path / "rejected"
    summary = clean.run(spark, str(root), str(out), str(rejected), RUN_DATE)

    prefix = f"file:{root}/"
    rejects = {r["path"].removeprefix(prefix): r for r in spark.read.parquet(str(rejected)).collect()}
    for name, reason in bad.items():
        assert rejects[f"uploads/{name}"]["reason"] == reason, rejects[f"uploads/{name}"]
    duplicates = {n for n, r in rejects.items() if r["reason"] == "duplicate"}
    # UPPER.JPG is a byte copy of good[0] too: three copies of good[0] or good[1], and .thumbnails/t.jpg (good[3]),
    # are duplicates.
    assert len(duplicates) == 4
    assert all(rejects[n]["detail"].startswith("same content as ") for n in duplicates)

    kept = {r["path"].removeprefix(prefix) for r in spark.read.parquet(str(out)).collect()}
    files = [p for p in root.rglob("*") if p.is_file() or p.is_symlink()]
    # Every file, whatever its name, in exactly one place: nothing silently skipped.
    assert kept | set(rejects) == {str(p.relative_to(root)) for p in files}
    assert "uploads/_DSC0001.JPG" in kept  # a photo
    assert rejects["uploads/.DS_Store"]["reason"] == "not_an_image"
    assert rejects["uploads/_partial.jpg"]["reason"] == "corrupt"
    assert rejects["uploads/gone.jpg"]["reason"] == "unreadable"
    assert rejects["uploads/.thumbnails/t.jpg"]["reason"] == "duplicate"
    assert len(kept) + len(rejects) == len(files)
    assert {str(p.relative_to(root)) for p in good} <= kept
    assert {f"Training/Odd/{n}" for n in odd if n != "UPPER.JPG"} <= kept
    assert summary["kept"] == len(kept) and summary["rejected"] == len(rejects)
    labels = {r["label"] for r in spark.read.parquet(str(out)).collect()}
    assert "Odd" in labels
    assert all(rejects[f"uploads/{n}"]["label"] is None for n in bad)  # uploads/ is one level down


def test_rerun_gives_identical_output_and_new_date_skips_known_images(spark, tmp_path, sample_dir):
    root = tmp_path / "input"
    copy_images(sample_dir, root / "day1", per_label=3, splits=("Test",))
    out, rejected = tmp_path / "clean", tmp_path / "rejected"
    clean.run(spark, str(root / "day1"), str(out), str(rejected), RUN_DATE)
    first = _rows(spark, out, ("image_id", "path", "label", "ingest_date", "content"))
    clean.run(spark, str(root / "day1"), str(out), str(rejected), RUN_DATE)
    assert _rows(spark, out, ("image_id", "path", "label", "ingest_date", "content")) == first

    # Day 2: three images seen on day 1 (re-uploaded under new names) and eight new ones.
    day2 = root / "day2"
    day2.mkdir()
    for i, known in enumerate(sorted((root / "day1").rglob("*.jpg"))[:3]):
        shutil.copy(known, day2 / f"again-{i}.jpg")
    new = copy_images(sample_dir, day2, per_label=1, splits=("Test",), skip=10)
    next_day = RUN_DATE + dt.timedelta(days=1)
    summary = clean.run(spark, str(day2), str(out), str(rejected), next_day)
    assert summary["kept"] == len(new)
    assert summary["rejected_by_reason"] == {"duplicate": 3}
    day2_rejects = spark.read.parquet(str(rejected)).filter(F.col("ingest_date") == next_day).collect()
    assert all(r["detail"].startswith(f"already ingested on {RUN_DATE}") for r in day2_rejects)
    day1_rows = spark.read.parquet(str(out)).filter(F.col("ingest_date") == RUN_DATE)
    assert (
        sorted(tuple(r) for r in day1_rows.select("image_id", "path", "label", "ingest_date", "content").collect())
        == first
    )  # the other partition is untouched
    ids = spark.read.parquet(str(out)).select("image_id")
    assert ids.count() == ids.distinct().count() == len(first) + len(new)


def test_missing_input_is_a_clear_error(spark, tmp_path):
    with pytest.raises(JobError, match="input folder does not exist"):
        clean.run(spark, str(tmp_path / "nowhere"), str(tmp_path / "c"), str(tmp_path / "r"), RUN_DATE)


def test_command_line_rejects_bad_run_date():
    with pytest.raises(SystemExit):
        clean.build_parser().parse_args(
            ["--input", "a", "--output", "b", "--rejected", "c", "--run-date", "24/11/2026"]
        )


def test_a_lookback_window_processes_missed_days_and_late_files_exactly_once(spark, tmp_path, sample_dir):
    """Nights read a window of upload days; what an earlier night accounted for is skipped, with no new row."""
    uploads, out, rejected = tmp_path / "uploads", tmp_path / "clean", tmp_path / "rejected"
    days = [RUN_DATE + dt.timedelta(days=n) for n in range(4)]
    for n, day in enumerate(days[:3]):
        copy_images(sample_dir, uploads / day.isoformat(), per_label=1, splits=("Test",), skip=10 * n)

    def night(day: dt.date) -> dict:
        window = [day - dt.timedelta(days=n) for n in (2, 1, 0)]
        inputs = [str(uploads / d.isoformat()) for d in window]
        return clean.run(spark, inputs, str(out), str(rejected), day, skip_accounted_since=window[0])

    # No run on the first two days: the third night processes all three days' uploads.
    third = night(days[2])
    assert (third["kept"], third["rejected"], third["skipped_accounted"]) == (24, 0, 0)
    assert third["upload_days"] == [d.isoformat() for d in days[:3]]
    # A late upload into an already processed day, and the next day's uploads: only they are processed.
    late = uploads / days[1].isoformat() / "late" / "IMG_late.jpg"
    late.parent.mkdir()
    shutil.copy(sorted((sample_dir / "Test" / "Kiwi").glob("*.jpg"))[90], late)
    copy_images(sample_dir, uploads / days[3].isoformat(), per_label=1, splits=("Test",), skip=50)
    fourth = night(days[3])
    assert (fourth["kept"], fourth["rejected"]) == (9, 0)  # 8 new + the late one
    assert fourth["skipped_accounted"] == 16  # days 2 and 3 of the window, already kept on the third night
    assert fourth["upload_days"] == [days[1].isoformat(), days[3].isoformat()]
    late_row = spark.read.parquet(str(out)).filter(F.col("path").endswith("/late/IMG_late.jpg")).collect()
    assert [r["ingest_date"] for r in late_row] == [days[3]]
    # Re-running a night gives the same rows and adds nothing.
    before = _rows(spark, out, ("image_id", "path", "ingest_date"))
    again = night(days[3])
    assert (again["kept"], again["rejected"]) == (9, 0)
    assert _rows(spark, out, ("image_id", "path", "ingest_date")) == before
    assert spark.read.parquet(str(rejected)).count() == 0  # skipped files left no rejection row
